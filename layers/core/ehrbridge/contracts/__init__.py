"""Contracts between stages: the envelope, tenant config and vendor profiles."""

from ehrbridge.contracts.envelope import (
    CLAIM_CHECK_THRESHOLD_BYTES,
    ContractError,
    Envelope,
    S3Ref,
    new_envelope,
    patient_key_for,
    stable_id,
)
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.contracts.vendors import VENDOR_PROFILES, VendorProfile, profile_for

__all__ = [
    "CLAIM_CHECK_THRESHOLD_BYTES",
    "VENDOR_PROFILES",
    "ContractError",
    "Envelope",
    "S3Ref",
    "TenantConfig",
    "VendorProfile",
    "new_envelope",
    "patient_key_for",
    "profile_for",
    "stable_id",
]
