"""The real identity_matcher handler on the moto twin: identity queue -> MPI, S3 lake, EventBridge."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ehrbridge.contracts.envelope import new_envelope
from ehrbridge.local.runner import EventSourceMapping, load_handler
from ehrbridge.local.twin import local_client
from tests.unit.identity.helpers import patient

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]
HANDLER = REPO / "functions" / "identity_matcher" / "handler.py"
T = "demo-health"


def bundle(*resources: dict[str, Any]) -> str:
    return json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r,
         "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources]})


def send(sqs: Any, twin: Any, body: str, kind: str, key: str, dedup_suffix: str = "") -> Any:
    env = new_envelope(tenant_id=T, source="hl7v2", kind=kind, body=body, natural_key=[key],
                       patient_key=f"pk-{key}", received_at=datetime(2026, 3, 1, tzinfo=UTC))
    env = env.model_copy(update={"body_encoding": "json"})
    sqs.send_message(QueueUrl=twin.queues["identity"], MessageBody=env.to_json(), MessageGroupId=env.group_id,
                     MessageDeduplicationId=env.message_id + dedup_suffix)
    return env


def drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _ in range(20):
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        if not got:
            break
        out.extend(json.loads(m["Body"]) for m in got)
        sqs.delete_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                                                        for i, m in enumerate(got)])
    return out


def test_identity_matcher_end_to_end(twin, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("POWERTOOLS_IDEMPOTENCY_DISABLED", raising=False)
    sqs = local_client("sqs", twin.endpoint)
    events = local_client("events", twin.endpoint)
    tap = sqs.create_queue(QueueName="identity-events-tap")["QueueUrl"]
    tap_arn = sqs.get_queue_attributes(QueueUrl=tap, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="identity-tap", EventPattern=json.dumps({"source": ["ehrbridge.identity"]}))
    events.put_targets(Rule="identity-tap", Targets=[{"Id": "tap", "Arn": tap_arn}])

    obs = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
           "subject": {"reference": "Patient/b1"}}
    first = send(sqs, twin, bundle(patient("a1", ssn="536-22-1947")), "ADT^A04", "m1")
    send(sqs, twin, bundle(patient("b1", given="Peggy", ssn="536-22-1947"), obs), "ORU^R01", "m2")
    send(sqs, twin, json.dumps({"resourceType": "Patient", "id": "x"}), "Patient", "m3")  # not a Bundle
    send(sqs, twin, first.body or "", "ADT^A04", "m1", dedup_suffix="-again")  # redelivery: same message_id
    esm = EventSourceMapping(sqs, queue_url=twin.queues["identity"], queue_arn=twin.queue_arns["identity"],
                             handler=load_handler(HANDLER), function_name="identity_matcher")
    for _ in range(10):
        if not esm.poll_once():
            break
    assert esm.stats.failed == 0

    s3 = local_client("s3", twin.endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=twin.buckets["lake"]).get("Contents", [])]
    obs_key = next(k for k in keys if k.startswith(f"lake/{T}/Observation/"))
    written = json.loads(s3.get_object(Bucket=twin.buckets["lake"], Key=obs_key)["Body"].read())
    assert written["subject"]["reference"].startswith("Patient/ep-")

    delivered = drain(sqs, tap)
    assert {e["source"] for e in delivered} == {"ehrbridge.identity"}
    assert {e["detail-type"] for e in delivered} == {"PatientLinkChanged"}
    got = [e["detail"] for e in delivered]
    assert sorted(e["change"] for e in got) == ["created", "linked"]  # the redelivery added nothing
    linked = next(e for e in got if e["change"] == "linked")
    assert "Patient/" + linked["enterprise_id"] == written["subject"]["reference"]
    quarantined = drain(sqs, twin.queues["quarantine"])
    assert len(quarantined) == 1 and "not a FHIR Bundle" in json.loads(quarantined[0]["body"])["reasons"][0]


def test_one_failing_record_fails_only_itself(twin, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Partial batch response: a claim-checked body that cannot be read fails its own message only."""
    monkeypatch.delenv("POWERTOOLS_IDEMPOTENCY_DISABLED", raising=False)
    from ehrbridge.contracts.envelope import S3Ref

    sqs = local_client("sqs", twin.endpoint)
    good = new_envelope(tenant_id=T, source="hl7v2", kind="ADT^A04", body=bundle(patient("a5")),
                        natural_key=["ok"], patient_key="pk-ok", received_at=datetime(2026, 3, 1, tzinfo=UTC))
    bad = good.model_copy(update={"message_id": "broken-1", "patient_key": "pk-bad", "body": None,
                                  "body_ref": S3Ref(bucket=twin.buckets["archive"], key="missing/object",
                                                    sha256="0" * 64, size=10)})
    for env in (bad, good):
        sqs.send_message(QueueUrl=twin.queues["identity"], MessageBody=env.to_json(), MessageGroupId=env.group_id,
                         MessageDeduplicationId=env.message_id)
    esm = EventSourceMapping(sqs, queue_url=twin.queues["identity"], queue_arn=twin.queue_arns["identity"],
                             handler=load_handler(HANDLER), function_name="identity_matcher")
    esm.poll_once()
    assert esm.stats.failed == 1 and esm.stats.succeeded == 1 and esm.stats.batch_errors == 0
