"""A realistic two-hospital population from an independent public generator: pseudopeople (IHME, BSD-3).

pseudopeople simulates a US town (about 10,000 people in households, with births, deaths, moves and
name changes over time) and observes it through noisy records: typos, nicknames, fake names, missing
fields, day/month swaps, a household member's birth date copied in. Its sample data ships inside the
wheel (``pip install -e '.[eval]'``), so nothing is downloaded. We did not write it and did not tune the
model on its rules; the held-out part below was never looked at while building the model.

Hospital A registers people as the 2020 census saw them (one noisy draw); hospital B registers them from
an independent noisy census draw, with the name and mailing address their 2030 tax form shows when they
have one (10 years later: moves, married names). 70 % of people are at both hospitals, 15 % at A only,
15 % at B only. People are split into a development part and a held-out part by a hash of their 2020
household, so no household straddles the two parts.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from datetime import date
from typing import Any

PARTS = ("dev", "heldout")


def _h(value: str, salt: str) -> int:
    return int(hashlib.sha256(f"{salt}|{value}".encode()).hexdigest()[:8], 16)


def _s(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _birth_date(value: Any) -> str | None:
    text = _s(value)
    if len(text) != 10:
        return None
    with contextlib.suppress(ValueError):
        return date(int(text[6:]), int(text[:2]), int(text[3:5])).isoformat()
    return None


def _patient(pid: str, system: str, given: str, middle: str, family: str, sex: str, dob: str | None,
             line: str, city: str, state: str, zipcode: str) -> dict[str, Any]:
    pat: dict[str, Any] = {"resourceType": "Patient", "id": pid, "identifier": [{"system": system, "value": pid}],
                           # A middle initial without a first name is not a first name.
                           "name": [{"family": family, "given": [given, middle] if given and middle else
                                     [given] if given else []}]}
    gender = {"Female": "female", "Male": "male"}.get(sex)
    if gender:
        pat["gender"] = gender
    if dob:
        pat["birthDate"] = dob
    address = {k: v for k, v in (("city", city), ("state", state), ("postalCode", zipcode)) if v}
    if line:
        address["line"] = [line]
    if address:
        pat["address"] = [address]
    return pat


def _line(number: Any, street: Any, unit: Any = None, po_box: Any = None) -> str:
    line = " ".join(x for x in (_s(number) if not isinstance(number, float) else "", _s(street)) if x)
    if _s(unit):
        line += " " + _s(unit)
    if not line and po_box is not None and _s(str(po_box)) not in ("", "nan"):
        line = f"PO BOX {_s(str(po_box))}"
    return line


def pseudopeople_linkage_set(part: str = "heldout", seed: int = 0) -> list[dict[str, Any]]:
    """Patients of hospital A then hospital B for one part; each carries ``truth`` and ``case`` tags."""
    if part not in (*PARTS, "all"):
        raise ValueError(f"part must be one of {PARTS} or 'all'")
    warnings.filterwarnings("ignore")
    import pseudopeople as psp

    census_a = psp.generate_decennial_census(seed=1 + 10 * seed, verbose=False)
    census_b = psp.generate_decennial_census(seed=2 + 10 * seed, verbose=False)
    tax = psp.generate_taxes_w2_and_1099(seed=3 + 10 * seed, year=2030, verbose=False)
    census_a = census_a.drop_duplicates("simulant_id")
    census_b = census_b.drop_duplicates("simulant_id").set_index("simulant_id")
    tax = tax.drop_duplicates("simulant_id").set_index("simulant_id")

    household_of: dict[str, str] = {}
    dob_of: dict[str, str | None] = {}
    people: list[str] = []
    for row in census_a.to_dict("records"):
        sid = str(row["simulant_id"])
        household = str(row["household_id"])
        if part != "all" and PARTS[_h(household, "part") % 2] != part:
            continue
        household_of[sid] = household
        people.append(sid)
        dob_of[sid] = _birth_date(row["date_of_birth"])
    # Twins: two people of one household with the same birth date in both noisy draws.
    by_home_dob: dict[tuple[str, str], list[str]] = {}
    for sid in people:
        other = census_b.loc[sid, "date_of_birth"] if sid in census_b.index else None
        if dob_of[sid] and dob_of[sid] == _birth_date(other):
            by_home_dob.setdefault((household_of[sid], dob_of[sid]), []).append(sid)
    twins = {sid for members in by_home_dob.values() if len(members) > 1 for sid in members}

    hospital_a: list[dict[str, Any]] = []
    hospital_b: list[dict[str, Any]] = []
    rows_a = {str(r["simulant_id"]): r for r in census_a.to_dict("records")}
    for sid in people:
        where = _h(sid, "hospital") % 100
        cases = ["twin"] if sid in twins else []
        if where < 85:
            r = rows_a[sid]
            pid = f"A{len(hospital_a):05d}"
            pat = _patient(pid, "urn:pp:hospital-a", _s(r["first_name"]), _s(r["middle_initial"]),
                           _s(r["last_name"]), _s(r["sex"]), dob_of[sid],
                           _line(r["street_number"], r["street_name"], r["unit_number"]), _s(r["city"]),
                           _s(r["state"]), _s(r["zipcode"]))
            pat["truth"], pat["case"] = sid, list(cases)
            hospital_a.append(pat)
        if where >= 15 and sid in census_b.index:
            r = census_b.loc[sid]
            given, middle, family = _s(r["first_name"]), _s(r["middle_initial"]), _s(r["last_name"])
            line = _line(r["street_number"], r["street_name"], r["unit_number"])
            city, state, zipcode = _s(r["city"]), _s(r["state"]), _s(r["zipcode"])
            b_cases = list(cases)
            if sid in tax.index:
                t = tax.loc[sid]
                # The 2030 tax form: the name and mailing address the person has ten years later.
                if _s(t["last_name"]) and _s(t["last_name"]).upper() != family.upper():
                    b_cases.append("surname changed")
                given, middle = _s(t["first_name"]) or given, _s(t["middle_initial"]) or middle
                family = _s(t["last_name"]) or family
                new_line = _line(t["mailing_address_street_number"], t["mailing_address_street_name"],
                                 t["mailing_address_unit_number"], t["mailing_address_po_box"])
                if new_line and _s(t["mailing_address_street_name"]).upper() != _s(r["street_name"]).upper():
                    b_cases.append("moved")
                line = new_line or line
                city = _s(t["mailing_address_city"]) or city
                state = _s(t["mailing_address_state"]) or state
                zipcode = _s(t["mailing_address_zipcode"]) or zipcode
            if sid not in rows_a or where >= 85:
                b_cases.append("B only")
            pid = f"B{len(hospital_b):05d}"
            pat = _patient(pid, "urn:pp:hospital-b", given, middle, family, _s(r["sex"]),
                           _birth_date(r["date_of_birth"]), line, city, state, zipcode)
            pat["truth"], pat["case"] = sid, b_cases
            hospital_b.append(pat)
    return hospital_a + hospital_b


def people_count(patients: list[dict[str, Any]]) -> int:
    return len({p["truth"] for p in patients})
