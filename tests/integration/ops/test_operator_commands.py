"""Operator commands against the local twin (moto server) with the real handlers: the quarantine as
a work list (list/show/release after a fix), DLQ redrive, archive replay, status on one screen."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ehrbridge.cli.main import app
from ehrbridge.contracts.envelope import new_envelope
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.contracts.tenant_store import DynamoTenantStore
from ehrbridge.local.demo import pipeline_mappings
from ehrbridge.local.runner import PipelineRunner
from ehrbridge.local.twin import local_client

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]
TENANT = "ops-clinic"  # its own id: handler modules cache tenant configs across tests in one process


def _tenant() -> TenantConfig:
    base = TenantConfig.from_yaml(REPO / "events" / "tenants" / "demo-health.yaml")
    return base.model_copy(update={"tenant_id": TENANT})


def _send_hl7(twin: Any, names: list[str]) -> list[str]:
    sqs = local_client("sqs", twin.endpoint)
    ids = []
    for name in names:
        raw = (REPO / "events" / "hl7" / name).read_bytes()
        env = new_envelope(tenant_id=TENANT, source="hl7v2", kind="ADT^A01", body=raw, natural_key=[name],
                           patient_key=f"pk-{name.split('.')[0].replace('_', '-')}",
                           attributes={"source_id": "demo-adt", "msh10": name})
        sqs.send_message(QueueUrl=twin.queues["hl7-inbound"], MessageBody=env.to_json(),
                         MessageGroupId=env.group_id, MessageDeduplicationId=env.message_id)
        ids.append(env.message_id)
    return ids


def _run(twin: Any) -> None:
    assert PipelineRunner(pipeline_mappings(twin)).run_until_drained(timeout_s=60)


def _lake(twin: Any) -> list[str]:
    s3 = local_client("s3", twin.endpoint)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=twin.buckets["lake"], Prefix=f"lake/{TENANT}/")
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def _cli(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.stdout.strip(), result.output
    return json.loads(result.stdout) | {"_exit": result.exit_code}


def test_quarantine_work_list_release_after_fix_then_replay_and_redrive(twin: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("POWERTOOLS_IDEMPOTENCY_DISABLED", raising=False)
    _send_hl7(twin, ["adt_a01_admit.hl7", "oru_r01_chem7.hl7"])
    _run(twin)  # the tenant is not configured yet: the normalizer quarantines both
    listed = _cli("quarantine", "list")
    assert listed["count"] == 2 and _lake(twin) == []
    item = listed["items"][0]
    assert item["tenant_id"] == TENANT and item["stage"] == "normalizer"
    assert item["reasons"] == ["tenant is not configured"] and item["quarantined_at"]
    shown = _cli("quarantine", "show", item["id"][:10])
    assert shown["id"] == item["id"] and "body" not in shown  # the input only with --body
    assert "MSH|" in _cli("quarantine", "show", item["id"], "--body")["body"]

    DynamoTenantStore(twin.tables["state"], ddb=local_client("dynamodb", twin.endpoint)).put(_tenant())  # the fix
    for entry in listed["items"]:
        released = _cli("quarantine", "release", entry["id"])
        assert released["_exit"] == 0 and released["queue"] == "normalize"
    again = _cli("quarantine", "release", item["id"])
    assert again["_exit"] == 1 and "already released" in again["error"]["message"]
    _run(twin)
    delivered = _lake(twin)
    assert len(delivered) >= 2 and _cli("quarantine", "list")["count"] == 0
    assert _cli("quarantine", "list", "--all")["count"] == 2

    # Replay: the archive holds both raw messages; idempotency makes replaying them a no-op.
    now = datetime.now(UTC)
    window = ["--tenant", TENANT, "--from", (now - timedelta(hours=1)).isoformat(),
              "--to", (now + timedelta(minutes=1)).isoformat()]
    assert _cli("replay", *window, "--dry-run")["archived_in_range"] == 2
    replayed = _cli("replay", *window)
    assert replayed["sent"] == 2 and replayed["rebuilt_without_metadata"] == 0
    _run(twin)
    assert _lake(twin) == delivered  # nothing duplicated

    # Redrive: a message that dead-lettered in normalize goes back and is processed.
    raw = (REPO / "events" / "hl7" / "adt_a01_demo.hl7").read_bytes()
    dead = new_envelope(tenant_id=TENANT, source="hl7v2", kind="ADT^A01", body=raw, natural_key=["dlq"],
                        patient_key="pk-dlq", attributes={"source_id": "demo-adt"})
    sqs = local_client("sqs", twin.endpoint)
    sqs.send_message(QueueUrl=twin.dlqs["normalize"], MessageBody=dead.to_json(), MessageGroupId=dead.group_id,
                     MessageDeduplicationId=dead.message_id)
    sqs.send_message(QueueUrl=twin.dlqs["normalize"], MessageBody="{not an envelope", MessageGroupId="x",
                     MessageDeduplicationId="bad-1",
                     MessageAttributes={"reason": {"DataType": "String", "StringValue": "invalid envelope"}})
    dry = _cli("redrive", "normalize", "--dry-run")
    assert dry["in_dlq_before"] == 2 and dry["moved"] == 0 and dry["by_tenant"] == {TENANT: 1}
    moved = _cli("redrive", "normalize")
    assert moved["moved"] == 1 and moved["kept_invalid"] == 1 and moved["in_dlq_after"] == 1
    assert moved["reasons"] == {"invalid envelope": 1}
    _run(twin)
    assert len(_lake(twin)) > len(delivered)

    status = _cli("status")
    queues = {q["name"]: q for q in status["queues"]}
    assert set(queues) == {"hl7-inbound", "normalize", "identity", "quarantine", "poll-jobs"}
    assert queues["normalize"]["dlq_visible"] == 1 and queues["normalize"]["dlq_oldest_age_s"] is not None
    row = next(t for t in status["tenants"] if t["tenant_id"] == TENANT)
    assert row["review_open"] is not None and row["newest_data"] and row["quarantine_open"] == 0
    assert any("normalize DLQ holds 1" in p for p in status["problems"]) and status["ok"] is False
    text = CliRunner().invoke(app, ["status"])
    assert text.exit_code == 0 and "hl7-inbound" in text.stdout and TENANT in text.stdout


def test_operator_commands_fail_clearly_without_resources(monkeypatch: Any) -> None:
    monkeypatch.delenv("EHRBRIDGE_QUEUE_NORMALIZE_DLQ_URL", raising=False)
    out = _cli("redrive", "normalize")
    assert out["_exit"] == 1 and "EHRBRIDGE_QUEUE_NORMALIZE" in out["error"]["message"]
    unknown = _cli("redrive", "nope")
    assert unknown["_exit"] == 1 and "unknown queue" in unknown["error"]["message"]
    bad = _cli("replay", "--tenant", "t", "--from", "yesterday", "--to", "2026-01-01")
    assert bad["_exit"] == 1 and "ISO 8601" in bad["error"]["message"]


def test_a_message_that_fails_back_into_the_dlq_is_redriven_again_within_the_dedup_window(twin: Any) -> None:
    """SQS FIFO drops a send whose deduplication id it saw in the last 5 minutes: a redrive that reused
    the message's own id would silently lose a message redriven twice in that window. (moto dedupes only
    against messages still queued, so the ids sent are checked too, not only the queue depth.)"""
    from ehrbridge.ops.redrive import redrive

    sqs = local_client("sqs", twin.endpoint)
    dedup_ids: list[str] = []

    class Recording:
        def __getattr__(self, name: str) -> Any:
            return getattr(sqs, name)

        def send_message_batch(self, **kwargs: Any) -> Any:
            dedup_ids.extend(e["MessageDeduplicationId"] for e in kwargs["Entries"])
            return sqs.send_message_batch(**kwargs)

    env = new_envelope(tenant_id=TENANT, source="fhir", kind="Observation", body="{}", natural_key=["twice"],
                       patient_key="pk-twice")
    sqs.send_message(QueueUrl=twin.queues["normalize"], MessageBody=env.to_json(), MessageGroupId=env.group_id,
                     MessageDeduplicationId=env.message_id)  # the original send: its id is now "seen"
    for attempt in range(2):
        first = sqs.receive_message(QueueUrl=twin.queues["normalize"], MaxNumberOfMessages=1)["Messages"][0]
        sqs.delete_message(QueueUrl=twin.queues["normalize"], ReceiptHandle=first["ReceiptHandle"])
        # It failed maxReceiveCount times: SQS moved it to the DLQ (same body, same group).
        sqs.send_message(QueueUrl=twin.dlqs["normalize"], MessageBody=first["Body"], MessageGroupId=env.group_id,
                         MessageDeduplicationId=f"dlq-{attempt}")
        moved = redrive(Recording(), queue="normalize", dlq_url=twin.dlqs["normalize"],
                        source_url=twin.queues["normalize"])
        assert moved.moved == 1 and moved.in_dlq_after == 0
        depth = sqs.get_queue_attributes(QueueUrl=twin.queues["normalize"],
                                         AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
        assert depth["ApproximateNumberOfMessages"] == "1", f"redrive {attempt + 1} was swallowed"
    assert len(set(dedup_ids)) == 2 and env.message_id not in dedup_ids
