"""Fast validation of our own bundles (the hot path), and full model validation (tests, CLI).

The hot path cannot afford the ``fhir.resources`` models (importing them alone breaks the
normalizer's import budget, and validating a bundle costs milliseconds). The fast check walks
every element of the bundle against the R4B element table (``fhir_elements``, generated from the
models): known element names only, repeating vs single, required elements, choice groups
(``value[x]``: at most one), and every primitive - at any depth (``period.start``,
``collection.collectedDateTime``, ``coding.code`` ...) - against its FHIR type. (A pydantic-core
schema built from the same table was tried: it costs more, because a typed dict is checked field
by field of its type - 50 for Observation - not key by key of the value.)

The primitive checks agree with what ``fhir.resources`` accepts (property-tested on generated
values in ``tests/unit/normalize/test_validate_property.py``): a value the fast check accepts, the
models accept. Whitespace is Unicode White_Space exactly as the models'
regex engine (Rust's) reads ``\\s``/``\\S`` (Python's ``\\s`` also takes U+001C..U+001F); digits
are ASCII only (``[0-9]``, never ``\\d``, which would take any Unicode digit); calendar validity
(no Feb 30, Feb 29 only in leap years, no year 0000) is in the date patterns themselves. Where
FHIR is stricter than the models, so are we: ``id`` at most 64 characters, ``uri``/``url``
non-empty without whitespace, numbers as JSON numbers (not strings), no ``null``, no empty object
or array (ele-1).

``validate_with_models`` is what the CLI's ``--strict`` and the tests use.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from math import isfinite
from typing import Any

# Resource types the normalizer emits at the top level of a bundle (fhir_input accepts these too),
# and the ones it may contain (a contained PractitionerRole/Organization).
TOP_LEVEL = ("Patient", "Encounter", "Observation", "DiagnosticReport", "ServiceRequest", "Immunization",
             "MedicationRequest", "Appointment", "DocumentReference", "AllergyIntolerance", "Condition",
             "Procedure", "Specimen", "Provenance")
CONTAINABLE = (*TOP_LEVEL, "PractitionerRole", "Organization")
# Emitted resource types -> their required elements (filled from the element table on first use).
REQUIRED: dict[str, tuple[str, ...]] = dict.fromkeys(TOP_LEVEL, ())

# ---------------------------------------------------------------- primitive patterns (FHIR R4 + calendar)
# Unicode White_Space (what the models' regex engine, Rust's, calls \s).
_WS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# A FHIR string needs one character of [ \r\n\t\S] (unanchored in the models): these alone are not one.
_STRING_EMPTY_CHARS = "\x0b\x0c\x85\xa0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200B)) + \
    "\u2028\u2029\u202f\u205f\u3000"
_YEAR = r"(?:[0-9](?:[0-9](?:[0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"  # 0001-9999, never 0000
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_MONTH_DAY = (r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
              r"|02-(?:0[1-9]|1[0-9]|2[0-8]))")
_FULL_DATE = rf"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
_PARTIAL_DATE = rf"{_YEAR}(?:-(?:0[1-9]|1[0-2]))?"
_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]+)?"
_OFFSET = r"(?:Z|[+-](?:(?:0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
PATTERNS: dict[str, str] = {
    "code": rf"[^{_WS}]+(?:[{_WS}][^{_WS}]+)*", "id": r"[A-Za-z0-9\-.]{1,64}",
    "uri": rf"[^{_WS}]+", "url": rf"[^{_WS}]+", "canonical": rf"[^{_WS}]+",
    "date": rf"(?:{_FULL_DATE}|{_PARTIAL_DATE})",
    "dateTime": rf"(?:{_FULL_DATE}(?:T{_TIME}{_OFFSET})?|{_PARTIAL_DATE})",
    "instant": rf"{_FULL_DATE}T{_TIME}{_OFFSET}",
    "time": rf"{_TIME}",
    "base64Binary": r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?",
    "oid": r"urn:oid:[0-2](?:\.(?:0|[1-9][0-9]*))+",
    "uuid": r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
}
_INT32 = (-(2**31), 2**31 - 1)
# Compiled on first use (_build): the calendar-exact date patterns take tens of ms to compile, which the
# function's cold-start import budget should not pay.
_COMPILED: dict[str, re.Pattern[str]] = {}


def _pattern_check(kind: str) -> Callable[[Any], bool]:
    return lambda v: type(v) is str and _COMPILED[kind].fullmatch(v) is not None


_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-."


def is_id(v: Any) -> bool:
    return type(v) is str and 0 < len(v) <= 64 and not v.strip(_ID_CHARS)


def is_uri(v: Any) -> bool:
    if type(v) is not str or not v:
        return False
    if v.isascii() and v.isprintable():  # printable ASCII: the only whitespace left is the space itself
        return " " not in v
    return _COMPILED["uri"].fullmatch(v) is not None


def is_code(v: Any) -> bool:
    if type(v) is not str or not v:
        return False
    if v.isascii() and v.isprintable():  # printable ASCII: single inner spaces, none at either end
        return v[0] != " " and v[-1] != " " and "  " not in v
    return _COMPILED["code"].fullmatch(v) is not None


def is_string(v: Any) -> bool:
    return type(v) is str and v.strip(_STRING_EMPTY_CHARS) != ""


_DECIMAL_BOUND = 10**4300  # Python writes at most 4300 digits from int to str: the models need str() of it


def is_decimal(v: Any) -> bool:
    t = type(v)
    if t is float:
        return isfinite(v)
    return t is int and -_DECIMAL_BOUND < v < _DECIMAL_BOUND


def _int_range(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: type(v) is int and low <= v <= high


def _never(v: Any) -> bool:
    return False  # xhtml: the normalizer never writes narrative


PRIMITIVES: dict[str, Callable[[Any], bool]] = {
    **{kind: _pattern_check(kind) for kind in PATTERNS}, "string": is_string, "markdown": is_string,
    "id": is_id, "uri": is_uri, "url": is_uri, "canonical": is_uri, "code": is_code,
    "decimal": is_decimal, "integer": _int_range(*_INT32), "unsignedInt": _int_range(0, _INT32[1]),
    "positiveInt": _int_range(1, _INT32[1]), "boolean": lambda v: type(v) is bool, "xhtml": _never,
}


def check_primitive(kind: str, value: Any) -> bool:
    """The fast check's verdict on one value of a FHIR primitive type (e.g. "dateTime")."""
    _ready()
    if type(value) is str and value in _SEEN[kind]:
        return True
    return PRIMITIVES[kind](value)


