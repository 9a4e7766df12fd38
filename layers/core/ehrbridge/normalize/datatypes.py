"""V2-to-FHIR IG datatype maps: CX, XPN, XAD, XTN, CWE/CE/CNE, XCN, EI, SN/NM/NR, TS.

Each takes a raw (escaped) repetition and the separators and returns a FHIR datatype dict, or None
when nothing is there. Vocabulary (HL7 tables) lives in ``vocab`` as data, not in code branches.
"""

from __future__ import annotations

import re
from typing import Any

from ehrbridge.hl7.message import Segment, Separators, leaf, unescape
from ehrbridge.normalize import vocab
from ehrbridge.normalize.context import DQ_SYSTEM, EXT_DATA_QUALITY, Ctx, QuarantineError
from ehrbridge.terminology import conceptmap, ucum
from ehrbridge.terminology.checks import LOINC, UCUM, check_code
from ehrbridge.terminology.systems import local_system, system_uri

# Whitespace runs inside a code collapse to one space (a FHIR code has single spaces only).
_SPACES = re.compile(r"\s+")

_TRIPLETS = ((1, 2, 3), (4, 5, 6), (10, 11, 12))
# ASCII digits only (``\d`` matches any script's digits, which FHIR's decimal does not allow).
_NUMBER = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)$")
# Far beyond any measured value; keeps int() under Python's 4,300-digit limit and every float finite.
MAX_NUMBER_CHARS = 40
FHIR_INT_MAX = 2**31 - 1  # FHIR integer / positiveInt / unsignedInt are 32-bit


def comps(raw: str, seps: Separators) -> list[str]:
    """Unescaped components of one repetition (sub-components kept joined)."""
    return [leaf(c, seps, 1, 1) if seps.subcomponent not in c else c for c in raw.split(seps.component)]


def _c(parts: list[str], n: int) -> str:
    return parts[n - 1] if n <= len(parts) else ""


def _sub(raw_comp: str, seps: Separators, s: int = 1) -> str:
    return leaf(raw_comp, seps, 1, s)


def fhir_string(text: str) -> str:
    """``text`` when it is a valid FHIR string, else "" (only whitespace such as a vertical tab is not)."""
    return text if text and not text.isspace() else ""


def decimal(text: str) -> float | int | None:
    t = text.strip()
    if len(t) > MAX_NUMBER_CHARS or not _NUMBER.match(t):
        return None
    if "." in t:
        return float(t)
    return int(t)


# ---------------------------------------------------------------- identifiers
def fhir_code(text: str, ctx: Ctx, where: str) -> str:
    """A FHIR ``code``: no leading/trailing whitespace and single spaces inside (``[^\\s]+(\\s[^\\s]+)*``).
    A code sent with runs of blanks ("A  B") is collapsed and the repair recorded, not emitted invalid."""
    clean = " ".join(text.split())
    if clean != text:
        ctx.repair("code-whitespace", where, "blanks in a code collapsed")
    return clean


