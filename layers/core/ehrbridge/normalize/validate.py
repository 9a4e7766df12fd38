"""Fast structural checks on our own bundles (the hot path), and full model validation (tests, CLI).

The hot path cannot afford the ``fhir.resources`` models (importing them alone breaks the
normalizer's import budget, and validating a bundle costs milliseconds). The fast check covers
what our maps could get wrong (required elements, id/reference/date formats); the test-suite
validates every bundle produced from the corpus against the R4B models, so the fast path is
held to exactly what the models accept. ``validate_with_models`` is what the CLI's
``--strict`` and the tests use.
"""

from __future__ import annotations

import re
from typing import Any

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_DATETIME = re.compile(r"^\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01])(T([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)"
                       r"(\.\d{1,9})?(Z|[+-]((0\d|1[0-3]):[0-5]\d|14:00)))?)?)?$")
_INSTANT = re.compile(r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)"
                      r"(\.\d{1,9})?(Z|[+-]((0\d|1[0-3]):[0-5]\d|14:00))$")
_DATE = re.compile(r"^\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?)?$")

REQUIRED: dict[str, tuple[str, ...]] = {
    "Observation": ("status", "code"), "DiagnosticReport": ("status", "code"),
    "ServiceRequest": ("status", "intent", "subject"), "Immunization": ("status", "vaccineCode", "patient"),
    "MedicationRequest": ("status", "intent", "subject"), "Appointment": ("status", "participant"),
    "DocumentReference": ("status", "content"), "Encounter": ("status", "class"),
    "AllergyIntolerance": ("patient",), "Condition": ("subject",), "Procedure": ("status", "subject"),
    "Provenance": ("target", "recorded", "agent"), "Specimen": (), "Patient": (),
}
_DATETIME_FIELDS = ("effectiveDateTime", "occurrenceDateTime", "authoredOn", "recordedDate", "onsetDateTime",
                    "performedDateTime", "deceasedDateTime", "valueDateTime", "start", "end", "receivedTime")
_INSTANT_FIELDS = ("issued", "recorded", "date", "timestamp")


def check_resource(res: dict[str, Any]) -> list[str]:
    rtype = res.get("resourceType", "")
    problems = []
    if rtype not in REQUIRED:
        return [f"{rtype or 'resource'}: unexpected resource type"]
    if not _ID.match(str(res.get("id", ""))):
        problems.append(f"{rtype}.id: not a FHIR id")
    for name in REQUIRED[rtype]:
        if res.get(name) in (None, "", [], {}):
            problems.append(f"{rtype}.{name}: required")
    for name in _DATETIME_FIELDS:
        v = res.get(name)
        if v is not None and not _DATETIME.match(v):
            problems.append(f"{rtype}.{name}: not a FHIR dateTime")
    for name in _INSTANT_FIELDS:
        v = res.get(name)
        if v is not None and not _INSTANT.match(v):
            problems.append(f"{rtype}.{name}: not a FHIR instant")
    birth = res.get("birthDate")
    if birth is not None and not _DATE.match(birth):
        problems.append("Patient.birthDate: not a FHIR date")
    if rtype == "Appointment" and bool(res.get("start")) != bool(res.get("end")):
        problems.append("Appointment: start and end must be given together (app-2)")
    return problems


def check_bundle(bundle: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    seen = set()
    for entry in bundle.get("entry", []):
        res = entry["resource"]
        url = f"{res.get('resourceType')}/{res.get('id')}"
        if url in seen:
            problems.append(f"{url.split('/')[0]}: duplicate id in bundle")
        seen.add(url)
        problems.extend(check_resource(res))
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
