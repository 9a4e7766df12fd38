"""Property tests: the fast validator agrees with fhir.resources (R4B) on FHIR primitive values, and every
``ok`` bundle from the corpus and from mutations of it validates with the models, with every populated
field mapped or listed in ``unmapped``.

Short form in ``make test`` (a few hundred examples/mutations); the long form runs the same tests with
more (``EHRBRIDGE_PROPERTY_EXAMPLES=3000 EHRBRIDGE_PROPERTY_MUTATIONS=10000``), seeds fixed so a failure
reproduces.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.hl7.message import ParseError, parse, split_messages
from ehrbridge.hl7.timefmt import TsError, parse_ts
from ehrbridge.normalize import segments, structures
from ehrbridge.normalize.engine import normalize_hl7
from ehrbridge.normalize.validate import check_primitive, validate_with_models
from tests.integration.normalize.fidelity import mutate

EXAMPLES = int(os.environ.get("EHRBRIDGE_PROPERTY_EXAMPLES", "150"))
MUTATIONS = int(os.environ.get("EHRBRIDGE_PROPERTY_MUTATIONS", "300"))


# ---------------------------------------------------------------- primitives vs the models
def _model_accepts(kind: str, value: Any) -> bool:
    """Whether fhir.resources R4B accepts ``value`` in an element of FHIR type ``kind``."""
    from fhir.resources.R4B.attachment import Attachment
    from fhir.resources.R4B.coding import Coding
    from fhir.resources.R4B.contactpoint import ContactPoint
    from fhir.resources.R4B.observation import Observation
    from fhir.resources.R4B.patient import Patient
    from fhir.resources.R4B.quantity import Quantity
    from pydantic import ValidationError

    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    model, data = {
        "string": (Observation, {**obs, "valueString": value}),
        "code": (Coding, {"code": value}),
        "id": (Patient, {"id": value}),
        "uri": (Coding, {"system": value}),
        "date": (Patient, {"birthDate": value}),
        "dateTime": (Observation, {**obs, "valueDateTime": value}),
        "instant": (Observation, {**obs, "issued": value}),
        "time": (Observation, {**obs, "valueTime": value}),
        "decimal": (Quantity, {"value": value}),
        "integer": (Observation, {**obs, "valueInteger": value}),
        "unsignedInt": (Attachment, {"size": value}),
        "positiveInt": (ContactPoint, {"rank": value}),
        "boolean": (Observation, {**obs, "valueBoolean": value}),
        "base64Binary": (Attachment, {"data": value}),
    }[kind]
    try:
        model.model_validate(data)
    except (ValidationError, ValueError, TypeError):
        return False
    return True


_DIGITS = st.sampled_from("0123456789")
_ODD = st.sampled_from(["", " ", "  ", "\t", "\n", "\x0b", "\x0c", "\x1c", "\x85", "\xa0", "\u2003", "\u3000",
                        "\u200b", "a", "Z", "-", ":", ".", "+", "/", "=", "T", "\u0662", "\uff12", "\U0001d7ce"])


def _num(width: int, lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.one_of(st.integers(lo, hi).map(lambda n: str(n).zfill(width)),
                     st.text(_DIGITS, min_size=width, max_size=width))


def _date_like() -> st.SearchStrategy[str]:
    year = st.one_of(st.sampled_from(["0000", "0001", "0999", "1000", "1900", "2000", "2023", "2024", "9999"]),
                     _num(4, 0, 9999), st.sampled_from(["２０２３", "2٠23", "999", "12345"]))
    month = st.one_of(_num(2, 0, 13), st.sampled_from(["1", "１２"]))
    day = st.one_of(_num(2, 0, 32), st.sampled_from(["29", "30", "31"]))
    time = st.tuples(_num(2, 0, 24), _num(2, 0, 60), _num(2, 0, 61),
                     st.one_of(st.just(""), st.text(_DIGITS, min_size=1, max_size=12).map(lambda f: "." + f)))
    offset = st.one_of(st.sampled_from(["Z", "+00:00", "-05:00", "+14:00", "+14:01", "-13:59", "+15:00", "+05:30",
                                        "", "+0500", "z"]),
                       st.tuples(st.sampled_from("+-"), _num(2, 0, 15), _num(2, 0, 60)).map(
                           lambda t: f"{t[0]}{t[1]}:{t[2]}"))

    def build(parts: tuple[str, str, str, tuple[str, str, str, str], str, int]) -> str:
        y, m, d, (hh, mi, ss, frac), off, depth = parts
        out = y
        if depth >= 1:
            out += "-" + m
        if depth >= 2:
            out += "-" + d
        if depth >= 3:
            out += f"T{hh}:{mi}:{ss}{frac}{off}"
        return out

    return st.tuples(year, month, day, time, offset, st.integers(0, 3)).map(build)


def _texty() -> st.SearchStrategy[str]:
    return st.one_of(st.lists(_ODD, max_size=6).map("".join), st.text(max_size=12),
                     st.from_regex(r"[A-Za-z0-9\-.]{60,70}", fullmatch=True))


_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "string": _texty(), "code": _texty(), "id": _texty(), "uri": _texty(),
    "date": st.one_of(_date_like(), _texty()), "dateTime": st.one_of(_date_like(), _texty()),
    "instant": st.one_of(_date_like(), _texty()),
    "time": st.one_of(st.tuples(_num(2, 0, 25), _num(2, 0, 61), _num(2, 0, 61)).map(":".join),
                      _date_like().map(lambda v: v[11:] if len(v) > 11 else v), _texty()),
    "decimal": st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                         st.tuples(st.integers(4200, 4400), st.sampled_from([1, -1])).map(lambda t: t[1] * 10**t[0])),
    "integer": st.one_of(st.integers(-(2**33), 2**33), st.booleans(), st.floats(-10, 10)),
    "unsignedInt": st.one_of(st.integers(-5, 2**32), st.booleans()),
    "positiveInt": st.one_of(st.integers(-5, 2**32), st.booleans()),
    "boolean": st.one_of(st.booleans(), st.integers(0, 1), st.sampled_from(["true", "false"])),
    "base64Binary": st.one_of(st.binary(max_size=12).map(lambda b: __import__("base64").b64encode(b).decode()),
                              _texty()),
}
# Where FHIR (and we) are stricter than the models: values the models take that the fast check refuses.
STRICTER = {
    "id": lambda v: isinstance(v, str) and len(v) > 64,  # FHIR: at most 64 characters
    "uri": lambda v: isinstance(v, str),  # FHIR uri: no whitespace, not empty; the models take any string
    "boolean": lambda v: not isinstance(v, bool),  # JSON booleans only
    "decimal": lambda v: not isinstance(v, (int, float)) or isinstance(v, bool),
    "integer": lambda v: not isinstance(v, int) or isinstance(v, bool),
    "unsignedInt": lambda v: not isinstance(v, int) or isinstance(v, bool),
    "positiveInt": lambda v: not isinstance(v, int) or isinstance(v, bool),
    "base64Binary": lambda v: isinstance(v, str),  # canonical padding required; the models decode leniently
}


@pytest.mark.parametrize("kind", sorted(_VALUES))
def test_fast_primitive_checks_agree_with_the_models(kind: str) -> None:
    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(_VALUES[kind])
    def agree(value: Any) -> None:
        fast, model = check_primitive(kind, value), _model_accepts(kind, value)
        if fast:
            assert model, f"fast check accepts {value!r} as {kind}, the models refuse it"
        elif model:
            assert kind in STRICTER and STRICTER[kind](value), \
                f"the models accept {value!r} as {kind}, the fast check refuses it"

    agree()


@pytest.mark.parametrize("kind,value,ok", [
    ("date", "0000", False), ("dateTime", "0000-01", False), ("dateTime", "2023-02-29", False),
    ("dateTime", "2024-02-29", True), ("dateTime", "2000-02-29", True), ("dateTime", "1900-02-29", False),
    ("dateTime", "２０２３", False), ("dateTime", "999-01-01T12:00:00Z", False),
    ("dateTime", "0999-01-01T12:00:00Z", True), ("instant", "2024-01-02", False), ("code", "a  b", False),
    ("code", "a b", True), ("string", "\x0b", False), ("string", " ", True), ("decimal", float("inf"), False),
])
def test_primitive_examples(kind: str, value: Any, ok: bool) -> None:
    assert check_primitive(kind, value) is ok
    assert _model_accepts(kind, value) is ok


# ---------------------------------------------------------------- corpus and mutations
DTM_FIELDS = {"PID": (7, 29), "PV1": (44, 45), "OBR": (7, 22), "OBX": (14,), "SPM": (18,), "AL1": (6,),
              "DG1": (5,), "PR1": (5,), "RXA": (3,), "TXA": (4,)}


def _check_fields_mapped_or_listed(data: bytes, result: Any) -> None:
    """Every populated field of every segment: read by its role's map, or listed; a valid date/time in a
    mapped TS field reaches the bundle (its date) or is listed."""
    msg = parse(data)
    structure_name, _ = structures.resolve(msg.kind, msg.structure)
    roles = structures.STRUCTURES[structure_name].roles
    text = json.dumps(result.bundle)
    unmapped = result.unmapped

    def listed(name: str) -> bool:
        """The field, or its whole segment with a reason ("PV2(no encounter)"), is listed."""
        segment = name.split("-")[0]
        return any(u == name or u.startswith((name + " ", name + "(", segment + "(")) for u in unmapped)

    for seg in msg.segments:
        role = roles.get(seg.name)
        if role is None or role in ("skip", "skip_rxo", "merge_note"):
            assert listed(seg.name) or (role == "merge_note" and listed("MRG(A06 prior visit)")), seg.name
            continue
        mapped = segments.MAPPED_BY_ROLE.get(role) or segments.MAPPED.get(seg.name)
        if mapped is None:
            continue
        for n in range(1, len(seg.fields)):
            if not seg.fields[n] or seg.fields[n] == '""':
                continue
            field = f"{seg.name}-{n}"
            assert n in mapped or listed(field), f"{field} populated, neither mapped nor listed"
            if n in DTM_FIELDS.get(seg.name, ()) and n in mapped and role not in ("document_content",):
                try:
                    ts = parse_ts(seg.value(n), "UTC")
                except (TsError, ValueError, OverflowError):
                    continue
                assert ts.date in text or listed(field), f"{field} {ts.precision}: valid, not in the bundle, not listed"


@pytest.fixture(scope="module")
def corpus_messages() -> list[bytes]:
    from tests.conftest import CORPUS

    return [m for p in sorted(CORPUS.glob("*/*.hl7")) for m in split_messages(p.read_bytes())]


def test_every_ok_bundle_of_corpus_and_mutations_is_model_valid_and_loses_nothing(
        tenant: TenantConfig, corpus_messages: list[bytes]) -> None:
    rng = random.Random(20261205)
    inputs = [*corpus_messages, *(mutate(rng, rng.choice(corpus_messages)) for _ in range(MUTATIONS))]
    ok = quarantined = 0
    for data in inputs:
        r = normalize_hl7(data, tenant)
        if not r.ok:
            quarantined += 1
            assert r.reasons and not r.reasons[0].startswith("mapping failed"), r.reasons
            continue
        ok += 1
        assert validate_with_models(r.bundle) == [], (data[:200], validate_with_models(r.bundle))
        # The text the stage sends on (engine._to_json: orjson or the standard library) is ASCII and reads back
        # as the bundle that was checked.
        assert r.bundle_json.isascii() and json.loads(r.bundle_json) == r.bundle, data[:200]
        try:
            _check_fields_mapped_or_listed(data, r)
        except ParseError:
            continue
    assert ok > len(inputs) // 3
    print(f"\nproperty: {len(inputs)} inputs ({len(corpus_messages)} corpus + {MUTATIONS} mutations): "
          f"{ok} ok (model-valid, nothing lost), {quarantined} quarantined with a reason")


def test_element_table_is_generated_from_the_installed_models() -> None:
    """normalize/fhir_elements.py is what tools/gen_fhir_elements.py makes from fhir.resources today."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "tools" / "gen_fhir_elements.py"
    spec = importlib.util.spec_from_file_location("gen_fhir_elements", path)
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.OUT.read_text(encoding="utf-8") == gen.render(), "run: python tools/gen_fhir_elements.py"
