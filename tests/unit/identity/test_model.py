"""Comparison levels, term frequencies, the household/twin gates, grades and the model file."""

from __future__ import annotations

import json

import pytest

from ehrbridge.identity import comparisons as cmp
from ehrbridge.identity.model import (
    GENERATION_GATE,
    HOUSEHOLD_GATE,
    TWIN_GATE,
    Model,
    ModelError,
    Thresholds,
    default_model,
)
from ehrbridge.identity.nicknames import are_nicknames, source_available
from ehrbridge.identity.normalize import person_from_patient
from tests.unit.identity.helpers import MRN_A, patient


def levels(a: dict, b: dict) -> dict[str, str]:
    lv, _ = cmp.compare(person_from_patient(a), person_from_patient(b))
    return default_model().level_names(lv)


def test_nicknames_come_from_the_shipped_list() -> None:
    assert source_available()
    assert are_nicknames("BILL", "WILLIAM") and are_nicknames("PEGGY", "MARGARET")
    assert are_nicknames("BILL", "WILL")  # two nicknames of one formal name
    assert not are_nicknames("ALBERT", "ALFRED")  # formal names sharing a nickname stay distinct
    assert levels(patient("a", given="William"), patient("b", given="Bill"))["given"] == "nickname"


@pytest.mark.parametrize(("b_birth", "level"), [("1961-04-09", "exact"), ("1961-09-04", "swap_day_month"),
                                                ("1961-04-08", "one_edit"), ("1961-11-23", "same_year"),
                                                ("1975-02-17", "else")])
def test_birth_date_levels(b_birth: str, level: str) -> None:
    assert levels(patient("a"), patient("b", birth=b_birth))["dob"] == level


def test_missing_values_carry_no_weight() -> None:
    lv = levels(patient("a", phone=None), patient("b", birth=None))
    assert "phone" not in lv and "dob" not in lv


def test_swapped_given_and_family_are_compared_swapped() -> None:
    a, b = person_from_patient(patient("a")), person_from_patient(patient("b", given="Okonkwo", family="Margaret"))
    lv, swapped = cmp.compare(a, b)
    assert swapped and lv[cmp.INDEX["given"]] == 0 and lv[cmp.INDEX["family"]] == 0


def test_identifiers_compare_only_within_one_system() -> None:
    assert "identifier" not in levels(patient("a", mrn_system="urn:x", mrn="1"), patient("b", mrn_system="urn:y",
                                                                                         mrn="1"))
    assert levels(patient("a", mrn="1"), patient("b", mrn_system=MRN_A, mrn="2"))["identifier"] == "conflict"
    assert levels(patient("a", mrn="1"), patient("b", mrn_system=MRN_A, mrn="1"))["identifier"] == "agree"


def test_term_frequency_makes_a_common_surname_weigh_less_than_a_rare_one() -> None:
    m = default_model()
    common = m.score(person_from_patient(patient("a", family="Smith", phone=None, line=None)),
                     person_from_patient(patient("b", family="Smith", phone=None, line=None)))
    rare = m.score(person_from_patient(patient("a", family="Okonkwo", phone=None, line=None)),
                   person_from_patient(patient("b", family="Okonkwo", phone=None, line=None)))
    assert "SMITH" in m.tf["family"]
    assert rare.weight > common.weight


def test_same_person_scores_certain_and_explains_itself() -> None:
    m = default_model()
    a = person_from_patient(patient("a", ssn="536-22-1947"))
    b = person_from_patient(patient("b", given="Peggy", birth="1961-09-04", ssn="536-22-1947"))
    s = m.score(a, b)
    assert s.gate is None and s.grade(m.thresholds) == "certain"
    weights = m.explain(a, b)
    assert weights["ssn"] > 5 and weights["dob"] > 0 and weights["given"] > 0


def test_household_gate_first_name_and_birth_date_both_disagree() -> None:
    m = default_model()
    mother = person_from_patient(patient("a", ssn="536-22-1947"))
    son = person_from_patient(patient("b", given="Daniel", birth="1994-12-02", gender="male"))
    s = m.score(mother, son)
    assert s.gate == HOUSEHOLD_GATE and s.household_only and s.grade(m.thresholds) == "certainly-not"


