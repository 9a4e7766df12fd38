"""Terminology checks and repairs: LOINC (format + mod 10), SNOMED (Verhoeff), RxNorm/CVX formats, UCUM."""

from __future__ import annotations

import pytest

from ehrbridge.terminology import conceptmap, ucum
from ehrbridge.terminology.checks import (
    LOINC,
    check_code,
    check_cvx,
    check_loinc,
    check_rxnorm,
    check_snomed,
    mod10,
    verhoeff_valid,
)
from ehrbridge.terminology.systems import system_uri


@pytest.mark.parametrize("sent", ["2345-7", "23457", "002345-7", " 2345-7 ", "2345 - 7", "2345\u20137", "2345 7"])
def test_loinc_variants_repair_to_the_canonical_code(sent: str) -> None:
    result = check_loinc(sent)
    assert result.ok and result.code == "2345-7"
    assert (result.repair == "") == (sent == "2345-7")


@pytest.mark.parametrize("sent,problem", [
    ("2345-8", "invalid check digit"), ("12345-6", "invalid check digit"), ("80383-2", "invalid check digit"),
    ("23458", "no hyphen"), ("ABC-1", "format"), ("2345-", "format"), ("", "format"),
])
def test_loinc_failures_are_never_repaired_into_another_code(sent: str, problem: str) -> None:
    result = check_loinc(sent)
    assert not result.ok and problem in result.problem and result.code == sent


def test_loinc_known_deprecated_codes_with_bad_check_digits_are_accepted() -> None:
    assert mod10("11491") != 6
    assert check_loinc("11491-6").ok


def test_loinc_parts_and_answers() -> None:
    assert check_loinc("LA6576-8").ok and check_loinc("LP14082-9").ok


@pytest.mark.parametrize("alias", ["LN", "LOINC", "http://loinc.org", "2.16.840.1.113883.6.1", "ln"])
def test_loinc_system_aliases(alias: str) -> None:
    assert system_uri(alias, "t")[0] == LOINC


def test_mod10_is_luhn_on_known_codes() -> None:
    for code in ("718-7", "2951-2", "2823-3", "17861-6", "2160-0", "3094-0", "8302-2", "29463-7"):
        body, check = code.split("-")
        assert mod10(body) == int(check), code


def test_snomed_verhoeff() -> None:
    assert verhoeff_valid("27268008") and check_snomed("27268008").ok
    assert not check_snomed("27268009").ok and "Verhoeff" in check_snomed("27268009").problem
    assert check_snomed("422504002").ok  # ischemic stroke
    assert not check_snomed("12345").ok  # too short
    assert "partition" in check_snomed("1234567891234").problem


def test_rxnorm_and_cvx_formats() -> None:
    assert check_rxnorm("7980").ok and not check_rxnorm("79A0").ok and not check_rxnorm("123456789").ok
    assert check_cvx("08").ok and check_cvx("141").ok and not check_cvx("1411").ok and not check_cvx("H1").ok


def test_check_code_dispatches_by_system_and_ignores_unknown_systems() -> None:
    assert check_code(LOINC, "718-7").ok  # type: ignore[union-attr]
    assert check_code("http://example.org/local", "X") is None


@pytest.mark.parametrize("unit", ["mg/dL", "10*3/uL", "mm[Hg]", "{cells}/uL", "meq/L", "/min", "kg/m2", "%",
                                  "g/(24.h)", "mL/min/{1.73_m2}", "[IU]/L", "U/L", "fL", "Cel", "1", "ug/dL",
                                  "mmol/L", "[lb_av]", "[degF]", "10*6/uL", "pg", "s-1"])
def test_ucum_valid(unit: str) -> None:
    assert ucum.is_valid(unit)


@pytest.mark.parametrize("unit", ["MMOLL", "mm(hg)", "#/min", "cells/uL", "mEq/L", "beats/min", "", " mg", "mg//dL",
                                  "{unclosed/L", "kmin", "xyz"])
def test_ucum_invalid(unit: str) -> None:
    assert not ucum.is_valid(unit)


def test_ucum_aliases_repair_only_unambiguous_spellings() -> None:
    assert ucum.repair("mEq/L") == ("meq/L", "ucum alias 'mEq/L'->'meq/L'")
    assert ucum.repair("cells/uL")[0] == "{cells}/uL"
    assert ucum.repair("MMOLL") == (None, "")


def test_tenant_code_maps_become_concept_maps_and_apply() -> None:
    maps = {"DEMOLAB": {"GLU": "2345-7"}}
    cm = conceptmap.concept_maps("demo", maps)
    assert cm[0]["resourceType"] == "ConceptMap"
    assert cm[0]["group"][0]["element"][0]["target"][0]["code"] == "2345-7"
    assert conceptmap.lookup("demo", maps, "demolab", "GLU") == "2345-7"
    assert conceptmap.lookup("demo", maps, "OTHER", "GLU") is None