def cx(raw: str, seps: Separators, ctx: Ctx, where: str) -> dict[str, Any] | None:
    """CX -> Identifier. System from CX-4 (HD) through the tenant map; type CX-5 kept."""
    parts = raw.split(seps.component)
    value = _sub(_c(parts, 1), seps)
    if not value:
        return None
    hd = _c(parts, 4)
    authority, universal, utype = _sub(hd, seps, 1), _sub(hd, seps, 2), _sub(hd, seps, 3)
    ident: dict[str, Any] = {"value": value}
    id_type = fhir_code(_sub(_c(parts, 5), seps), ctx, where + ".5")
    if id_type:
        coding = {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": id_type}
        display = vocab.IDENTIFIER_TYPE_DISPLAY.get(id_type)
        if display:
            coding["display"] = display
        ident["type"] = {"coding": [coding]}
    fixed = vocab.IDENTIFIER_TYPE_SYSTEM.get(id_type)
    # National identifiers (SS, NPI, MC) have one system whoever assigned them, unless the tenant says otherwise.
    if fixed and authority not in ctx.tenant.identifier_systems and universal not in ctx.tenant.identifier_systems:
        ident["system"] = fixed
    else:
        ident["system"] = ctx.identifier_system(authority or (ctx.facility if not universal else ""), universal, utype)
    start = ctx.ts(_sub(_c(parts, 7), seps), where + ".7")
    end = ctx.ts(_sub(_c(parts, 8), seps), where + ".8")
    if start or end:
        ident["period"] = {k: v.fhir for k, v in (("start", start), ("end", end)) if v}
    return {k: ident[k] for k in ("type", "system", "value", "period") if k in ident}


def authority_of(raw: str, seps: Separators, ctx: Ctx) -> str:
    parts = raw.split(seps.component)
    hd = _c(parts, 4)
    return _sub(hd, seps, 1) or _sub(hd, seps, 2) or ctx.facility or ctx.sender


def ei(raw: str, seps: Separators, ctx: Ctx, type_code: str = "") -> dict[str, Any] | None:
    """EI (entity identifier: id^namespace^universal id^type) -> Identifier."""
    parts = raw.split(seps.component)
    value = _sub(_c(parts, 1), seps)
    if not value:
        return None
    ns, universal, utype = _sub(_c(parts, 2), seps), _sub(_c(parts, 3), seps), _sub(_c(parts, 4), seps)
    ident: dict[str, Any] = {}
    type_code = " ".join(type_code.split())
    if type_code:
        ident["type"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": type_code}]}
    ident["system"] = ctx.identifier_system(ns or (ctx.facility if not universal else ""), universal, utype)
    ident["value"] = value
    return ident


def ei_key(raw: str, seps: Separators, ctx: Ctx) -> str:
    """Namespace-qualified key of an EI (for deterministic ids)."""
    parts = raw.split(seps.component)
    value = _sub(_c(parts, 1), seps)
    ns = _sub(_c(parts, 2), seps) or _sub(_c(parts, 3), seps) or ctx.facility
    return f"{ns.upper()}|{value}" if value else ""


# ---------------------------------------------------------------- people
def xpn(raw: str, seps: Separators) -> dict[str, Any] | None:
    """XPN -> HumanName. A name sent as one string keeps ``text`` and is split only when unambiguous."""
    parts = raw.split(seps.component)
    family = _sub(_c(parts, 1), seps)
    # XPN.15 "called by" joins the given names (as the reference converter does).
    given = [g for g in (_sub(_c(parts, 2), seps), _sub(_c(parts, 3), seps), _sub(_c(parts, 15), seps)) if g]
    suffix = [s for s in (_sub(_c(parts, 4), seps), _sub(_c(parts, 6), seps)) if s]
    prefix = _sub(_c(parts, 5), seps)
    if not (family or given):
        return None
    name: dict[str, Any] = {}
    use = vocab.NAME_USE.get(_sub(_c(parts, 7), seps))
    if use:
        name["use"] = use
    if family and not given and not suffix and not prefix and len(parts) <= 1 and (" " in family or "," in family):
        # One string: keep it; split only "Family, Given [Middle]" (exactly one comma, both sides present).
        name["text"] = family
        left, comma, right = family.partition(",")
        if comma and "," not in right and left.strip() and right.strip():
            name["family"] = left.strip()
            name["given"] = right.split()
        return name
    if family:
        name["family"] = family
    if given:
        name["given"] = given
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = suffix
    start = _sub(_c(parts, 10), seps, 1) if len(parts) >= 10 else ""
    if start:
        pass  # XPN-10 validity range: rare; the raw message keeps it
    return name


def xcn_reference(raw: str, seps: Separators, ctx: Ctx) -> dict[str, Any] | None:
    """XCN (a practitioner) -> a logical Reference: identifier + display, no Practitioner resource."""
    parts = raw.split(seps.component)
    pid = _sub(_c(parts, 1), seps)
    family, given = _sub(_c(parts, 2), seps), _sub(_c(parts, 3), seps)
    display = " ".join(p for p in (_sub(_c(parts, 6), seps), given, family) if p)
    if not (pid or display):
        return None
    ref: dict[str, Any] = {}
    if pid:
        hd = _c(parts, 9)
        ref["identifier"] = {"system": ctx.identifier_system(_sub(hd, seps, 1) or ctx.facility, _sub(hd, seps, 2),
                                                             _sub(hd, seps, 3)), "value": pid}
    if display:
        ref["display"] = display
    return ref


def xon_display(raw: str, seps: Separators) -> dict[str, Any] | None:
    name = _sub(raw.split(seps.component)[0], seps)
    return {"display": name} if name else None


def xon_reference(raw: str, seps: Separators, ctx: Ctx) -> dict[str, Any] | None:
    """XON (an organization) -> a logical Reference: identifier (XON.10, else XON.3 in v2.3-) + display XON.1.

    IG XON[Organization]: Organization.identifier from XON.10 with the assigning authority XON.6
    (e.g. a CLIA number under ``CLIA&2.16.840.1.113883.4.7&ISO``), name from XON.1.
    """
    parts = raw.split(seps.component)
    name = _sub(_c(parts, 1), seps)
    number = _sub(_c(parts, 10), seps) or _sub(_c(parts, 3), seps)
    if not (name or number):
        return None
    ref: dict[str, Any] = {}
    if number:
        hd = _c(parts, 6)
        ref["identifier"] = {"system": ctx.identifier_system(_sub(hd, seps, 1), _sub(hd, seps, 2),
                                                             _sub(hd, seps, 3)), "value": number}
        id_type = _sub(_c(parts, 7), seps)
        if id_type:
            ref["identifier"] = {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                      "code": id_type}]}, **ref["identifier"]}
    if name:
        ref["display"] = name
    return ref


