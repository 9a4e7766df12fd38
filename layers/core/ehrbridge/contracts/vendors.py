"""Vendor profiles: every vendor difference lives in this one table, not in `if vendor == ...` branches.

Figures come from the vendors' public developer documentation (Epic on FHIR, Oracle Health Millennium, athenahealth
API guides), as collected in the project's research notes before this table was written.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Vendor = Literal["epic", "oracle_health", "athena", "generic"]
PagingStyle = Literal["next_link", "offset", "page_token"]
# How a token endpoint writes the granted scopes back: SMART v2 (`system/X.rs`), SMART v1
# (`system/X.read`) or Epic's own form (`X.read X.search`). Clients normalise all three.
ScopeStyle = Literal["smart_v2", "smart_v1", "epic"]
TokenAuthMethod = Literal["private_key_jwt", "client_secret_basic"]


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
    # ---- polling (ehrbridge.poll) ---------------------------------------------------------
    # Default self-throttle per tenant; a tenant's rate_limits.requests_per_second overrides it.
    requests_per_second: float = Field(default=10.0, gt=0)
    # Whether searches take _sort=_lastUpdated (needed for the keyset re-query on offset paging).
    sorts_by_last_updated: bool = True
    # Bulk $export level this vendor offers backend clients: system-wide or per Group only.
    bulk_export_level: Literal["system", "group"] = "system"
    # ---- SMART Backend Services (auth + the sandbox EHR reproduce these) ----------------
    # Scope version to request when discovery does not say (capabilities permission-v1/-v2).
    default_scope_version: Literal[1, 2] = 2
    granted_scope_style: ScopeStyle = "smart_v2"
    # Client-assertion algorithms the token endpoint verifies.
    assertion_algorithms: frozenset[str] = frozenset({"RS384", "ES384"})
    # Epic accepts EC keys only through a JWKS URL, not a statically uploaded JWKS.
    ec_keys_require_jwks_url: bool = False
    max_jti_length: int | None = None
    token_auth_methods: tuple[TokenAuthMethod, ...] = ("private_key_jwt",)
    # Token-endpoint statuses worth a bounded retry (Epic: flaky bare 400s).
    token_retryable_statuses: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})
    # User/patient-facing apps of this vendor get refresh tokens (backend clients never do).
    user_apps_get_refresh_tokens: bool = False
    # CapabilityStatement.software.name, how clients recognise the vendor from /metadata.
    software_name: str = "ehrbridge sandbox"


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
        # No published limits; the app guidelines ask for <=1% of the customer's ODB at peak.
        requests_per_second=5.0,
        sorts_by_last_updated=False,
        bulk_export_level="group",
        default_scope_version=1,
        granted_scope_style="epic",  # backend example response: "Patient.read Patient.search"
        assertion_algorithms=frozenset({"RS256", "RS384", "RS512", "ES256", "ES384"}),
        ec_keys_require_jwks_url=True,
        max_jti_length=151,
        token_retryable_statuses=frozenset({400, 408, 429, 500, 502, 503, 504}),
        user_apps_get_refresh_tokens=True,
        software_name="Epic",
    ),
    "oracle_health": VendorProfile(
        vendor="oracle_health",
        token_lifetime_s=570,
        paging_style="next_link",
        max_page_size=200,
        retryable_statuses=frozenset({429, 500, 502, 503, 504}),
        requests_per_second=5.0,  # none published; a 429 `throttled` was reported on bulk export
        bulk_export_level="group",
        default_scope_version=1,  # Millennium documents system/X.read
        granted_scope_style="smart_v1",
        # System accounts authenticate with a client secret over HTTP Basic.
        token_auth_methods=("client_secret_basic", "private_key_jwt"),
        user_apps_get_refresh_tokens=True,
        software_name="Oracle Health Millennium Platform",
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
        requests_per_second=10.0,  # 100-150 QPS figures are unverified; stay well below
        bulk_export_level="group",
        token_auth_methods=("client_secret_basic", "private_key_jwt"),
        software_name="athenahealth",
    ),
    "generic": VendorProfile(
        vendor="generic",
        token_lifetime_s=300,  # SMART Backend Services: expires_in SHOULD NOT exceed 300
        paging_style="next_link",
    ),
}


def profile_for(vendor: Vendor) -> VendorProfile:
    return VENDOR_PROFILES[vendor]