# ---------------------------------------------------------------- the walk
# Per type, built once from ELEMENTS: (single primitives: name -> seen set of its kind, repeating
# primitives: same, single complex: name -> entry of its type (None: any resource type we emit),
# repeating complex: same, required names, choice bit per name or None, mask of the required choice
# groups, shared). "seen" holds string values of a kind already found valid (the same systems, codes and times
# recur in every bundle); only a new value runs its kind's check. Shared types (one object used in many
# places by the engine: meta, the source-time extension, one Reference per target) are checked once per
# bundle, remembered by identity.
_SEEN: dict[str, set[Any]] = {kind: set() for kind in PRIMITIVES}
_SEEN_MAX = 20_000
_CHECK_OF: dict[int, Callable[[Any], bool]] = {id(_SEEN[kind]): check for kind, check in PRIMITIVES.items()}
_RESOURCE_TYPES = frozenset(CONTAINABLE)
_RESOURCE_TYPE_SEEN: set[Any] = {*_RESOURCE_TYPES, "Bundle"}
_CHECK_OF[id(_RESOURCE_TYPE_SEEN)] = _never
_SHARED = frozenset({"Reference", "Meta", "Extension"})
_Entry = tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any], tuple[str, ...], Any, int, bool]
_ENTRY: dict[str, _Entry] = {}
ELEMENTS: dict[str, Any] = {}
CHOICES: dict[str, Any] = {}
_MODEL_REQUIRED: dict[str, tuple[str, ...]] = {}


