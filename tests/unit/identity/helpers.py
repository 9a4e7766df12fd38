"""Small FHIR Patient builders for the identity tests (synthetic people only)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

MRN_A = "urn:oid:2.16.840.1.113883.3.999.1"
MRN_B = "urn:oid:2.16.840.1.113883.3.999.2"
SSN = "http://hl7.org/fhir/sid/us-ssn"


def patient(pid: str, given: str | list[str] | None = "Margaret", family: str | None = "Okonkwo",
            birth: str | None = "1961-04-09", *, gender: str | None = "female", line: str | None = "12 Birch Lane",
            city: str | None = "Springfield", state: str | None = "NY", postal: str | None = "12401",
            phone: str | None = "(518) 555-2368", email: str | None = None, ssn: str | None = None,
            mrn_system: str | None = None, mrn: str | None = None, order: int | None = None,
            suffix: str | None = None, **extra: Any) -> dict[str, Any]:
    name: dict[str, Any] = {"use": "official"}
    if family is not None:
        name["family"] = family
    if given is not None:
        name["given"] = [given] if isinstance(given, str) else given
    if suffix:
        name["suffix"] = [suffix]
    # Each test patient is registered in "its own" hospital unless told otherwise: ids starting
    # with "a" in system A, the rest in system B (so two records do not conflict on MRN by accident).
    system = mrn_system or (MRN_A if pid.startswith("a") else MRN_B)
    res: dict[str, Any] = {"resourceType": "Patient", "id": pid, "name": [name],
                           "identifier": [{"system": system, "value": mrn or pid.upper()}]}
    if ssn:
        res["identifier"].append({"system": SSN, "value": ssn})
    if gender:
        res["gender"] = gender
    if birth:
        res["birthDate"] = birth
    if line or city or postal:
        res["address"] = [{"use": "home", "line": [line] if line else [], "city": city, "state": state,
                           "postalCode": postal}]
    telecom = []
    if phone:
        telecom.append({"system": "phone", "value": phone})
    if email:
        telecom.append({"system": "email", "value": email})
    if telecom:
        res["telecom"] = telecom
    if order:
        res["multipleBirthInteger"] = order
    res.update(extra)
    return res


class StepClock:
    """A deterministic clock: every call is one second later."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now