# ---------------------------------------------------------------- contact data
def xad(raw: str, seps: Separators) -> dict[str, Any] | None:
    parts = raw.split(seps.component)
    # SAD.1 street/mailing address, SAD.2 street name, SAD.3 dwelling number, XAD.2 other designation,
    # XAD.19 addressee ("in care of"): one line each, in that order.
    street = _c(parts, 1)
    lines = [x for x in (_sub(street, seps, 1), _sub(street, seps, 2), _sub(street, seps, 3),
                         _sub(_c(parts, 2), seps), _sub(_c(parts, 19), seps)) if x]
    addr: dict[str, Any] = {}
    use_code = _sub(_c(parts, 7), seps)
    use = vocab.ADDRESS_USE.get(use_code)
    if use:
        addr["use"] = use
    if use_code == "M":
        addr["type"] = "postal"
    if lines:
        addr["line"] = lines
    for key, n in (("city", 3), ("state", 4), ("postalCode", 5), ("country", 6)):
        v = _sub(_c(parts, n), seps)
        if v:
            addr[key] = v
    district = _sub(_c(parts, 9), seps)
    if district:
        addr["district"] = district
    return addr if len(addr) > ("use" in addr) + ("type" in addr) else None


def xtn(raw: str, seps: Separators) -> dict[str, Any] | None:
    parts = raw.split(seps.component)
    use_code, equip = _sub(_c(parts, 2), seps), _sub(_c(parts, 3), seps)
    email = _sub(_c(parts, 4), seps)
    system = vocab.TELECOM_SYSTEM.get(equip.upper() if equip else "", "phone")
    numbers = any(_sub(_c(parts, n), seps) for n in (1, 7, 12))
    if equip.upper() in ("INTERNET", "X.400") or (email and not numbers):
        value, system = email or _sub(_c(parts, 1), seps), "email"
    else:
        # IG XTN[ContactPoint]: the unformatted number (XTN.12) when sent, else XTN.1.
        value = _sub(_c(parts, 12), seps) or _sub(_c(parts, 1), seps)
        if not value:
            country, area, local, ext = (_sub(_c(parts, n), seps) for n in (5, 6, 7, 8))
            value = " ".join(x for x in (f"+{country}" if country else "", f"({area})" if area else "", local) if x)
            if value and ext:
                value += f" ext. {ext}"
    if not value:
        return None
    cp: dict[str, Any] = {"system": system, "value": value}
    use = "mobile" if equip.upper() == "CP" else vocab.TELECOM_USE.get(use_code)
    if use:
        cp["use"] = use
    return cp


