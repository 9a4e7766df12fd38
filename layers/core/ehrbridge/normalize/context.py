"""Per-message state while mapping: tenant settings, ids, and what was repaired, unmapped or wrong."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any
from urllib.parse import quote

from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.hl7.timefmt import Ts, TsError, parse_ts
from ehrbridge.normalize.validate import check_primitive

EXT_BASE = "https://ehrbridge.dev/fhir/StructureDefinition/"
EXT_SOURCE_EVENT_TIME = EXT_BASE + "source-event-time"
EXT_DATA_QUALITY = EXT_BASE + "data-quality"
EXT_UNMAPPED = EXT_BASE + "unmapped-segment"
DQ_SYSTEM = "https://ehrbridge.dev/fhir/CodeSystem/data-quality"
_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


class QuarantineError(Exception):
    """The message must not be written; ``reasons`` are PHI-free and specific."""

    def __init__(self, *reasons: str) -> None:
        self.reasons = list(reasons)
        super().__init__("; ".join(reasons))


@dataclass
class Ctx:
    tenant: TenantConfig
    zone_name: str
    facility: str = ""  # MSH-4 namespace: the default assigning authority
    sender: str = ""  # MSH-3
    repairs: list[dict[str, str]] = field(default_factory=list)
    issues: list[dict[str, str]] = field(default_factory=list)
    quarantine: list[str] = field(default_factory=list)
    unmapped: Counter[str] = field(default_factory=Counter)
    unmapped_systems: set[str] = field(default_factory=set)
    zone_applied: int = 0
    zone_gaps: int = 0
    fields_mapped: int = 0
    code_checks: int = 0
    ids: set[tuple[str, str]] = field(default_factory=set)

    @property
    def tenant_id(self) -> str:
        return self.tenant.tenant_id

    def rid(self, resource_type: str, *parts: str) -> str:
        """Deterministic resource id: SHA-256 of tenant + type + qualified business key, in UUID form.

        Parts are length-prefixed so ("ab", "c") and ("a", "bc") never collide.
        """
        key = "\x1f".join(f"{len(p)}:{p}" for p in (self.tenant_id, resource_type, *parts))
        h = sha256(key.encode()).hexdigest()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"

    def ts(self, value: str, where: str) -> Ts | None:
        """A TS/DTM field -> Ts, or None. A value that is not a valid date/time (month 13, Feb 30, year
        0000, a year FHIR cannot write) is dropped, never emitted: an issue and an ``unmapped`` entry
        (``OBR-7(invalid date/time)``) say so."""
        if not value:
            return None
        try:
            t = parse_ts(value, self.zone_name)
        except (TsError, ValueError, OverflowError):
            t = None
        if t is None or not check_primitive("dateTime", t.fhir):
            self.issue("invalid-datetime", where)
            self.unmapped[f"{where}(invalid date/time)"] += 1
            return None
        if t.zone_applied:
            self.zone_applied += 1
            if t.zone_gap:
                self.zone_gaps += 1
                self.issue("datetime-in-dst-gap", where)
        return t

    def issue(self, code: str, where: str, detail: str = "") -> None:
        item = {"code": code, "where": where}
        if detail:
            item["detail"] = detail
        self.issues.append(item)

    def repair(self, kind: str, where: str, detail: str) -> None:
        self.repairs.append({"kind": kind, "where": where, "detail": detail})

    def identifier_system(self, authority: str, universal_id: str = "", id_type: str = "") -> str:
        """Assigning authority -> system URI: tenant map first, then an ISO OID, else a tenant-scoped URN."""
        systems = self.tenant.identifier_systems
        for key in (authority, universal_id):
            if key and key in systems:
                return systems[key]
        upper = _upper_systems(self.tenant)
        for key in (authority, universal_id):
            if key and key.upper() in upper:
                return upper[key.upper()]
        if universal_id and id_type.upper() == "ISO" and _OID.match(universal_id):
            return "urn:oid:" + universal_id
        if universal_id and id_type.upper() in ("UUID", "GUID"):
            return "urn:uuid:" + universal_id.lower()
        name = authority or universal_id or self.facility or self.sender or "unknown"
        self.unmapped_systems.add(name)
        return f"urn:ehrbridge:{self.tenant_id}:identifier:{quote(name, safe='')}"


_UPPER_CACHE: dict[int, tuple[TenantConfig, dict[str, str]]] = {}


def _upper_systems(tenant: TenantConfig) -> dict[str, str]:
    """Case-insensitive view of the tenant's identifier map, computed once per config object."""
    cached = _UPPER_CACHE.get(id(tenant))
    if cached is None or cached[0] is not tenant:
        cached = (tenant, {k.upper(): v for k, v in tenant.identifier_systems.items()})
        if len(_UPPER_CACHE) > 256:
            _UPPER_CACHE.clear()
        _UPPER_CACHE[id(tenant)] = cached
    return cached[1]


def drop_empty(obj: dict[str, Any]) -> dict[str, Any]:
    """Remove None/''/[]/{} members (one level; builders keep nested values non-empty themselves)."""
    return {k: v for k, v in obj.items() if v is not None and (v or type(v) not in _CONTAINERS)}


_CONTAINERS = frozenset({str, list, dict})  # falsy values of these types are empty; 0 and False are values
