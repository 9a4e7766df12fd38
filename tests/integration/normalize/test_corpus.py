"""The whole corpus: every message -> a valid bundle or a specific quarantine; agreement with the references."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ehrbridge.normalize.validate import validate_with_models
from tests.integration.normalize import agreement, fidelity
from tests.integration.normalize.corpus_run import CORPUS, REPO, run_corpus

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def results():  # type: ignore[no-untyped-def]
    return run_corpus()


def test_every_message_is_a_valid_bundle_or_a_specific_quarantine(results) -> None:  # type: ignore[no-untyped-def]
    assert len(results) >= 120
    ok = 0
    for path, index, r in results:
        name = f"{path.parent.name}/{path.name}#{index}"
        if r.ok:
            ok += 1
            assert validate_with_models(r.bundle) == [], name  # the R4B models accept what the fast path built
        else:
            assert r.reasons and all(len(reason) > 10 for reason in r.reasons), name
            assert not any(reason.startswith("mapping failed") for reason in r.reasons), (name, r.reasons)
    assert ok >= 95


def test_no_expected_output_is_lost_to_a_crash(results) -> None:  # type: ignore[no-untyped-def]
    quarantined = {f"{p.parent.name}/{p.name}" for p, i, r in results if not r.ok and i == 0}
    suffix = len(".expected.json")
    with_reference = {f"{p.parent.name}/{p.name[:-suffix]}.hl7" for p in CORPUS.glob("*/*.expected.json")}
    # Only trigger events we deliberately do not map (delete/merge-account/move/id-change/allergy-update), and
    # one ORU whose first OBX carries an ED value with no OBX-3 at all (issue 11: a result with a value is
    # never dropped; with no code and no text it cannot be an Observation, so the message is quarantined).
    assert quarantined & with_reference == {f"fhir-converter/ADT-A{n}-01.hl7" for n in ("29", "41", "45", "47", "60")
                                            } | {"fhir-converter/ORU-R01-01.hl7"}


def test_r4_fixtures_validate_against_the_r4b_models() -> None:
    """R4B models are our stand-in for R4: real R4 resources of the types we emit must pass them."""
    emitted = {"Patient", "Encounter", "Observation", "DiagnosticReport", "ServiceRequest", "Immunization",
               "Appointment", "DocumentReference", "MedicationRequest", "AllergyIntolerance", "Condition",
               "Procedure", "Specimen", "Provenance"}
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    # Elements that are 1..* / 1..1 in R4 itself: a reference resource missing them is invalid R4 too.
    required_in_r4 = {("Provenance", "agent"), ("DocumentReference", "content"), ("Provenance", "target"),
                      ("Observation", "code"), ("Observation", "status")}
    checked = 0
    for path in sorted(CORPUS.glob("fhir-converter/*.expected.json")):
        for entry in json.loads(path.read_text(encoding="utf-8"))["entry"]:
            res = entry["resource"]
            if res["resourceType"] not in emitted:
                continue
            res = {k: v for k, v in res.items() if k != "text"}  # narrative divs carry converter-specific XHTML
            checked += 1
            try:
                get_fhir_model_class(res["resourceType"]).model_validate(res)
            except ValidationError as err:
                for e in err.errors(include_input=False):
                    # The only rejections allowed: R4 cardinality violations in the reference itself.
                    assert e["type"] == "missing" and (res["resourceType"], str(e["loc"][0])) in required_in_r4, \
                        (path.name, res["resourceType"], e["loc"], e["msg"])
    assert checked > 500


def test_agreement_with_the_references_meets_the_target() -> None:
    tally, notes, _ = agreement.measure()
    agree = sum(c["agree"] for c in tally.values())
    total = sum(c["agree"] + c["disagree"] for c in tally.values())
    systematic = sum(1 for f, items in notes.items() for n in items if agreement.classify(f, n))
    assert total > 800
    assert agree / (total - systematic) >= 0.99


def test_no_issue_11_defect_class_on_the_corpus() -> None:
    """Per class (alternate triplets, model validity, OBX-11, units, check digits, silent date loss, IG
    rows): before the issue-11 work 1/0/3/2/0/5/219, now none (``python -m ...fidelity``)."""
    counts, details, ok = fidelity.measure()
    assert ok >= 95
    assert {n: counts[n] for n in fidelity.CLASSES} == dict.fromkeys(fidelity.CLASSES, 0), details


def _digest_under(tz: str) -> str:
    code = (f"import hashlib, json, sys; sys.path.insert(0, {str(REPO)!r})\n"
            "from tests.integration.normalize.corpus_run import run_corpus\n"
            "h = hashlib.sha256()\n"
            "for p, i, r in run_corpus():\n"
            "    h.update(json.dumps([p.name, i, r.status, r.bundle, r.reasons], sort_keys=True).encode())\n"
            "print(h.hexdigest())\n")
    env = {**os.environ, "TZ": tz, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                         check=True, cwd=REPO)
    return out.stdout.strip()


def test_output_is_identical_under_utc_and_tokyo() -> None:
    utc, tokyo = _digest_under("UTC"), _digest_under("Asia/Tokyo")
    assert len(utc) == 64 and utc == tokyo  # also: two processes, same bytes (determinism)


def test_quarantine_reasons_and_unmapped_lists_carry_no_patient_data(results) -> None:  # type: ignore[no-untyped-def]
    from ehrbridge.hl7.message import ParseError, parse, split_messages

    checked = 0
    by_file: dict[tuple[str, int], list[str]] = {}
    for path, index, r in results:
        by_file[(str(path), index)] = [*r.reasons, *r.unmapped, *(i.get("detail", "") for i in r.issues)]
    for (path, index), texts in by_file.items():
        try:
            msg = parse(split_messages(Path(path).read_bytes())[index])
        except ParseError:
            continue
        pid = msg.first("PID")
        if pid is None:
            continue
        phi = {v for v in (pid.value(3), pid.value(5), pid.value(5, 2), pid.value(7), pid.value(11)) if len(v) > 3}
        blob = " ".join(texts)
        assert not [v for v in phi if v in blob], path
        checked += 1
    assert checked > 90
