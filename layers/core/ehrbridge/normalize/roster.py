"""ADT feeds the FHIR poller's roster: the patients a per-patient crawl visits.

Vendors whose searches need ``patient=`` (Epic without a Group, athena) can only crawl patients they
know. An ADT names a patient by the identifier the EHR knows (PID-3, mapped to Patient.identifier
with its assigning authority as system); it is recorded as an identifier-only roster entry that the
poller resolves to the vendor's Patient id at crawl time. Idempotent (conditional put keyed by a
digest of system|value): re-delivery is harmless, and every further ADT for the patient keeps its
entry alive (roster entries expire after a period without activity). An A40 merge retires the entry of
the merged-away patient (MRG-1; the normalizer's inactive Patient with a ``replaced-by`` link), so the
poller crawls the survivor instead. Logs carry ids only, never the identifier value.
"""

from __future__ import annotations

from typing import Any, Protocol

from ehrbridge.contracts.tenant import TenantConfig

_MRN = "MR"
_NOT_PATIENT_IDS = frozenset({"SS", "DL"})  # PID-19 / PID-20: never what the EHR's Patient search keys on


class RosterFeed(Protocol):
    def add_roster_identifier(self, tenant_id: str, system: str, value: str) -> bool: ...

    def retire_roster_identifier(self, tenant_id: str, system: str, value: str) -> bool: ...


def feeds_roster(tenant: TenantConfig, message_kind: str) -> bool:
    """An ADT (any event, A40 merges included: PID is the surviving patient) for a tenant polled per patient."""
    return (message_kind.upper().startswith("ADT") and tenant.fhir_base_url is not None
            and any("patient" in params for params in tenant.profile.required_search_params.values()))


def roster_identifier(bundle: dict[str, Any] | None) -> tuple[str, str] | None:
    """(system, value) of the message's patient: the PID-3 MRN, else its first PID-3 identifier with a system.
    In an A40 that is the surviving patient, never the merged-away one."""
    for resource in _patients(bundle):
        if not _merged_away(resource):
            return _best_identifier(resource)
    return None


def merged_identifiers(bundle: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(system, value) of each merged-away patient in the message (A40 MRG-1): their roster entries retire."""
    out = []
    for resource in _patients(bundle):
        if _merged_away(resource) and (best := _best_identifier(resource)) is not None:
            out.append(best)
    return out


def _patients(bundle: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [r for e in (bundle or {}).get("entry") or [] if isinstance(r := e.get("resource"), dict)
            and r.get("resourceType") == "Patient"]


def _merged_away(patient: dict[str, Any]) -> bool:
    return any(isinstance(link, dict) and link.get("type") == "replaced-by" for link in patient.get("link") or [])


def _best_identifier(patient: dict[str, Any]) -> tuple[str, str] | None:
    candidates = [(_type_code(i), i["system"], i["value"]) for i in patient.get("identifier") or []
                  if isinstance(i, dict) and i.get("system") and i.get("value")]
    candidates = [c for c in candidates if c[0] not in _NOT_PATIENT_IDS]
    best = next((c for c in candidates if c[0] == _MRN), candidates[0] if candidates else None)
    return (best[1], best[2]) if best else None


def _type_code(identifier: dict[str, Any]) -> str:
    codings = (identifier.get("type") or {}).get("coding") or [{}]
    return str(codings[0].get("code") or "")


__all__ = ["RosterFeed", "feeds_roster", "merged_identifiers", "roster_identifier"]