# ---------------------------------------------------------------- codes
def cwe(raw: str, seps: Separators, ctx: Ctx, where: str, default_system: str = "") -> dict[str, Any] | None:
    """CWE/CE/CNE -> CodeableConcept: primary + alternate triplets (CWE.1-3, 4-6, 10-12: whichever carry a
    code, so a code sent only in the alternate triplet is kept), text (CWE.9, else CWE.2, else the
    alternate text CWE.5), terminology checks/repairs on every coding (``coding_for``)."""
    parts = raw.split(seps.component)
    n_parts = len(parts)
    codings: list[dict[str, Any]] = []
    for cn, dn, sn in _TRIPLETS:
        if cn > n_parts:
            break
        code = leaf(parts[cn - 1], seps)
        if not code:
            continue
        display, sname = fhir_string(_sub(_c(parts, dn), seps)), _sub(_c(parts, sn), seps)
        sname = sname or (default_system if cn == 1 else "")
        coding = coding_for(code, display, sname, ctx, where)
        if coding:
            codings.extend(coding)
    text = fhir_string(_sub(_c(parts, 9), seps) or _sub(_c(parts, 2), seps) or _sub(_c(parts, 5), seps))
    if not codings and not text:
        return None
    cc: dict[str, Any] = {}
    if codings:
        cc["coding"] = codings
    if text:
        cc["text"] = text
    return cc


def coding_for(code: str, display: str, system_name: str, ctx: Ctx, where: str) -> list[dict[str, Any]]:
    """One sent coding -> FHIR codings (the original, plus a tenant-ConceptMap target when one applies).

    The one place every coded element the normalizer emits goes through: the code's whitespace is
    normalized (a FHIR code has no leading/trailing space and single inner spaces), and a code under a
    system with an offline check (LOINC, SNOMED CT, RxNorm, CVX) that fails it is never emitted under
    that system (tenant policy: quarantine, or keep it in the sender's local system, marked).
    """
    code = fhir_code(code, ctx, where)
    if not code:
        return []
    uri, known = system_uri(system_name, ctx.tenant_id) if system_name else ("", False)
    if system_name and not known:
        ctx.unmapped_systems.add("codesystem:" + system_name)
    if not system_name:
        uri = local_system(ctx.tenant_id, ctx.sender or "local")
    coding: dict[str, Any] = {"system": uri, "code": code}
    if display:
        coding["display"] = display
    out = [coding]
    if uri:
        result = check_code(uri, code)
        if result is not None:
            ctx.code_checks += 1
            if result.ok:
                if result.code != code:
                    ctx.repair("code-format", where, f"{system_name or uri}: {result.repair}")
                    coding["code"] = result.code
                if uri == LOINC and system_name.upper() != "LN":
                    ctx.repair("code-system-alias", where, f"coding system {system_name!r} -> LN ({LOINC})")
            else:
                if ctx.tenant.terminology.on_invalid_code == "quarantine":
                    raise QuarantineError(f"{where}: {result.problem}")
                # Never under the standard system: the sender's local system, with a data-quality marker.
                coding["system"] = local_system(ctx.tenant_id, f"{ctx.sender or 'sender'}-{system_name or 'code'}")
                coding["extension"] = [{"url": EXT_DATA_QUALITY, "valueCoding": {
                    "system": DQ_SYSTEM, "code": result.problem.split(":")[0] + "-check-failed",
                    "display": result.problem}}]
                ctx.issue("invalid-code", where, f"{result.problem} ({code[:20]})")
    mapped = conceptmap.lookup(ctx.tenant_id, ctx.tenant.code_maps, system_name or "L", code) \
        if ctx.tenant.code_maps and uri != LOINC else None
    if mapped:
        target = check_code(LOINC, mapped)
        if target is not None and target.ok:
            out.append({"system": LOINC, "code": target.code})
            ctx.repair("concept-map", where, f"{system_name or 'local'} {code} -> LOINC {target.code}")
        else:
            ctx.issue("invalid-concept-map-target", where, "tenant code map target fails the LOINC check")
    return out


