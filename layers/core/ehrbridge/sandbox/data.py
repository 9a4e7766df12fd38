"""Synthetic patients and observations for the sandbox EHR. Never real people.

Names are built from invented syllables, identifiers live under a sandbox-only OID arc, addresses
are in a fictional town. Observations use real LOINC codes and UCUM units with plausible value
ranges, so the normalizer and the lake see realistic shapes. Deterministic for a given seed.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.999.1"  # the demo tenant's MRN system (a test OID arc)
_ONSETS = ["Ka", "Lo", "Mi", "Te", "Ra", "Su", "Ve", "No", "Ja", "Pe", "Zo", "Fi", "Da", "Re", "Be"]
_MIDDLES = ["ri", "la", "ven", "mo", "sa", "ne", "li", "tor", "ba", "den", "ro", "mi"]
_ENDS = ["n", "a", "o", "ell", "is", "et", "ar", "y", "ine", "us"]
_FAMILY_ENDS = ["ston", "ridge", "worth", "vale", "more", "brook", "field", "dane", "holt", "wick"]

# (LOINC, display, UCUM unit, low, high, decimals, category)
LABS: tuple[tuple[str, str, str, float, float, int, str], ...] = (
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 180, 0, "laboratory"),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 10.5, 17.5, 1, "laboratory"),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.5, 1.6, 2, "laboratory"),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.3, 5.3, 1, "laboratory"),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 132, 147, 0, "laboratory"),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.8, 9.5, 1, "laboratory"),
    ("8867-4", "Heart rate", "/min", 52, 110, 0, "vital-signs"),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 98, 165, 0, "vital-signs"),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 58, 100, 0, "vital-signs"),
    ("8310-5", "Body temperature", "Cel", 36.1, 38.4, 1, "vital-signs"),
)


def _name(rng: random.Random) -> tuple[str, str]:
    given = rng.choice(_ONSETS) + rng.choice(_MIDDLES) + rng.choice(_ENDS)
    family = rng.choice(_ONSETS) + rng.choice(_MIDDLES) + rng.choice(_FAMILY_ENDS)
    return given, family


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def generate(patients: int = 20, *, seed: int = 7, observations_per_patient: tuple[int, int] = (3, 8),
             now: datetime | None = None) -> dict[str, list[dict[str, Any]]]:
    """Resource type -> resources. lastUpdated values spread over the 30 days before ``now``."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    out: dict[str, list[dict[str, Any]]] = {"Patient": [], "Observation": [], "Encounter": []}
    for index in range(1, patients + 1):
        pid = f"sbx-pat-{index:04d}"
        given, family = _name(rng)
        born = date(1940, 1, 1) + timedelta(days=rng.randrange(0, 365 * 75))
        updated = now - timedelta(days=30) + timedelta(minutes=rng.randrange(0, 30 * 24 * 60))
        out["Patient"].append({
            "resourceType": "Patient", "id": pid,
            "meta": {"versionId": "1", "lastUpdated": _instant(updated)},
            "identifier": [{"use": "usual", "type": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                "system": MRN_SYSTEM, "value": f"SBX{rng.randrange(10**6, 10**7)}"}],
            "active": True,
            "name": [{"use": "official", "family": family, "given": [given]}],
            "gender": rng.choice(["female", "male", "female", "male", "other", "unknown"]),
            "birthDate": born.isoformat(),
            "address": [{"use": "home", "line": [f"{rng.randrange(1, 999)} Synthetic Way"],
                         "city": "Sandboxville", "state": "ZZ", "postalCode": f"{rng.randrange(0, 99999):05d}"}],
        })
        encounter_id = f"sbx-enc-{index:04d}"
        visit = now - timedelta(days=rng.randrange(1, 29), minutes=rng.randrange(0, 1440))
        out["Encounter"].append({
            "resourceType": "Encounter", "id": encounter_id,
            "meta": {"versionId": "1", "lastUpdated": _instant(visit + timedelta(hours=2))},
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB",
                      "display": "ambulatory"},
            "subject": {"reference": f"Patient/{pid}"},
            "period": {"start": _instant(visit), "end": _instant(visit + timedelta(minutes=40))},
        })
        for obs_index in range(rng.randint(*observations_per_patient)):
            loinc, display, unit, low, high, decimals, category = rng.choice(LABS)
            taken = visit + timedelta(minutes=rng.randrange(0, 90))
            value = round(rng.uniform(low, high), decimals)
            out["Observation"].append({
                "resourceType": "Observation", "id": f"sbx-obs-{index:04d}-{obs_index:02d}",
                "meta": {"versionId": "1", "lastUpdated": _instant(taken + timedelta(minutes=rng.randrange(5, 240)))},
                "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                          "code": category}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": loinc, "display": display}],
                         "text": display},
                "subject": {"reference": f"Patient/{pid}"},
                "encounter": {"reference": f"Encounter/{encounter_id}"},
                "effectiveDateTime": _instant(taken),
                "issued": _instant(taken + timedelta(minutes=30)),
                "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
            })
    return out
