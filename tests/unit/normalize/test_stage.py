"""The normalizer stage with in-memory adapters: output envelope contract, quarantine, metrics, no PHI in logs."""

from __future__ import annotations

import io
import json

from ehrbridge.aws.s3 import InMemoryBlobStore
from ehrbridge.aws.sqs import InMemoryPublisher
from ehrbridge.contracts.envelope import Envelope, new_envelope
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.contracts.tenant_store import InMemoryTenantStore
from ehrbridge.normalize.stage import NormalizerStage, reason_class
from ehrbridge.pipeline.stages import Quarantine
from tests.unit.normalize.conftest import EVENTS

ORU = (b"MSH|^~\\&|DEMOLAB|HOSP|EHR|X|20240102030405||ORU^R01^ORU_R01|L77|P|2.5.1\r"
       b"PID|1||SECRETMRN^^^MRN^MR||ZEBRAFAMILY^QUINTESSA||19800101|F\r"
       b"OBR|1|P1|F1|24323-8^CMP^LN|||20240102010000\r"
       b"OBX|1|NM|2345-7^Glucose^LN||98|mg/dL|70-99|N|||F\r")


class Harness:
    def __init__(self, tenant: TenantConfig) -> None:
        self.out = InMemoryPublisher()
        self.qqueue = InMemoryPublisher()
        self.qstore = InMemoryBlobStore("quarantine")
        self.stage = NormalizerStage(InMemoryTenantStore([tenant]).get, self.out, Quarantine(self.qstore, self.qqueue))


def hl7_envelope(raw: bytes, kind: str = "ORU^R01", tenant_id: str = "demo-health") -> Envelope:
    return new_envelope(tenant_id=tenant_id, source="hl7v2", kind=kind, body=raw, natural_key=["src", raw],
                        patient_key="src-demo-lab",
                        attributes={"source_id": "demo-lab", "msh10": "L77", "charset": "ASCII", "version": "2.5.1"})


def test_ok_message_becomes_one_bundle_envelope(tenant: TenantConfig) -> None:
    h = Harness(tenant)
    env = hl7_envelope(ORU)
    result = h.stage(env)
    assert result.ok
    [out] = h.out.sent
    assert out.kind == env.kind and out.body_encoding == "json" and out.patient_key == env.patient_key
    assert out.correlation_id == env.correlation_id and out.tenant_id == env.tenant_id
    bundle = json.loads(out.body or "")
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    assert out.attributes["source_event_time"] == "2024-01-02T03:04:05-05:00"
    assert out.attributes["msh10"] == "L77"
    assert not h.qqueue.sent


def test_patient_key_is_derived_when_the_input_has_none(tenant: TenantConfig) -> None:
    h = Harness(tenant)
    env = hl7_envelope(ORU).model_copy(update={"patient_key": None})
    h.stage(env)
    assert h.out.sent[0].patient_key and h.out.sent[0].patient_key.startswith("pk-")


def test_quarantine_goes_to_store_and_queue_with_reasons(tenant: TenantConfig) -> None:
    h = Harness(tenant)
    h.stage(hl7_envelope(b"MSH|^~\\&|A|B|C|D|20240102||ADT^A29|Q1|P|2.5\rPID|1||M1\r", kind="ADT^A29"))
    assert not h.out.sent
    [notice] = h.qqueue.sent
    record = json.loads(notice.body or "")
    assert record["reasons"] == ["unsupported message type ADT^A29"] and record["stage"] == "normalizer"
    assert any(k.endswith(".reason.json") for k in h.qstore.objects)


def test_unknown_tenant_is_quarantined(tenant: TenantConfig) -> None:
    h = Harness(tenant)
    h.stage(hl7_envelope(ORU, tenant_id="other-tenant"))
    assert json.loads(h.qqueue.sent[0].body or "")["reasons"] == ["tenant is not configured"]


def test_vendor_fhir_envelope(tenant: TenantConfig) -> None:
    h = Harness(tenant)
    body = (EVENTS / "fhir" / "epic-observation-bundle.json").read_text()
    env = new_envelope(tenant_id="demo-health", source="fhir", kind="Bundle", body=body, natural_key=["x"])
    assert h.stage(env).ok
    bundle = json.loads(h.out.sent[0].body or "")
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    obs = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
    assert obs["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert obs["code"]["coding"][0]["code"] == "2345-7"  # "2345 7" repaired


def test_reason_classes_are_low_cardinality() -> None:
    assert reason_class("unsupported message type ADT^A29") == "unsupported message type"
    assert reason_class("unparseable HL7: MSH-10 message control id is empty") == "unparseable HL7"
    assert reason_class("OBX-3: loinc: invalid check digit") == "OBX-3"




def test_no_phi_in_logs(tenant: TenantConfig, log_buffer: io.StringIO) -> None:
    h = Harness(tenant)
    h.stage(hl7_envelope(ORU))
    h.stage(hl7_envelope(ORU.replace(b"ORU^R01^ORU_R01", b"ORU^R99")))
    h.stage(hl7_envelope(ORU.replace(b"2345-7", b"2345-8")))
    logs = log_buffer.getvalue()
    assert '"message":"normalized"' in logs and '"message":"quarantined"' in logs  # the logs are there ...
    assert '"resource_count":5' in logs
    for phi in ("SECRETMRN", "ZEBRAFAMILY", "QUINTESSA", "19800101"):
        assert phi not in logs  # ... without PHI


def test_an_unsplit_batch_gives_one_output_per_message(tenant: TenantConfig) -> None:
    h = Harness(tenant)
    batch = (EVENTS / "hl7" / "adt_a08_batch.hl7").read_bytes()
    result = h.stage(hl7_envelope(batch, kind="ADT^A08"))
    assert result.ok and len(h.out.sent) == 2
    assert len({e.message_id for e in h.out.sent}) == 2
    assert {json.loads(e.body or "")["entry"][0]["resource"]["identifier"][0]["value"] for e in h.out.sent} == {
        "DEMO100234", "DEMO100235"}