def coded_value(table: dict[str, str], raw_code: str) -> str | None:
    return table.get(raw_code.strip().upper()) if raw_code else None


def quantity(value_text: str, unit_raw: str, seps: Separators, ctx: Ctx, where: str) -> dict[str, Any] | None:
    """NM + CWE unit -> Quantity. The unit is emitted under UCUM only when it is UCUM (``unit``)."""
    number = decimal(value_text)
    if number is None:
        return None
    q: dict[str, Any] = {"value": number}
    if unit_raw:
        q.update(unit(unit_raw, seps, ctx, where))
    return q


# Coding-system names (CWE.3/CWE.6) that say "this is UCUM"; ISO+/ANS+ (ISO 2955 / ANSI X3.50) are close
# to UCUM but not the same, so a code under them is trusted only as an unsystemed unit would be.
UCUM_NAMES = frozenset({"UCUM", "HTTP://UNITSOFMEASURE.ORG", "2.16.840.1.113883.6.8"})
_UNSYSTEMED = frozenset({"", "ISO+", "ANS+", "ISO+ ", "ANSI+"})


def unit(unit_raw: str, seps: Separators, ctx: Ctx, where: str) -> dict[str, Any]:
    """A CWE unit (OBX-6 and friends) -> Quantity ``unit``/``system``/``code``.

    The coding system decides (CWE.3, and CWE.6 for the alternate triplet; issue 11):
    - coded as UCUM -> ``system`` UCUM with the (repaired) code;
    - no system (or ISO+/ANS+) -> UCUM only when the code is UCUM (or an unambiguous alias of it) and
      the text is empty or names the same unit;
    - any other system (``1^ML^METRIC``) -> UCUM only when the code is valid UCUM and the text is the
      same unit; otherwise ``unit`` keeps the text and the code stays in the sender's system (never
      the UCUM system), reported as ``non-ucum-unit``.
    """
    if seps.component not in unit_raw:
        triplets = [(leaf(unit_raw, seps), "", "")]  # a bare unit code (the common "mg/dL")
    else:
        parts = unit_raw.split(seps.component)
        triplets = [(_sub(_c(parts, c), seps), _sub(_c(parts, t), seps), _sub(_c(parts, n), seps).upper())
                    for c, t, n in ((1, 2, 3), (4, 5, 6))]
    triplets = [t for t in triplets if t[0] or t[1]]
    if not triplets:
        return {}
    chosen = next((t for t in triplets if t[2] in UCUM_NAMES and t[0]), None) or triplets[0]
    code, text, system_name = chosen
    text = fhir_string(text) or next((t[1] for t in triplets if fhir_string(t[1])), "")
    out: dict[str, Any] = {"unit": text or code}
    if not code:
        ctx.issue("non-ucum-unit", where, "unit text only")
        return {"unit": text} if text else {}
    ucum_code, note = ucum.repair(code)
    if system_name in UCUM_NAMES:
        trusted = ucum_code is not None
    elif system_name in _UNSYSTEMED:
        trusted = ucum_code is not None and (not text or text == code or ucum.repair(text)[0] == ucum_code)
    else:
        trusted = ucum_code is not None and note == "" and bool(text) and (
            text == code or ucum.repair(text)[0] == ucum_code)
    if trusted:
        out["system"] = UCUM
        out["code"] = ucum_code
        if note:
            ctx.repair("ucum", where, note)
        return out
    ctx.issue("non-ucum-unit", where, f"{system_name or 'no system'}: {code[:20]}")
    if system_name:
        clean = _SPACES.sub(" ", code).strip()
        out["system"] = local_system(ctx.tenant_id, f"{ctx.sender or 'sender'}-unit-{system_name}")
        out["code"] = clean
    return out


