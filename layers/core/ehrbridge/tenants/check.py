"""`tenants check`: get a token, compare requested vs granted scopes, probe every resource type the
tenant's workflows need and classify it ok / denied / unsupported, before go-live."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import httpx

from ehrbridge.auth.fhir_client import FhirCallError, FhirClient, ResourceDenied, ScopeNotGranted
from ehrbridge.auth.refresher import RefreshFailed, TokenRefresher
from ehrbridge.auth.scopes import WORKFLOW_RESOURCES, ScopeError, resource_permissions
from ehrbridge.auth.tokens import REFRESH_SCHEDULE_S, kept_warm
from ehrbridge.contracts.tenant import TenantConfig

ProbeStatus = Literal["ok", "denied", "unsupported", "error"]


@dataclass
class Probe:
    resource_type: str
    workflows: list[str]
    status: ProbeStatus
    detail: str


@dataclass
class CheckReport:
    tenant_id: str
    vendor: str
    token_obtained: bool = False
    expires_in: float | None = None
    # What we asked for (known even when no token came back); None only if it could not be derived.
    requested_scopes: list[str] | None = None
    granted_scopes: list[str] = field(default_factory=list)
    granted_raw: str = ""
    probes: list[Probe] = field(default_factory=list)
    error: str | None = None  # reason code, the server's error_description, the URL that failed
    warnings: list[str] = field(default_factory=list)

    @property
    def denied_types(self) -> list[str]:
        return [p.resource_type for p in self.probes if p.status == "denied"]

    @property
    def unsupported_types(self) -> list[str]:
        return [p.resource_type for p in self.probes if p.status == "unsupported"]

    @property
    def healthy(self) -> bool:
        return self.token_obtained and all(p.status == "ok" for p in self.probes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(denied_types=self.denied_types, unsupported_types=self.unsupported_types, healthy=self.healthy)
        return data


def check_tenant(tenant: TenantConfig, refresher: TokenRefresher, *, http: httpx.Client | None = None,
                 schedule_s: float = REFRESH_SCHEDULE_S) -> CheckReport:
    report = CheckReport(tenant_id=tenant.tenant_id, vendor=tenant.vendor)
    try:
        report.requested_scopes = refresher.requested_scopes(tenant)
    except ScopeError:
        report.requested_scopes = None
    try:
        token = refresher.get_token(tenant)
    except RefreshFailed as err:
        report.error = err.detail
        return report
    report.token_obtained = True
    report.expires_in = token.expires_in
    report.requested_scopes = token.requested_scopes
    if not kept_warm(token.expires_in, schedule_s):
        report.warnings.append(
            f"token lifetime {token.expires_in:.0f} s is too short for the {schedule_s:.0f} s refresh schedule: "
            f"the scheduled refresher leaves this tenant to on-demand refresh by the FHIR client (each "
            f"poll may ask the token endpoint for a new token; check the vendor's token-request limits)")
    report.granted_raw = token.granted_scope
    report.granted_scopes = token.granted().normalized()
    client = FhirClient(tenant, refresher, http=http, max_attempts=2)
    supported = _supported_types(client)
    needed = resource_permissions(tenant.workflows)
    by_type = {rt: [w for w in tenant.workflows if any(t == rt for t, _ in WORKFLOW_RESOURCES[w])] for rt in needed}
    # Patient first: its id lets us probe types whose searches require patient=.
    order = sorted(needed, key=lambda rt: (rt != "Patient", rt))
    patient_id: str | None = None
    for resource_type in order:
        perms = needed[resource_type]
        probe = Probe(resource_type, by_type[resource_type], "ok", "")
        if supported is not None and resource_type not in supported:
            probe.status, probe.detail = "unsupported", "not in the server's CapabilityStatement"
        elif not token.granted().allows(resource_type, perms):
            probe.status, probe.detail = "denied", f"not granted (needs {perms})"
        elif "s" not in perms:
            probe.detail = f"granted ({perms}); read by id only, not probed"
        else:
            params = {"_count": "1"}
            required = tenant.profile.required_search_params.get(resource_type, ())
            if "patient" in required:
                if patient_id is None:
                    probe.detail = "granted; search needs patient= and no Patient was readable, not probed"
                    report.probes.append(probe)
                    continue
                params["patient"] = patient_id
            try:
                bundle = client.search(resource_type, params)
                probe.detail = f"search answered 200 ({len(bundle.get('entry', []))} entries on the first page)"
                if resource_type == "Patient" and bundle.get("entry"):
                    patient_id = bundle["entry"][0]["resource"].get("id")
            except ScopeNotGranted:
                probe.status, probe.detail = "denied", "not granted"
            except ResourceDenied:
                probe.status, probe.detail = "denied", "server answered 403 despite the grant"
            except FhirCallError as err:
                if err.status == 404:
                    probe.status, probe.detail = "unsupported", "server answered 404"
                else:
                    probe.status = "error"
                    probe.detail = f"server answered {err.status}" + (f" ({err.code})" if err.code else "")
        report.probes.append(probe)
    return report


def _supported_types(client: FhirClient) -> set[str] | None:
    try:
        response = client.http.get(f"{client.base_url}/metadata", headers={"Accept": "application/fhir+json"})
        if response.status_code != 200:
            return None
        rest = response.json().get("rest", [])
        return {r["type"] for block in rest for r in block.get("resource", []) if "type" in r}
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
        return None
