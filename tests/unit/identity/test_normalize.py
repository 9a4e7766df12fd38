"""Placeholders are missing values; names, dates, identifiers normalize the way comparisons expect."""

from __future__ import annotations

import pytest

from ehrbridge.identity.normalize import clean_dob, clean_email, clean_phone, clean_ssn, person_from_patient
from tests.unit.identity.helpers import patient


@pytest.mark.parametrize("ssn", ["999-99-9999", "000-00-0000", "123-45-6789", "111-11-1111", "666-12-3456",
                                 "900-12-3456", "123-00-4567", "123-45-0000", "12345"])
def test_placeholder_and_invalid_ssns_are_missing(ssn: str) -> None:
    assert clean_ssn(ssn) is None


def test_real_looking_ssn_is_kept_and_other_countries_numbers_too() -> None:
    assert clean_ssn("536-22-1947") == "536221947"
    assert clean_ssn("5304218", us=False) == "5304218"
    assert clean_ssn("0000000", us=False) is None


@pytest.mark.parametrize("dob", ["1900-01-01", "1800-01-01", "1111-11-11", "0001-01-01", "2999-01-01",
                                 "1970-02-30", "", None])
def test_placeholder_and_impossible_birth_dates_are_missing(dob: str | None) -> None:
    assert clean_dob(dob) is None


def test_partial_birth_dates_keep_their_precision() -> None:
    assert clean_dob("1961-04-09") == "19610409"
    assert clean_dob("1961-04") == "196104"
    assert clean_dob("1961") == "1961"


@pytest.mark.parametrize("phone", ["000-000-0000", "999-999-9999", "(555) 555-5555", "123-456-7890",
                                   "(212) 555-0123", "12"])
def test_placeholder_phones_are_missing(phone: str) -> None:
    assert clean_phone(phone) is None


def test_phone_keeps_ten_digits() -> None:
    assert clean_phone("+1 (518) 555-2368") == "5185552368"


@pytest.mark.parametrize("email", ["noemail@none.com", "none@x.org", "declined@clinic.org", "a@example.com", "x"])
def test_placeholder_emails_are_missing(email: str) -> None:
    assert clean_email(email) is None


def test_newborn_placeholder_names_are_missing_but_birth_order_is_kept() -> None:
    p = person_from_patient(patient("p1", given=["Baby", "Boy", "B"], family="Okonkwo"))
    assert p.given is None and p.family == "OKONKWO" and p.birth_order == 2
    twin = person_from_patient(patient("p2", given=["Twin", "A"], family="Okonkwo"))
    assert twin.given is None and twin.birth_order == 1


@pytest.mark.parametrize(("given", "family"), [("Test", "Patient"), ("John", "Doe"), ("Unknown", "Unknown"),
                                               ("Jane", "Doe")])
def test_placeholder_people_have_no_name(given: str, family: str) -> None:
    p = person_from_patient(patient("p", given=given, family=family))
    assert p.given is None and p.family is None


def test_suffix_prefix_accents_hyphens() -> None:
    p = person_from_patient(patient("p", given=["Dr", "José", "Luis"], family="García-Márquez", suffix="Jr."))
    assert (p.given, p.middle, p.family, p.suffix) == ("JOSE", "LUIS", "GARCIA MARQUEZ", "JR")


def test_address_first_line_and_identifiers_by_system() -> None:
    p = person_from_patient(patient("p", line="12 Birch Lane", ssn="536-22-1947", mrn="M77"))
    assert (p.house, p.street, p.postcode) == ("12", "BIRCH LN", "12401")
    assert p.ssn == "536221947"
    assert p.identifiers == {"urn:oid:2.16.840.1.113883.3.999.2": "M77"}
    assert person_from_patient(patient("p", line="Unknown", city="Unknown")).street is None


def test_ssn_recognised_by_identifier_type_code() -> None:
    res = patient("p")
    res["identifier"].append({"system": "urn:oid:2.16.840.1.113883.4.1", "value": "536-22-1947",
                              "type": {"coding": [{"code": "SS"}]}})
    assert person_from_patient(res).ssn == "536221947"


def test_old_names_and_addresses_are_not_current() -> None:
    res = patient("p", given="Ann", family="Smith")
    res["name"].insert(0, {"use": "old", "family": "Jones", "given": ["Ann"]})
    assert person_from_patient(res).family == "SMITH"


def test_round_trip_through_storage() -> None:
    p = person_from_patient(patient("p", ssn="536-22-1947", email="m.ok@mail.test.org", order=1))
    from ehrbridge.identity.normalize import Person

    again = Person.from_dict(p.to_dict())
    assert again == p


def test_suffixes_and_birth_orders_written_with_digits_keep_their_meaning() -> None:
    # SMITH 2ND is SMITH with suffix II (not the surname "SMITH ND"); BB1 and BABY BOY 2 are birth orders.
    p = person_from_patient(patient("a1", "John", "Smith 2nd"))
    assert (p.family, p.suffix) == ("SMITH", "II")
    p = person_from_patient(patient("a2", "John", "Smith", suffix="3rd"))
    assert p.suffix == "III"
    assert person_from_patient(patient("a3", "BB1", "Jones")).birth_order == 1
    baby = person_from_patient(patient("a4", ["Baby", "Boy", "2"], "Lee"))
    assert (baby.given, baby.birth_order) == (None, 2)
    # Outside a newborn name a bare number is no name and no order.
    adult = person_from_patient(patient("a5", ["Mary", "2"], "Smith 3"))
    assert (adult.given, adult.middle, adult.family, adult.birth_order) == ("MARY", None, "SMITH", None)