def sn(raw: str, seps: Separators, unit_raw: str, ctx: Ctx, where: str) -> tuple[str, Any] | None:
    """SN (comparator^num1^separator^num2) -> Quantity (with comparator), Range or Ratio (IG SN map)."""
    parts = [leaf(p, seps) for p in raw.split(seps.component)]
    comparator, n1, sep, n2 = (_c(parts, i) for i in (1, 2, 3, 4))
    v1, v2 = decimal(n1), decimal(n2)
    unit_of = unit(unit_raw, seps, ctx, where) if unit_raw else {}

    def q(v: float | int) -> dict[str, Any]:
        return {"value": v, **unit_of}

    if sep == "+":
        # IG OBX[Observation]: SN with "+" (e.g. "^2^+") -> valueString of the four components.
        return "valueString", " ".join(p for p in (comparator, n1, sep, n2) if p)
    if sep == "-" and v1 is not None and v2 is not None:
        return "valueRange", {"low": q(v1), "high": q(v2)}
    if sep in (":", "/") and v1 is not None and v2 is not None:
        return "valueRatio", {"numerator": {"value": v1}, "denominator": {"value": v2}}
    if v1 is not None and not sep:
        out = q(v1)
        if comparator in ("<", "<=", ">", ">="):
            out = {"value": v1, "comparator": comparator, **{k: v for k, v in out.items() if k != "value"}}
        elif comparator in ("=", "<>", ""):
            pass
        return "valueQuantity", out
    return None


_RANGE = re.compile(r"^\s*([+-]?[0-9]+(?:\.[0-9]+)?)\s*-\s*([+-]?[0-9]+(?:\.[0-9]+)?)\s*$")  # ASCII digits
_BOUND = re.compile(r"^\s*(<=?|>=?)\s*([+-]?[0-9]+(?:\.[0-9]+)?)\s*$")


def reference_range(text: str, unit: dict[str, Any] | None) -> dict[str, Any] | None:
    """OBX-7 ("3.5-5.0", "<5", ">10", or text) -> Observation.referenceRange."""
    t = text.strip()
    if not t:
        return None
    base = {k: unit[k] for k in ("unit", "system", "code") if unit and k in unit}
    m = _RANGE.match(t)
    if m:
        low, high = decimal(m.group(1)), decimal(m.group(2))
        if low is not None and high is not None:
            return {"low": {"value": low, **base}, "high": {"value": high, **base}, "text": t}
    m = _BOUND.match(t)
    if m and decimal(m.group(2)) is not None:
        key = "high" if m.group(1).startswith("<") else "low"
        return {key: {"value": decimal(m.group(2)), **base}, "text": t}
    return {"text": t}


def field_reps(seg: Segment, n: int) -> list[str]:
    return seg.reps(n)


def leaf_text(raw: str, seps: Separators) -> str:
    return leaf(raw, seps, 1, 1)


def unescape_text(raw: str, seps: Separators) -> str:
    """A whole text repetition (TX/FT/ST): separators a sender left unescaped stay as literal text."""
    return unescape(raw, seps)


__all__ = ["leaf", "leaf_text", "unescape_text"]
