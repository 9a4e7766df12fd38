"""A canary patient whose name, DOB, address, MRN, SSN and phone must never appear in log output."""

from __future__ import annotations

import io
import json

import pytest
from pydantic import BaseModel, ConfigDict

from ehrbridge.observability import emit_metric, logger
from ehrbridge.observability.phi import scrub

CANARY = {
    "family": "ZZCANARYFAMILY", "given": "ZZCANARYGIVEN", "dob": "19631127", "dob_iso": "1963-11-27",
    "street": "742 ZZCANARY TERRACE", "mrn": "ZZMRN4417", "ssn": "078-05-1120", "phone": "(555) 867-5309",
    "email": "zz.canary@example.org",
}
CANARY_PID = (f"PID|1||{CANARY['mrn']}^^^HOSP^MR||{CANARY['family']}^{CANARY['given']}||{CANARY['dob']}|F|||"
              f"{CANARY['street']}^^SPRINGFIELD^IL^62701||{CANARY['phone']}|||||{CANARY['ssn']}")




def _assert_clean(text: str) -> None:
    for label, value in CANARY.items():
        assert value not in text, f"{label} leaked into logs"
        if label in ("family", "given"):
            assert value.lower() not in text.lower()


def test_canary_patient_never_reaches_the_logs(log_buffer: io.StringIO) -> None:
    logger.info(f"received segment {CANARY_PID}")
    logger.info("bundle", extra={"tenant_id": "demo-health", "patient_name": CANARY["family"],
                                 "reason": f"bad birthDate {CANARY['dob_iso']}"})
    logger.warning({"message": "dict log", "tenant_id": "t", "birthDate": CANARY["dob_iso"]})
    logger.info('fhir fragment {"family": "%s", "birthDate": "%s"}', CANARY["family"], CANARY["dob_iso"])
    logger.info(f"contact {CANARY['email']} {CANARY['phone']} ssn {CANARY['ssn']}")
    try:
        raise ValueError(f"cannot map PID: {CANARY_PID}")
    except ValueError:
        logger.exception("mapping failed")
    text = log_buffer.getvalue()
    _assert_clean(text)
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 6
    assert lines[1]["tenant_id"] == "demo-health" and lines[1]["patient_name"] == "[redacted]"


def test_pydantic_errors_are_logged_without_input_values(log_buffer: io.StringIO) -> None:
    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")
        age: int

    try:
        Strict.model_validate({"age": CANARY["family"]})
    except Exception:
        logger.exception("validation failed")
    _assert_clean(log_buffer.getvalue())
    assert "validation failed" in log_buffer.getvalue()


def test_metrics_refuse_high_cardinality_dimensions() -> None:
    with pytest.raises(ValueError):
        emit_metric("X", tenant="t", mrn=CANARY["mrn"])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        emit_metric("X", tenant="t", resource_type="Patient", endpoint="/Patient")


def test_scrub_keeps_ids_and_codes() -> None:
    text = "message_id=ab12cd tenant=demo-health code=2345-7 count=3"
    assert scrub(text) == text
