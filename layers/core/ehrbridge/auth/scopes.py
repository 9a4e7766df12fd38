"""Least-privilege scopes: workflow -> resource types -> ``system/X.rs``, and parsing what came back.

SMART scopes v2 (`.cruds` subsets), v1 (`.read` ≡ `.rs`, `.write` ≡ `.cud`, `.*` ≡ `.cruds`) and
Epic's own form (`Patient.read Patient.search`) all normalise to per-type permission letters.
We request only ``system/`` scopes for the resource types a tenant's workflows need and refuse
wildcards such as ``system/*.read``: scope creep is one of the failure modes we design against.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

ScopeVersion = Literal[1, 2]
PERMISSION_ORDER = "cruds"
READ_SEARCH = "rs"

# The one table: workflow -> (resource type, permissions needed). Patient is in every clinical
# workflow because results reference it and the identity stage needs its identifiers.
WORKFLOW_RESOURCES: dict[str, tuple[tuple[str, str], ...]] = {
    "labs": (("Observation", "rs"), ("DiagnosticReport", "rs"), ("Patient", "rs")),
    "demographics": (("Patient", "rs"),),
    "encounters": (("Encounter", "rs"), ("Patient", "rs")),
    "medications": (("MedicationRequest", "rs"), ("Medication", "rs"), ("Patient", "rs")),
    "immunizations": (("Immunization", "rs"), ("Patient", "rs")),
    "conditions": (("Condition", "rs"), ("Patient", "rs")),
    # Binary holds document content and is only ever read by id.
    "documents": (("DocumentReference", "rs"), ("Binary", "r"), ("Patient", "rs")),
    "appointments": (("Appointment", "rs"), ("Patient", "rs")),
    "orders": (("ServiceRequest", "rs"), ("Patient", "rs")),
}

_V1_TO_V2 = {"read": "rs", "write": "cud", "*": "cruds"}
_RESOURCE = r"(?:\*|[A-Z][A-Za-z]{1,63})"
_SMART = re.compile(rf"^(?P<ctx>system|user|patient)/(?P<type>{_RESOURCE})\.(?P<perm>[a-z*]+)(?:\?(?P<query>\S+))?$")
_EPIC = re.compile(rf"^(?P<type>{_RESOURCE})\.(?P<perm>read|search|create|update|delete)$", re.I)
_EPIC_LETTER = {"read": "r", "search": "s", "create": "c", "update": "u", "delete": "d"}


class ScopeError(ValueError):
    """A requested scope set breaks least privilege (wildcards, unknown workflows)."""


def resource_permissions(workflows: Iterable[str]) -> dict[str, str]:
    """Resource type -> permission letters (in `cruds` order) the workflows need."""
    needed: dict[str, set[str]] = {}
    for workflow in workflows:
        try:
            entries = WORKFLOW_RESOURCES[workflow]
        except KeyError:
            raise ScopeError(f"unknown workflow {workflow!r}; known: {sorted(WORKFLOW_RESOURCES)}") from None
        for resource_type, perms in entries:
            needed.setdefault(resource_type, set()).update(perms)
    return {rt: _ordered(p) for rt, p in sorted(needed.items())}


def resource_types_for(workflows: Iterable[str]) -> list[str]:
    return list(resource_permissions(workflows))


def format_scope(resource_type: str, perms: str, version: ScopeVersion = 2) -> str:
    if version == 2:
        return f"system/{resource_type}.{perms}"
    # v1 has only read/write/*: any of r or s needs `.read`.
    return f"system/{resource_type}.read"


def scopes_for(workflows: Iterable[str], version: ScopeVersion = 2) -> list[str]:
    """The minimum scope list for the workflows (sorted, de-duplicated, never a wildcard)."""
    scopes = sorted({format_scope(rt, perms, version) for rt, perms in resource_permissions(workflows).items()})
    refuse_wildcards(scopes)
    return scopes


def refuse_wildcards(scopes: Iterable[str]) -> None:
    for scope in scopes:
        parsed = parse_scope(scope)
        if parsed is not None and parsed.resource_type == "*":
            raise ScopeError(f"wildcard scope {scope!r} refused: request only the resource types a workflow needs")


@dataclass(frozen=True)
class Scope:
    context: str
    resource_type: str
    perms: str  # letters in cruds order
    query: str | None = None


def parse_scope(text: str) -> Scope | None:
    """One scope string -> Scope, or None for scopes that grant no resource access (openid, ...)."""
    match = _SMART.match(text)
    if match:
        perm = match["perm"]
        perms = _V1_TO_V2.get(perm)
        if perms is None:
            # v2: an in-order subset of cruds; out-of-order or unknown letters are ignored (spec: MAY).
            if not _is_ordered_subset(perm):
                return None
            perms = perm
        return Scope(match["ctx"], match["type"], perms, match["query"])
    match = _EPIC.match(text)
    if match:
        return Scope("system", match["type"], _EPIC_LETTER[match["perm"].lower()])
    return None


@dataclass
class GrantedScopes:
    """What a token actually allows, normalised. Only ``system/`` scopes count for backend clients."""

    raw: str
    permissions: dict[str, str] = field(default_factory=dict)
    restricted: dict[str, list[str]] = field(default_factory=dict)  # type -> fine-grained queries

    @classmethod
    def parse(cls, raw: str | None) -> GrantedScopes:
        granted = cls(raw=raw or "")
        merged: dict[str, set[str]] = {}
        for text in (raw or "").split():
            scope = parse_scope(text)
            if scope is None or scope.context != "system":
                continue
            merged.setdefault(scope.resource_type, set()).update(scope.perms)
            if scope.query:
                granted.restricted.setdefault(scope.resource_type, []).append(scope.query)
        granted.permissions = {rt: _ordered(p) for rt, p in sorted(merged.items())}
        return granted

    def allows(self, resource_type: str, needed: str = READ_SEARCH) -> bool:
        have = set(self.permissions.get(resource_type, "")) | set(self.permissions.get("*", ""))
        return set(needed) <= have

    def denied(self, needed: dict[str, str]) -> list[str]:
        """Resource types of ``needed`` (type -> letters) that this grant does not cover."""
        return sorted(rt for rt, perms in needed.items() if not self.allows(rt, perms))

    def normalized(self) -> list[str]:
        return [f"system/{rt}.{perms}" for rt, perms in self.permissions.items()]


def _ordered(perms: Iterable[str]) -> str:
    letters = set(perms)
    return "".join(c for c in PERMISSION_ORDER if c in letters)


def _is_ordered_subset(perm: str) -> bool:
    position = -1
    for char in perm:
        index = PERMISSION_ORDER.find(char)
        if index <= position:
            return False
        position = index
    return bool(perm)
