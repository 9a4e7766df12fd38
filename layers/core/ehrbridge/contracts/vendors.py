"""Vendor profiles: every vendor difference lives in this one table, not in `if vendor == ...` branches.

Figures come from ../shared/research/smart-fhir.md (vendor documentation, cited there).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Vendor = Literal["epic", "oracle_health", "athena", "generic"]
PagingStyle = Literal["next_link", "offset", "page_token"]


class VendorProfile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    vendor: Vendor
    # Lifetime the vendor documents for backend-services tokens; the server's expires_in wins.
    token_lifetime_s: int = Field(gt=0)
    # Backend (system) clients get no refresh token at any of the three vendors.
    issues_refresh_token_to_backend: bool = False
    token_endpoint_limit_per_min: int | None = None
    paging_style: PagingStyle = "next_link"
    max_page_size: int = Field(default=100, gt=0)
    # Resource types whose searches support _lastUpdated (None: all that the server declares).
    last_updated_unsupported: frozenset[str] = frozenset()
    # Search parameters a vendor requires on every search of a resource type.
    required_search_params: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    # Query parameters added to every FHIR call (athena's practice context, ...).
    extra_query_params: dict[str, str] = Field(default_factory=dict)
    extra_headers: tuple[str, ...] = ()
    # Status codes this vendor returns for transient conditions (Oracle: 500s can be transient).
    retryable_statuses: frozenset[int] = frozenset({429, 502, 503, 504})
    supports_bulk_export: bool = True


VENDOR_PROFILES: dict[Vendor, VendorProfile] = {
    "epic": VendorProfile(
        vendor="epic",
        token_lifetime_s=3600,
        token_endpoint_limit_per_min=None,
        paging_style="next_link",
        max_page_size=100,  # Patient.Search over 100 results: error 4127
        last_updated_unsupported=frozenset({"Observation", "Condition", "Encounter", "Patient",
                                            "DiagnosticReport", "MedicationRequest"}),
        required_search_params={"Observation": ("patient",), "Condition": ("patient",),
                                "DiagnosticReport": ("patient",), "MedicationRequest": ("patient",),
                                "Encounter": ("patient",)},
        extra_headers=("Epic-Client-ID",),
    ),
    "oracle_health": VendorProfile(
        vendor="oracle_health",
        token_lifetime_s=570,
        paging_style="next_link",
        max_page_size=200,
        retryable_statuses=frozenset({429, 500, 502, 503, 504}),
    ),
    "athena": VendorProfile(
        vendor="athena",
        token_lifetime_s=3600,
        token_endpoint_limit_per_min=50,
        paging_style="next_link",
        max_page_size=100,
        required_search_params={"Observation": ("patient",), "Condition": ("patient",),
                                "DiagnosticReport": ("patient",), "Encounter": ("patient",)},
        extra_query_params={"ah-practice": "{practice_context}"},
    ),
    "generic": VendorProfile(
        vendor="generic",
        token_lifetime_s=300,  # SMART Backend Services: expires_in SHOULD NOT exceed 300
        paging_style="next_link",
    ),
}


def profile_for(vendor: Vendor) -> VendorProfile:
    return VENDOR_PROFILES[vendor]
