"""Tenant code maps (local code -> standard code) as FHIR R4 ConceptMaps, and applying them.

``TenantConfig.code_maps`` is ``{local system name: {local code: LOINC code}}``. Each becomes one
ConceptMap (source = the tenant's local code system, target = LOINC); applying it adds the mapped
LOINC coding next to the original one (the original is kept: the IG's translator rule).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ehrbridge.contracts.envelope import stable_id
from ehrbridge.terminology.checks import LOINC
from ehrbridge.terminology.systems import local_system


def concept_maps(tenant_id: str, code_maps: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """FHIR ConceptMap resources for a tenant's code maps (for publishing and for the preflight report)."""
    maps = []
    for name, table in sorted(code_maps.items()):
        maps.append({
            "resourceType": "ConceptMap",
            "id": stable_id("ConceptMap", tenant_id, name)[:32],
            "url": f"urn:ehrbridge:{tenant_id}:conceptmap:{name}",
            "status": "active",
            "name": f"TenantCodeMap_{''.join(c for c in name if c.isalnum())}"[:100],
            "group": [{"source": local_system(tenant_id, name), "target": LOINC,
                       "element": [{"code": code, "target": [{"code": target, "equivalence": "equivalent"}]}
                                   for code, target in sorted(table.items())]}],
        })
    return maps


@lru_cache(maxsize=256)
def _index(tenant_id: str, frozen: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]) -> dict[tuple[str, str], str]:
    index: dict[tuple[str, str], str] = {}
    for name, table in frozen:
        for code, target in table:
            index[(name.upper(), code)] = target
    return index


def lookup(tenant_id: str, code_maps: dict[str, dict[str, str]], system_name: str, code: str) -> str | None:
    """LOINC target for (local system name as sent, code), or None."""
    if not code_maps:
        return None
    frozen = tuple(sorted((k, tuple(sorted(v.items()))) for k, v in code_maps.items()))
    index = _index(tenant_id, frozen)
    return index.get((system_name.upper(), code)) or index.get(("*", code))
