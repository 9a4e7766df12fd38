"""ADT feeds the FHIR poller's roster: the patients a per-patient crawl visits.

Vendors whose searches need ``patient=`` (Epic without a Group, athena) can only crawl patients they
know. An ADT names a patient by the identifier the EHR knows (PID-3, mapped to Patient.identifier
with its assigning authority as system); it is recorded as an identifier-only roster entry that the
poller resolves to the vendor's Patient id at crawl time. Idempotent (conditional put keyed by a
digest of system|value): re-delivery is harmless. Logs carry ids only, never the identifier value.
"""

from __future__ import annotations

from typing import Any, Protocol

from ehrbridge.contracts.tenant import TenantConfig

_MRN = "MR"
_NOT_PATIENT_IDS = frozenset({"SS", "DL"})  # PID-19 / PID-20: never what the EHR's Patient search keys on


class RosterFeed(Protocol):
    def add_roster_identifier(self, tenant_id: str, system: str, value: str) -> bool: ...


def feeds_roster(tenant: TenantConfig, message_kind: str) -> bool:
    """An ADT (any event, A40 merges included: PID is the surviving patient) for a tenant polled per patient."""
    return (message_kind.upper().startswith("ADT") and tenant.fhir_base_url is not None
            and any("patient" in params for params in tenant.profile.required_search_params.values()))


def roster_identifier(bundle: dict[str, Any] | None) -> tuple[str, str] | None:
    """(system, value) of the message's patient: the PID-3 MRN, else its first PID-3 identifier with a system."""
    for entry in (bundle or {}).get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") != "Patient":
            continue
        candidates = [(_type_code(i), i["system"], i["value"]) for i in resource.get("identifier") or []
                      if isinstance(i, dict) and i.get("system") and i.get("value")]
        candidates = [c for c in candidates if c[0] not in _NOT_PATIENT_IDS]
        best = next((c for c in candidates if c[0] == _MRN), candidates[0] if candidates else None)
        return (best[1], best[2]) if best else None
    return None


def _type_code(identifier: dict[str, Any]) -> str:
    codings = (identifier.get("type") or {}).get("coding") or [{}]
    return str(codings[0].get("code") or "")


__all__ = ["RosterFeed", "feeds_roster", "roster_identifier"]
