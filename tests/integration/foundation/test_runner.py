"""The event-source runner against a real moto server: batches, partial failures, FIFO order, redrive to the DLQ."""

from __future__ import annotations

import json
import time

import pytest

from ehrbridge import resources
from ehrbridge.aws.clients import client
from ehrbridge.contracts.envelope import Envelope, new_envelope
from ehrbridge.local.runner import EventSourceMapping, PipelineRunner
from ehrbridge.pipeline.consumer import Consumer

pytestmark = pytest.mark.integration


def _send(twin, queue: str, env: Envelope) -> None:  # type: ignore[no-untyped-def]
    client("sqs").send_message(QueueUrl=twin.queues[queue], MessageBody=env.to_json(),
                               MessageGroupId=env.group_id, MessageDeduplicationId=env.message_id)


def _env(group: str, label: str) -> Envelope:
    return new_envelope(tenant_id="demo-health", source="fhir", kind=label, body=json.dumps({"label": label}),
                        natural_key=[group, label], patient_key=f"pk-{group}")


def test_poison_message_goes_to_the_dlq_and_its_group_continues_in_order(twin, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("POWERTOOLS_IDEMPOTENCY_DISABLED", "1")
    processed: list[str] = []
    attempts = {"POISON": 0}

    def stage(envelope: Envelope) -> None:
        if envelope.kind == "POISON":
            attempts["POISON"] += 1
            raise RuntimeError("cannot process")
        processed.append(envelope.kind)

    consumer = Consumer("test", stage, consumes="normalize")
    for group, label in [("a", "A1"), ("a", "POISON"), ("a", "A3"), ("z", "Z1"), ("z", "Z2")]:
        _send(twin, "normalize", _env(group, label))
    mapping = EventSourceMapping(client("sqs"), queue_url=twin.queues["normalize"],
                                 queue_arn=twin.queue_arns["normalize"], handler=consumer, function_name="test")
    assert PipelineRunner([mapping]).run_until_drained(timeout_s=60)

    assert processed.index("A1") < processed.index("A3")
    assert processed.index("Z1") < processed.index("Z2")
    assert sorted(processed) == ["A1", "A3", "Z1", "Z2"]
    assert attempts["POISON"] == resources.queue("normalize").max_receive_count
    dlq = client("sqs").receive_message(QueueUrl=twin.dlqs["normalize"], MaxNumberOfMessages=10,
                                        AttributeNames=["All"])["Messages"]
    assert [Envelope.parse_json(m["Body"]).kind for m in dlq] == ["POISON"]
    assert dlq[0]["Attributes"]["MessageGroupId"].endswith("pk-a")
    assert mapping.stats.failed >= resources.queue("normalize").max_receive_count


def test_a_raising_handler_fails_the_whole_batch_and_it_comes_back(twin) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []

    def handler(event: dict, context: object) -> dict:
        calls.append(len(event["Records"]))
        if len(calls) == 1:
            raise RuntimeError("cold start blew up")
        return {"batchItemFailures": []}

    for label in ("B1", "B2"):
        _send(twin, "identity", _env(label, label))
    mapping = EventSourceMapping(client("sqs"), queue_url=twin.queues["identity"],
                                 queue_arn=twin.queue_arns["identity"], handler=handler, function_name="t")
    assert PipelineRunner([mapping]).run_until_drained(timeout_s=30)
    assert sum(calls) == 4 and mapping.stats.batch_errors == 1 and mapping.stats.succeeded == 2


def test_invalid_envelope_goes_to_the_dlq_with_its_reason(twin) -> None:  # type: ignore[no-untyped-def]
    handled: list[str] = []
    consumer = Consumer("test", lambda e: handled.append(e.kind), consumes="normalize")
    sqs = client("sqs")
    sqs.send_message(QueueUrl=twin.queues["normalize"], MessageBody=json.dumps({"tenant_id": "demo-health"}),
                     MessageGroupId="g", MessageDeduplicationId="bad-1")
    _send(twin, "normalize", _env("ok", "GOOD"))
    mapping = EventSourceMapping(sqs, queue_url=twin.queues["normalize"], queue_arn=twin.queue_arns["normalize"],
                                 handler=consumer, function_name="t")
    assert PipelineRunner([mapping]).run_until_drained(timeout_s=30)
    assert handled == ["GOOD"]
    dlq = sqs.receive_message(QueueUrl=twin.dlqs["normalize"], MessageAttributeNames=["All"])["Messages"]
    reason = dlq[0]["MessageAttributes"]["reason"]["StringValue"]
    assert "message_id" in reason and "source" in reason


def test_idempotency_runs_a_redelivered_message_once(twin) -> None:  # type: ignore[no-untyped-def]
    runs: list[str] = []
    consumer = Consumer("dedupe", lambda e: runs.append(e.message_id), consumes="normalize",
                        idempotency_table=twin.tables["idempotency"])
    env = _env("g", "ONCE")
    sqs = client("sqs")
    mapping = EventSourceMapping(sqs, queue_url=twin.queues["normalize"], queue_arn=twin.queue_arns["normalize"],
                                 handler=consumer, function_name="dedupe")
    _send(twin, "normalize", env)
    assert PipelineRunner([mapping]).run_until_drained(timeout_s=30)
    time.sleep(0.01)
    # A second send with a new dedup id (e.g. a DLQ redrive days later) must not run the stage again.
    sqs.send_message(QueueUrl=twin.queues["normalize"], MessageBody=env.to_json(), MessageGroupId=env.group_id,
                     MessageDeduplicationId=env.message_id + "-redrive")
    assert PipelineRunner([mapping]).run_until_drained(timeout_s=30)
    assert runs == [env.message_id] and mapping.stats.succeeded == 2
