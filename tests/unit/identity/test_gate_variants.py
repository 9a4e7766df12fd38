"""The first-name "typo" level, what it does to the first-name/DOB gate, and what lets the household guards yield.

Synthetic people only. The FEBRL4 analysis behind these (docs/identity.md): some "first name disagrees"
pairs were keying errors the Jaro-Winkler cut missed; an agreeing SSN must not carry twins or a typo'd,
reused or household-shared identifier into a link.
"""

from __future__ import annotations

import pytest

from ehrbridge.identity import comparisons as cmp
from ehrbridge.identity.model import (
    GENERATION_GATE,
    HOUSEHOLD_GATE,
    NAMESAKE_GATE,
    NO_NAME_GATE,
    TWIN_GATE,
    Thresholds,
    default_model,
)
from ehrbridge.identity.normalize import person_from_patient
from ehrbridge.identity.resolver import Resolver
from ehrbridge.identity.store import InMemoryMpiStore
from tests.unit.identity.helpers import patient

T = "t1"


def given_level(a: str, b: str) -> str:
    lv, _ = cmp.compare(person_from_patient(patient("a", given=a)), person_from_patient(patient("b", given=b)))
    return default_model().level_names(lv)["given"]


@pytest.mark.parametrize(("a", "b"), [("Clain", "Clsin"), ("Rachel", "Racxe"), ("Jessica", "Jesdicai")])
def test_keying_errors_beyond_the_jaro_winkler_cut_are_typos(a: str, b: str) -> None:
    assert given_level(a, b) == "typo"


@pytest.mark.parametrize(("a", "b", "level"), [
    ("Mark", "Mary", "alike"),  # both real first names: two names, however close
    ("Jayden", "Kayden", "alike"),  # rhyming siblings' names
    ("Adrian", "Adriana", "alike"),  # twins' names
    ("Jayden", "Jaden", "alike"),
    ("Lena", "Lexi", "else"),  # two edits in four letters is another name
    ("Kynan", "Matthew", "else"),
])
def test_different_names_are_not_typos(a: str, b: str, level: str) -> None:
    assert given_level(a, b) == level


def test_names_a_keystroke_apart_with_different_sexes_are_two_names() -> None:
    # Siblings CAROL (girl) and CARLOS (boy) at one address: not a typo, so the first-name/DOB gate holds even
    # for a tenant that switched the household guards off.
    m = default_model()
    off = Thresholds(twin_guard=False, generation_guard=False, thin_guard=False)
    carol = person_from_patient(patient("a", given="Carol", birth="2010-08-01", gender="female"))
    carlos = person_from_patient(patient("b", given="Carlos", birth="2024-11-01", gender="male"))
    s = m.score(carol, carlos, off)
    assert m.level_names(s.levels)["given"] == "alike"
    assert s.gate == HOUSEHOLD_GATE and s.grade(off) == "certainly-not"
    # Sex not recorded on one side: both are still real first names (SSA list), so still two names.
    unknown = person_from_patient(patient("b", given="Carlos", birth="2024-11-01", gender=None))
    assert m.level_names(m.score(carol, unknown, off).levels)["given"] == "alike"
    # A misspelling that is no real name is a typo (it agrees).
    assert m.level_names(m.score(carol, person_from_patient(patient("b", given="Caorl")), off).levels)["given"] \
        in ("typo", "jw92", "phonetic")


def test_a_typo_in_the_first_name_is_not_a_first_name_disagreement() -> None:
    m = default_model()
    a = person_from_patient(patient("a", given="Clain", birth="1920-12-03", ssn="536-22-1947"))
    b = person_from_patient(patient("b", given="Clsin", birth="1921-06-28", ssn="536-22-1947"))
    s = m.score(a, b)
    # Not the household gate: the first name agrees (misspelt). The exact SSN with surname and home agreeing
    # lets the namesake guard yield, so the pair links.
    assert s.gate is None and s.grade(m.thresholds) == "certain"
    # Without the SSN the namesake guard holds: a person looks at it.
    a2 = person_from_patient(patient("a", given="Clain", birth="1920-12-03"))
    b2 = person_from_patient(patient("b", given="Clsin", birth="1921-06-28"))
    assert m.score(a2, b2).gate == NAMESAKE_GATE


def test_a_really_different_first_name_keeps_the_gate_absolute_whatever_the_ssn() -> None:
    m = default_model()
    a = person_from_patient(patient("a", given="Kynan", birth="1947-09-22", ssn="536-22-1947"))
    b = person_from_patient(patient("b", given="Matthew", birth="1960-07-31", ssn="536-22-1947"))
    s = m.score(a, b)
    assert s.gate == HOUSEHOLD_GATE and s.grade(m.thresholds) != "certain"


def test_household_members_with_typo_distance_names_never_link() -> None:
    # A daughter and her mother, first names one keying error apart, same home: not the same person.
    store = InMemoryMpiStore()
    resolver = Resolver(store, default_model())
    mother = resolver.resolve(T, patient("a1", given="Marieta", birth="1961-04-09"))
    daughter = resolver.resolve(T, patient("b1", given="Marietta", birth="1990-02-17"))
    assert daughter.enterprise_id != mother.enterprise_id and daughter.decision == "new"
    # Sisters three years apart, names a typo apart: a person decides, the algorithm never links them.
    sister = resolver.resolve(T, patient("b2", given="Marieto", birth="1993-08-30"))
    assert sister.decision != "link" and sister.enterprise_id not in (mother.enterprise_id,
                                                                     daughter.enterprise_id)