def test_household_gate_holds_even_when_the_ssn_agrees_unless_the_tenant_lifts_it() -> None:
    m = default_model()
    a = person_from_patient(patient("a", ssn="536-22-1947"))
    b = person_from_patient(patient("b", given="Daniel", birth="1994-12-02", ssn="536-22-1947"))
    strict = m.score(a, b)
    assert strict.gate == HOUSEHOLD_GATE and not strict.household_only
    assert strict.grade(m.thresholds) != "certain"  # never auto-linked: a person reviews it
    lifted = m.score(a, b, Thresholds(identifier_lifts_gate=True))
    assert lifted.gate is None


def test_twins_same_birth_date_different_first_name_are_certainly_not() -> None:
    m = default_model()
    a = person_from_patient(patient("a", given="Olivia", birth="2015-06-01"))
    b = person_from_patient(patient("b", given="Sophia", birth="2015-06-01"))
    s = m.score(a, b)
    assert s.probability > 0.99  # the naive score would link them
    assert s.gate == TWIN_GATE and s.grade(m.thresholds) == "certainly-not"
    assert m.score(a, b, Thresholds(twin_guard=False)).gate is None


def test_different_birth_order_and_suffix_block_links() -> None:
    m = default_model()
    a = person_from_patient(patient("a", given=["Baby", "Girl", "A"], birth="2026-01-03"))
    b = person_from_patient(patient("b", given=["Baby", "Girl", "B"], birth="2026-01-03"))
    assert m.score(a, b).gate == "different birth order"
    sr = person_from_patient(patient("a", given="Robert", family="King", suffix="Sr"))
    jr = person_from_patient(patient("b", given="Robert", family="King", suffix="Jr"))
    assert m.score(sr, jr).gate == "different name suffix"


def test_namesake_a_generation_apart() -> None:
    m = default_model()
    father = person_from_patient(patient("a", given="Robert", family="King", birth="1958-12-05"))
    son = person_from_patient(patient("b", given="Robert", family="King", birth="1989-03-11"))
    assert m.score(father, son).gate == GENERATION_GATE


def test_grades_follow_thresholds() -> None:
    th = Thresholds(link=0.95, review=0.2)
    m = default_model()
    s = m.score(person_from_patient(patient("a")), person_from_patient(patient("b")))
    assert s.grade(th) == "certain"
    s.probability = 0.7
    assert s.grade(th) == "probable"
    s.probability = 0.3
    assert s.grade(th) == "possible"
    s.probability = 0.1
    assert s.grade(th) == "certainly-not"


def test_model_file_round_trips_and_rejects_bad_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = default_model()
    again = Model.from_json(m.to_json())
    assert again.weights == m.weights and again.version == m.version and again.tf == m.tf
    data = json.loads(m.to_json())
    assert data["format"] == "ehrbridge-identity-model" and data["schema_version"] == cmp.SCHEMA_VERSION
    with pytest.raises(ModelError, match="schema"):
        Model.from_json(json.dumps({**data, "schema_version": 99}))
    broken = json.loads(m.to_json())
    broken["comparisons"] = broken["comparisons"][1:]
    with pytest.raises(ModelError, match="lacks comparison"):
        Model.from_json(json.dumps(broken))
    with pytest.raises(ModelError, match="not JSON"):
        Model.from_json("{")
    path = tmp_path / "m.json"
    path.write_text(m.to_json())
    assert Model.load(path).version == m.version


def test_shipped_model_was_trained_label_free_and_is_sane() -> None:
    m = default_model()
    assert "EM" in m.meta["method"] and m.meta["records"] > 1000
    for name, lv in cmp.COMPARISONS:
        w = m.weights[cmp.INDEX[name]]
        if name not in ("suffix", "sex", "identifier"):
            assert w[0] > 0 > w[len(lv) - 1], name  # exact agreement supports, disagreement opposes
