"""Issue 16: strangers who share a birth date (sex, middle initial, city) but no name are two people."""

from __future__ import annotations

from typing import Any

import pytest

from ehrbridge.identity.model import NO_NAME_GATE, default_model
from ehrbridge.identity.normalize import person_from_patient
from ehrbridge.identity.resolver import Resolver
from ehrbridge.identity.store import InMemoryMpiStore


def _patient(pid: str, system: str, family: str, given: list[str], gender: str, line: str,
             city: str | None, ssn: str | None = None) -> dict[str, Any]:
    pat: dict[str, Any] = {"resourceType": "Patient", "id": pid,
                           "identifier": [{"system": system, "value": pid.upper()}],
                           "name": [{"family": family, "given": given}], "gender": gender,
                           "birthDate": "1980-01-15",
                           "address": [{"line": [line], **({"city": city} if city else {}), "state": "WA"}]}
    if ssn:
        pat["identifier"].append({"system": "http://hl7.org/fhir/sid/us-ssn", "value": ssn})
    return pat


PAIRS = {
    # The pair, as a new user tried it: same DOB, sex, middle initial and city; both names differ.
    "same city": (_patient("p3", "urn:h:a", "Lee", ["Maria", "K"], "female", "5 oak st", "Seattle"),
                  _patient("p4", "urn:h:b", "Kowalski", ["Dana", "K"], "female", "900 pine ave", "Seattle")),
    # Without the city (state only, another street): a male pair with different first and last names.
    "state only": (_patient("m1", "urn:h:a", "Nguyen", ["Thomas", "J"], "male", "12 birch ln", None),
                   _patient("m2", "urn:h:b", "Okafor", ["Daniel", "J"], "male", "48 elm st", None)),
}


@pytest.mark.parametrize("case", sorted(PAIRS))
def test_pair_sharing_only_a_birth_date_is_two_enterprise_patients(case: str) -> None:
    first, second = PAIRS[case]
    resolver = Resolver(InMemoryMpiStore(), default_model())
    a = resolver.resolve("t", first)
    b = resolver.resolve("t", second)
    assert (a.decision, b.decision) == ("new", "new")
    assert a.enterprise_id != b.enterprise_id
    assert b.grade == "certainly-not"  # no review item: nothing personal agrees


def test_no_name_gate_holds_at_any_population_size_and_reviews_with_a_personal_identifier() -> None:
    model = default_model()
    first, second = PAIRS["same city"]
    a, b = person_from_patient(first), person_from_patient(second)
    for population in (2, 1_000, 10_000_000):
        policy = model.thresholds.model_copy(update={"population_size": population})
        s = model.score(a, b, policy)
        assert s.gate == NO_NAME_GATE and s.household_only and s.grade(policy) == "certainly-not"
    # The same pair with one SSN on both: review (a person must look), never an automatic link.
    ssn_a = person_from_patient(_patient("p3", "urn:h:a", "Lee", ["Maria", "K"], "female", "5 oak st", "Seattle",
                                         ssn="536-22-1947"))
    ssn_b = person_from_patient(_patient("p4", "urn:h:b", "Kowalski", ["Dana", "K"], "female", "900 pine ave",
                                         "Seattle", ssn="536-22-1947"))
    s = model.score(ssn_a, ssn_b)
    assert s.gate == NO_NAME_GATE and not s.household_only
    assert s.grade(model.thresholds) in ("probable", "possible")
    resolver = Resolver(InMemoryMpiStore(), model)
    resolver.resolve("t", _patient("p3", "urn:h:a", "Lee", ["Maria", "K"], "female", "5 oak st", "Seattle",
                                   ssn="536-22-1947"))
    res = resolver.resolve("t", _patient("p4", "urn:h:b", "Kowalski", ["Dana", "K"], "female", "900 pine ave",
                                         "Seattle", ssn="536-22-1947"))
    assert res.decision == "review" and res.review_id


def test_a_shared_birth_date_weighs_less_in_a_larger_population() -> None:
    model = default_model()
    same = _patient("x1", "urn:h:a", "Lee", ["Maria", "K"], "female", "5 oak st", "Seattle")
    moved = _patient("x2", "urn:h:b", "Lee", ["Maria", "K"], "female", "77 cedar rd", "Tacoma")
    a, b = person_from_patient(same), person_from_patient(moved)
    small = model.score(a, b, model.thresholds.model_copy(update={"population_size": 10_000}))
    large = model.score(a, b, model.thresholds.model_copy(update={"population_size": 10_000_000}))
    assert small.probability > large.probability
    assert small.weight - large.weight == pytest.approx(9.97, abs=0.01)  # log2(1000) bits of prior odds
    # A mover (same name and birth date, another city) still links in a 10k-person MPI.
    assert small.gate is None and small.grade(model.thresholds) == "certain"


@pytest.mark.parametrize(("one", "other", "sex_one", "sex_other"), [
    ("Adrian", "Adriana", "male", "female"), ("Jayden", "Jaden", "male", "male")])
def test_twins_with_alike_names_are_not_merged(one: str, other: str, sex_one: str, sex_other: str) -> None:
    resolver = Resolver(InMemoryMpiStore(), default_model())
    first = _patient("t1", "urn:h:a", "Reyes", [one, "M"], sex_one, "5 oak st", "Seattle")
    second = _patient("t2", "urn:h:b", "Reyes", [other, "M"], sex_other, "5 oak st", "Seattle")
    assert resolver.resolve("t", first).decision == "new"
    res = resolver.resolve("t", second)
    assert res.decision != "link"
