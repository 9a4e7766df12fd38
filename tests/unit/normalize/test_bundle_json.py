"""The bundle's JSON text (engine._to_json): orjson for speed, escaped to the standard library's text.

What the stage sends on must stay what it was with ``json.dumps(bundle, separators=(",", ":"))``: ASCII
(non-ASCII as ``\\u`` escapes: one character = one byte for the output-size limit, and the odd-blank scan
reads the escapes), and the same value on reading back."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.normalize import engine
from ehrbridge.normalize.engine import _to_json, normalize_hl7


def stdlib(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def test_ascii_bundles_are_the_standard_librarys_text_byte_for_byte(tenant: TenantConfig, corpus,  # type: ignore[no-untyped-def]
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    checked = 0
    for path in sorted(corpus.rglob("*.hl7"))[:40]:
        result = normalize_hl7(path.read_bytes(), tenant)
        if not result.ok:
            continue
        assert result.bundle is not None
        expected = stdlib(result.bundle)
        if "e-0" not in expected:  # a float's negative exponent is the one allowed difference (tested below)
            assert result.bundle_json == expected, path.name
        assert json.loads(result.bundle_json) == result.bundle
        checked += 1
        with monkeypatch.context() as m:
            m.setattr(engine, "_stdlib_json", None)  # the fallback is not called: orjson wrote it
            assert _to_json(result.bundle) == result.bundle_json
    assert checked >= 10


@pytest.mark.parametrize("text", ["Jos\u00e9 M\u00fcller", "\u6771\u4eac", "emoji \U0001f600", "del \x7f here",
                                  "line\u2028sep", "ctl \x01\x1f \f \x0b"])
def test_text_the_fast_encoder_writes_differently_gets_the_standard_librarys_escapes(
        text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = {"resourceType": "Bundle", "entry": [{"resource": {"name": [{"text": text}]}}]}
    expected = stdlib(bundle)
    monkeypatch.setattr(engine, "_stdlib_json", None)  # escaped after orjson, not by the fallback
    out = _to_json(bundle)
    assert out == expected and out.isascii() and json.loads(out) == bundle


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.text(st.characters(exclude_categories=())), min_size=1, max_size=4))
def test_any_text_is_the_standard_librarys_text(texts: list[str]) -> None:
    """Any Unicode (lone surrogates included: orjson refuses them, the standard library writes them)."""
    bundle = {"resourceType": "Bundle", "entry": [{"resource": {"name": [{"given": texts, "text": texts[0]}]}}]}
    assert _to_json(bundle) == stdlib(bundle)


@pytest.mark.parametrize("number", [10**20, -(10**30), 2**64])
def test_integers_beyond_64_bits_fall_back_to_the_standard_library(number: int) -> None:
    bundle = {"resourceType": "Bundle", "entry": [{"resource": {"valueQuantity": {"value": number}}}]}
    assert _to_json(bundle) == stdlib(bundle)


@pytest.mark.parametrize("number", [1e-07, 2.5e-05, 1e16, 1.5e300, 5e-324, 0.1, -0.0, 19.5, 2**63 - 1, -(2**63)])
def test_numbers_read_back_as_the_same_value(number: float) -> None:
    bundle = {"resourceType": "Bundle", "entry": [{"resource": {"valueQuantity": {"value": number}}}]}
    out = _to_json(bundle)
    assert out.isascii()
    value = json.loads(out)["entry"][0]["resource"]["valueQuantity"]["value"]
    assert value == number and type(value) is type(number)


def test_nesting_past_the_fast_encoders_limit_falls_back() -> None:
    deep: dict[str, Any] = {"v": 1}
    for _ in range(300):
        deep = {"extension": [deep]}
    assert _to_json(deep) == stdlib(deep)
