"""Stale-write protection: may an incoming canonical resource replace the stored one?

Every resource the normalizer emits carries the source event time (EVN-2, else MSH-7; for vendor
FHIR the vendor's ``meta.lastUpdated``) in ``meta.lastUpdated`` and in the extension
``https://ehrbridge.dev/fhir/StructureDefinition/source-event-time``. Ids are deterministic, so the
same business object always lands on the same ``<Type>/<id>``; writers (identity matcher, lake,
FHIR sinks) call :func:`should_replace` before overwriting, so a late or resent older message never
replaces newer data, and a resent preliminary result never downgrades a final one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ehrbridge.normalize.context import EXT_SOURCE_EVENT_TIME

# Result/report status order: a lower rank never replaces a higher one for the same id.
STATUS_RANK = {"registered": 0, "partial": 1, "preliminary": 2, "final": 3, "amended": 4, "corrected": 4,
               "appended": 4, "cancelled": 5, "entered-in-error": 6}
_RANKED = frozenset({"Observation", "DiagnosticReport"})


def source_event_time(resource: dict[str, Any]) -> datetime | None:
    for ext in resource.get("extension", []):
        if ext.get("url") == EXT_SOURCE_EVENT_TIME and ext.get("valueInstant"):
            return _parse(ext["valueInstant"])
    updated = (resource.get("meta") or {}).get("lastUpdated")
    return _parse(updated) if updated else None


def _parse(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def should_replace(stored: dict[str, Any] | None, incoming: dict[str, Any]) -> tuple[bool, str]:
    """(replace?, reason). Compares instants (never strings), then result status for lab results."""
    if stored is None:
        return True, "new"
    old_t, new_t = source_event_time(stored), source_event_time(incoming)
    if old_t is not None and new_t is not None and new_t < old_t:
        return False, "older source event"
    if incoming.get("resourceType") in _RANKED:
        old_rank = STATUS_RANK.get(stored.get("status", ""), -1)
        new_rank = STATUS_RANK.get(incoming.get("status", ""), -1)
        if new_rank < old_rank:
            return False, "lower result status"
    return True, "newer or same source event"