def test_twins_with_consecutive_ssns_are_not_linked() -> None:
    # Twins' numbers are often issued together: one digit apart is a sibling, not a typo.
    m = default_model()
    a = person_from_patient(patient("a", given="Olivia", birth="2015-06-01", ssn="536-22-1947"))
    b = person_from_patient(patient("b", given="Sophia", birth="2015-06-01", ssn="536-22-1948"))
    s = m.score(a, b)
    assert s.gate == TWIN_GATE and s.grade(m.thresholds) != "certain"


def test_twins_sharing_a_parents_email_are_not_linked() -> None:
    m = default_model()
    mail = "kim.okonkwo@mail.example.org"
    a = person_from_patient(patient("a", given="Olivia", birth="2015-06-01", email=mail))
    b = person_from_patient(patient("b", given="Sophia", birth="2015-06-01", email=mail))
    s = m.score(a, b)
    assert s.gate == TWIN_GATE and s.grade(m.thresholds) != "certain"
    store = InMemoryMpiStore()
    resolver = Resolver(store, m)
    first = resolver.resolve(T, patient("a1", given="Olivia", birth="2015-06-01", email=mail))
    second = resolver.resolve(T, patient("b1", given="Sophia", birth="2015-06-01", email=mail))
    assert second.decision != "link" and second.enterprise_id != first.enterprise_id


def test_an_email_naming_the_person_lifts_the_twin_guard() -> None:
    # The first name replaced on one registration (keyed from another field), the person's own address on both.
    m = default_model()
    mail = "olivia.okonkwo12@mail.example.org"
    a = person_from_patient(patient("a", given="Olivia", birth="1985-06-01", email=mail))
    b = person_from_patient(patient("b", given="Sophia", birth="1985-06-01", email=mail))
    assert m.score(a, b).gate is None
    assert m.score(a, person_from_patient(patient("b", given="Sophia", birth="1985-06-01"))).gate == TWIN_GATE


def test_exact_ssn_with_surname_or_home_lets_the_twin_guard_yield() -> None:
    # Same DOB, surname, home and SSN, the first name replaced (a preferred name, or a keying slip).
    m = default_model()
    a = person_from_patient(patient("a", given="Lachlan", birth="1960-09-04", ssn="536-22-1947"))
    b = person_from_patient(patient("b", given="Daniella", birth="1960-09-04", ssn="536-22-1947"))
    assert m.score(a, b).gate is None


def test_exact_ssn_alone_does_not_lift_the_thin_guard() -> None:
    # No first name, no DOB, another surname, another home: an SSN on its own (reused, mistyped) is not enough.
    m = default_model()
    a = person_from_patient(patient("a", given=None, birth=None, ssn="536-22-1947", family="Okonkwo"))
    b = person_from_patient(patient("b", given=None, birth=None, ssn="536-22-1947", family="Bridgland",
                                    line="7 Elm Road", city="Dayton", postal="45402", phone=None))
    # No name agrees at all: never an automatic link; the agreeing SSN sends it to review, not to "new".
    assert m.score(a, b).gate == NO_NAME_GATE and m.score(a, b).grade(m.thresholds) != "certain"
    assert not m.score(a, b).household_only
    # The same SSN with the surname agreeing too lifts the thin-evidence guard.
    c = person_from_patient(patient("c", given=None, birth=None, ssn="536-22-1947", family="Okonkwo",
                                    line="7 Elm Road", city="Dayton", postal="45402", phone=None))
    assert m.score(a, c).gate is None


def test_one_ssn_edit_does_not_lift_the_generation_guard() -> None:
    m = default_model()
    father = person_from_patient(patient("a", given="Robert", family="King", birth="1958-12-05",
                                         ssn="536-22-1947", gender="male"))
    son = person_from_patient(patient("b", given="Robert", family="King", birth="1989-03-11",
                                      ssn="536-22-1948", gender="male"))
    assert m.score(father, son).gate == GENERATION_GATE
    assert m.score(father, son, Thresholds(generation_guard=False)).gate is None


def test_one_ssn_keying_error_still_lets_the_twin_guard_yield() -> None:
    # A digit mistyped in the middle of the number (far apart numerically) is a typo, not a sibling's number.
    m = default_model()
    a = person_from_patient(patient("a", given="Lachlan", birth="1960-09-04", ssn="536-22-1947"))
    b = person_from_patient(patient("b", given="Daniella", birth="1960-09-04", ssn="536-27-1947"))
    assert m.score(a, b).gate is None


def test_an_email_does_not_lift_the_namesake_guard_an_ssn_does() -> None:
    # A junior's registration often carries his father's e-mail address, which names them both: same name,
    # another birth date and one address is still a namesake pair. An agreeing SSN lifts the guard.
    m = default_model()
    mail = "robert.king58@mail.example.org"
    a = person_from_patient(patient("a", given="Robert", family="King", birth="1958-12-05", email=mail))
    b = person_from_patient(patient("b", given="Robert", family="King", birth="1961-07-21", email=mail))
    assert m.score(a, b).gate == NAMESAKE_GATE
    b_no_mail = person_from_patient(patient("b", given="Robert", family="King", birth="1961-07-21"))
    assert m.score(a, b_no_mail).gate == NAMESAKE_GATE
    a_ssn = person_from_patient(patient("a", given="Robert", family="King", birth="1958-12-05", ssn="536-22-1947"))
    b_ssn = person_from_patient(patient("b", given="Robert", family="King", birth="1961-07-21", ssn="536-22-1947"))
    assert m.score(a_ssn, b_ssn).gate is None