def _build() -> None:
    """Load the element table, compile the patterns and build the per-type entries (once, on first use)."""
    from ehrbridge.normalize import fhir_elements

    ELEMENTS.update(fhir_elements.ELEMENTS)
    CHOICES.update(fhir_elements.CHOICES)
    _MODEL_REQUIRED.update(fhir_elements.REQUIRED)
    for t in TOP_LEVEL:
        REQUIRED[t] = _MODEL_REQUIRED.get(t, ())
    for kind, pattern in PATTERNS.items():
        _COMPILED[kind] = re.compile(pattern)
    for t in ELEMENTS:
        bits = {name: 1 << i for i, (_, names) in enumerate(CHOICES.get(t, ())) for name in names}
        must = sum(1 << i for i, (req, _) in enumerate(CHOICES.get(t, ())) if req)
        _ENTRY[t] = ({}, {}, {}, {}, tuple(_MODEL_REQUIRED.get(t, ())), bits or None, must, t in _SHARED)
    for t, elements in ELEMENTS.items():
        single, repeating, complex_single, complex_repeating = _ENTRY[t][:4]
        for k, (kind, many) in elements.items():
            if kind in PRIMITIVES:
                (repeating if many else single)[k] = _SEEN[kind]
            else:
                (complex_repeating if many else complex_single)[k] = None if kind == "Resource" else _ENTRY[kind]
        if t in _RESOURCE_TYPES or t == "Bundle":
            single["resourceType"] = _RESOURCE_TYPE_SEEN


def _ready() -> None:
    if not _ENTRY:
        _build()


_DONE: dict[int, _Entry] = {}


def _fast(obj: dict[str, Any], entry: _Entry) -> bool:
    """True when every element is valid; no messages (``_explain`` says why on False)."""
    single, repeating, complex_single, complex_repeating, required, bits, must, _ = entry
    if bits is not None and not _choices_ok(obj, bits, must):
        return False
    for key, v in obj.items():
        seen = single.get(key)
        if seen is not None:
            if v in seen:
                continue
            if v is None or not _CHECK_OF[id(seen)](v):
                return False
            if type(v) is str:  # only strings are remembered: True == 1 must never pass as an integer
                seen.add(v)
            continue
        if key in complex_single:
            if type(v) is not dict or not v:
                return False
            sub = complex_single[key] or _contained(v)
            if sub[7]:
                if _DONE.get(id(v)) is not sub:
                    if not _fast(v, sub):
                        return False
                    _DONE[id(v)] = sub
            elif not _fast(v, sub):
                return False
            continue
        if type(v) is not list or not v:
            return False
        if key in complex_repeating:
            sub = complex_repeating[key]
            for item in v:
                if type(item) is not dict or not item:
                    return False
                item_entry = sub or _contained(item)
                if item_entry[7]:
                    if _DONE.get(id(item)) is not item_entry:
                        if not _fast(item, item_entry):
                            return False
                        _DONE[id(item)] = item_entry
                elif not _fast(item, item_entry):
                    return False
            continue
        seen = repeating.get(key)
        if seen is None:
            return False
        for item in v:
            if item not in seen:
                if item is None or not _CHECK_OF[id(seen)](item):
                    return False
                if type(item) is str:
                    seen.add(item)
    if required:
        for name in required:
            if name not in obj:
                return False
    return True


def _choices_ok(obj: dict[str, Any], bits: dict[str, int], must: int) -> bool:
    chosen = 0
    for key in obj:
        bit = bits.get(key)
        if bit is not None:
            if chosen & bit:
                return False  # two elements of one choice group (value[x])
            chosen |= bit
    return not (must & ~chosen)


def _contained(res: dict[str, Any]) -> _Entry:
    rtype = res.get("resourceType")
    if rtype not in _RESOURCE_TYPES:
        raise TypeError("not a resource type we emit")  # caught by _valid: _explain reports it
    return _ENTRY[rtype]


def _valid(obj: Any, tname: str) -> bool:
    try:
        return type(obj) is dict and bool(obj) and _fast(obj, _ENTRY[tname])
    except TypeError:  # an unhashable value where a primitive belongs, or a resource type we do not emit
        return False


def _explain(obj: Any, tname: str, path: str, out: list[str]) -> None:
    """The slow walk, run only when the fast one failed: one message per problem, with its path."""
    if tname == "Resource":
        tname = obj.get("resourceType") if type(obj) is dict else None
        if tname not in _RESOURCE_TYPES:
            out.append(f"{path}: not a resource type we emit")
            return
        path = tname  # messages name the resource ("Observation.valueQuantity.value: ..."), not the entry
    if type(obj) is not dict or not obj:
        out.append(f"{path}: not a non-empty {tname} object")
        return
    spec = ELEMENTS[tname]
    for key, v in obj.items():
        if key == "resourceType" and (tname in _RESOURCE_TYPES or tname == "Bundle"):
            continue
        if key not in spec:
            out.append(f"{path}.{key}: unknown element")
            continue
        kind, many = spec[key]
        items = v if many else [v]
        if many and (type(v) is not list or not v):
            out.append(f"{path}.{key}: not a non-empty array")
            continue
        for item in items:
            if kind in PRIMITIVES:
                if item is None or not PRIMITIVES[kind](item):
                    out.append(f"{path}.{key}: not a FHIR {kind}")
            else:
                _explain(item, kind, f"{path}.{key}", out)
    for name in _MODEL_REQUIRED.get(tname, ()):
        if name not in obj:
            out.append(f"{path}.{name}: required")
    for required, names in CHOICES.get(tname, ()):
        present = sum(1 for n in names if n in obj)
        if present > 1 or (required and not present):
            out.append(f"{path}: {'exactly' if required else 'at most'} one of {', '.join(names)}")


