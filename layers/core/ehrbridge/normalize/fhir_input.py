"""Vendor FHIR (from the poller) -> the same canonical transaction Bundle as the HL7 path.

Same rules: deterministic ids from tenant-qualified business identifiers (the vendor's logical
id is kept as an identifier), identifier namespacing through the tenant's map, terminology checks
and repairs on every coding, the source-event time (``meta.lastUpdated`` as the vendor sent it)
on each resource, and a Provenance pointing at the vendor resource.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from ehrbridge.contracts.envelope import patient_key_for
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.normalize import validate
from ehrbridge.normalize.context import EXT_SOURCE_EVENT_TIME, Ctx, QuarantineError
from ehrbridge.normalize.datatypes import coding_for
from ehrbridge.normalize.engine import EXT_SOURCE_MESSAGE, NormalizeResult
from ehrbridge.terminology.systems import SYSTEMS

SUPPORTED = frozenset(validate.REQUIRED) - {"Provenance"}
_VENDOR_ID_SYSTEM = "urn:ehrbridge:{tenant}:vendor-id:{rtype}"
_CODE_PATHS = ("code", "vaccineCode", "medicationCodeableConcept", "valueCodeableConcept")


def normalize_fhir(body: bytes | str, tenant: TenantConfig, *, message_id: str = "") -> NormalizeResult:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser's depth
        return NormalizeResult("quarantined", kind="FHIR", reasons=["vendor FHIR body is not JSON"])
    if not isinstance(doc, dict) or "resourceType" not in doc:
        return NormalizeResult("quarantined", kind="FHIR", reasons=["vendor FHIR body has no resourceType"])
    kind = doc["resourceType"]
    resources = [e.get("resource") for e in doc.get("entry", [])] if kind == "Bundle" else [doc]
    resources = [r for r in resources if isinstance(r, dict)]
    ctx = Ctx(tenant=tenant, zone_name=tenant.timezone, sender=tenant.vendor, facility=tenant.tenant_id)
    try:
        return _map(resources, ctx, kind, message_id)
    except QuarantineError as err:
        return NormalizeResult("quarantined", kind=kind, reasons=err.reasons)
    except Exception as err:  # the last guard: a vendor shape we did not foresee never crashes the batch
        return NormalizeResult("quarantined", kind=kind, reasons=[f"mapping failed: {type(err).__name__}"])


def _map(resources: list[dict[str, Any]], ctx: Ctx, kind: str, message_id: str) -> NormalizeResult:
    if not resources:
        raise QuarantineError("vendor FHIR bundle has no resources")
    id_map: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    patient_key = None
    for res in resources:
        rtype = res.get("resourceType", "")
        if rtype not in SUPPORTED:
            ctx.unmapped[f"FHIR:{rtype}"] += 1
            continue
        vendor_id = str(res.get("id") or "")
        if not vendor_id:
            raise QuarantineError(f"vendor {rtype} has no id")
        new = copy.deepcopy(res)
        idents = [i for i in new.get("identifier", []) if isinstance(i, dict)]
        for ident in idents:
            system = ident.get("system", "")
            mapped = ctx.tenant.identifier_systems.get(system)
            if mapped:
                ctx.repair("identifier-system", f"{rtype}.identifier", "vendor system mapped by tenant config")
                ident["system"] = mapped
            elif not system:
                ident["system"] = ctx.identifier_system(ident.get("assigner", {}).get("display", ""))
        vendor_system = _VENDOR_ID_SYSTEM.format(tenant=ctx.tenant_id, rtype=rtype)
        idents.append({"system": vendor_system, "value": vendor_id})
        new["identifier"] = idents
        new["id"] = ctx.rid(rtype, "vendor", vendor_id)
        id_map[f"{rtype}/{vendor_id}"] = f"{rtype}/{new['id']}"
        if rtype == "Patient" and patient_key is None:
            patient_key = patient_key_for(ctx.tenant_id, ctx.tenant.vendor, vendor_id)
        for path in _CODE_PATHS:
            cc = new.get(path)
            if isinstance(cc, dict):
                new[path] = _check_cc(cc, ctx, f"{rtype}.{path}")
        for comp in new.get("component") or []:
            if isinstance(comp, dict) and isinstance(comp.get("code"), dict):
                comp["code"] = _check_cc(comp["code"], ctx, f"{rtype}.component.code")
        updated = (new.get("meta") or {}).get("lastUpdated")
        new.pop("meta", None)
        if updated:
            new["meta"] = {"lastUpdated": updated}
            new.setdefault("extension", []).append({"url": EXT_SOURCE_EVENT_TIME, "valueInstant": updated})
        new.pop("text", None)  # vendor narrative: not canonical, may drift from the data
        out.append(new)
    if not out:
        raise QuarantineError(f"no supported resources in vendor {kind}")
    for res in out:
        _rewrite_refs(res, id_map)
    event_time = max(((r.get("meta") or {}).get("lastUpdated", "") for r in out), default="") or \
        "1970-01-01T00:00:00+00:00"
    prov = {"resourceType": "Provenance", "id": ctx.rid("Provenance", "vendor", *sorted(id_map)),
            "meta": {"lastUpdated": event_time},
            "target": [{"reference": f"{r['resourceType']}/{r['id']}"} for r in out], "recorded": event_time,
            "agent": [{"who": {"display": f"{ctx.tenant.vendor} FHIR API"}}],
            "entity": [{"role": "source", "what": {"reference": ref, "display": "vendor resource"}}
                       for ref in sorted(id_map)]}
    if message_id:
        prov["entity"][0]["extension"] = [{"url": EXT_SOURCE_MESSAGE, "valueString": message_id}]
    if ctx.tenant.fhir_base_url:
        for ent in prov["entity"]:
            ent["what"]["reference"] = str(ctx.tenant.fhir_base_url).rstrip("/") + "/" + ent["what"]["reference"]
    out.append(prov)
    entries = [{"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in out]
    bundle = {"resourceType": "Bundle", "id": ctx.rid("Bundle", "vendor", *sorted(id_map), event_time),
              "type": "transaction", "timestamp": event_time, "entry": entries}
    # Vendor content is not built by our maps, so the fast check cannot vouch for it: the R4B models do
    # (imported on the first vendor message only; ~1.5 ms per bundle, the poller's rate limits dominate).
    problems = validate.check_bundle(bundle) or validate.validate_with_models(bundle)
    if problems:
        raise QuarantineError(*[f"invalid FHIR: {p}" for p in problems[:5]])
    return NormalizeResult("ok", kind=kind, control_id="", bundle=bundle, unmapped=sorted(ctx.unmapped),
                           repairs=ctx.repairs, issues=ctx.issues, unmapped_systems=sorted(ctx.unmapped_systems),
                           patient_key=patient_key, structure="FHIR", source_event_time=event_time)


_URI_TO_NAME = {uri: name for name, uri in SYSTEMS.items() if not name.startswith(("HTTP", "2.16"))}
_URI_TO_NAME["http://loinc.org"] = "LN"


def _check_cc(cc: dict[str, Any], ctx: Ctx, where: str) -> dict[str, Any]:
    """Run each coding through the same checks/repairs/ConceptMaps as the HL7 path."""
    codings = []
    for coding in cc.get("coding", []):
        system, code = coding.get("system", ""), coding.get("code", "")
        if not code:
            codings.append(coding)
            continue
        name = _URI_TO_NAME.get(system, system)
        for c in coding_for(code, coding.get("display", ""), name, ctx, where):
            if c["system"].startswith("urn:ehrbridge:") and system and "extension" not in c:
                c["system"] = system  # a vendor URI we have no check for stays as sent
            codings.append(c)
    out = dict(cc)
    if codings:
        out["coding"] = codings
    return out


def _rewrite_refs(node: Any, id_map: dict[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str):
            tail = "/".join(ref.rstrip("/").split("/")[-2:])
            if tail in id_map:
                node["reference"] = id_map[tail]
        for v in node.values():
            _rewrite_refs(v, id_map)
    elif isinstance(node, list):
        for v in node:
            _rewrite_refs(v, id_map)