_CALLS = [0]


def _bound_caches() -> None:
    _CALLS[0] += 1
    if _CALLS[0] % 64:
        return  # a bundle adds at most a few hundred values: checking every 64 calls keeps the sets bounded
    for kind, seen in _SEEN.items():
        if len(seen) > _SEEN_MAX and kind != "resourceType":
            seen.clear()


def check_resource(res: dict[str, Any]) -> list[str]:
    """Every element of one resource (contained resources too) against the R4B element table."""
    _ready()
    _bound_caches()
    try:
        return _check_resource(res)
    finally:
        _DONE.clear()  # ids are only meaningful while the objects are alive


def _check_resource(res: Any) -> list[str]:
    rtype = res.get("resourceType", "") if type(res) is dict else ""
    if rtype not in REQUIRED:
        return [f"{rtype or 'resource'}: unexpected resource type"]
    problems: list[str] = []
    if "id" not in res:
        problems.append(f"{rtype}.id: required")
    if not _valid(res, rtype):
        _explain(res, rtype, rtype, problems)
    if rtype == "Appointment" and bool(res.get("start")) != bool(res.get("end")):
        problems.append("Appointment: start and end must be given together (app-2)")
    return problems


def check_bundle(bundle: dict[str, Any]) -> list[str]:
    _ready()
    _bound_caches()
    try:
        return _check_bundle(bundle)
    finally:
        _DONE.clear()


def _check_bundle(bundle: dict[str, Any]) -> list[str]:
    # One pass over the entries: the bundle-level rules (resource type, id, duplicates, app-2), the
    # engine's entry shape ({fullUrl, resource, request: {method PUT, url}} with fullUrl = url =
    # "<type>/<id>", checked by comparison) and the walk of each resource. Any other bundle or entry
    # shape, or anything the walk refuses, goes through the full walk (_explain), which says why.
    problems: list[str] = []
    seen = set()
    entries = bundle.get("entry")
    fast_ok = type(entries) is list and bool(entries)
    for entry in entries or ():
        res = entry.get("resource") if type(entry) is dict else None
        if type(res) is not dict:
            fast_ok = False
            continue  # the full walk reports it
        rtype = res.get("resourceType")
        if rtype not in REQUIRED:
            problems.append(f"{rtype or 'resource'}: unexpected resource type")
            fast_ok = False
            continue
        url = f"{rtype}/{res.get('id')}"
        if url in seen:
            problems.append(f"{rtype}: duplicate id in bundle")
        seen.add(url)
        if "id" not in res:
            problems.append(f"{rtype}.id: required")
        if rtype == "Appointment" and bool(res.get("start")) != bool(res.get("end")):
            problems.append("Appointment: start and end must be given together (app-2)")
        if fast_ok:
            request = entry.get("request")
            fast_ok = (len(entry) == 3 and entry.get("fullUrl") == url and is_id(res.get("id"))
                       and type(request) is dict and len(request) == 2 and request.get("method") == "PUT"
                       and request.get("url") == url and _valid(res, rtype))
    if bundle.get("resourceType") != "Bundle":
        problems.append("Bundle.resourceType: not Bundle")
        return problems
    if not (fast_ok and _valid({k: v for k, v in bundle.items() if k != "entry"}, "Bundle")):
        _explain(bundle, "Bundle", "Bundle", problems)
    return problems


def validate_with_models(bundle: dict[str, Any]) -> list[str]:
    """Full validation with the fhir.resources R4B models (heavy import; not for the Lambda hot path)."""
    from fhir.resources.R4B.bundle import Bundle
    from pydantic import ValidationError

    try:
        Bundle.model_validate(bundle)
    except ValidationError as err:
        return [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in err.errors(include_input=False, include_url=False)][:20]
    return []
