"""The real normalizer handler on the moto twin: normalize queue -> identity queue / quarantine, idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ehrbridge.contracts.envelope import new_envelope
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.contracts.tenant_store import DynamoTenantStore
from ehrbridge.local.runner import EventSourceMapping, load_handler
from ehrbridge.local.twin import local_client
from tests.support import drain_queue

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]
HANDLER = REPO / "functions" / "normalizer" / "handler.py"


def test_normalize_to_identity_and_quarantine(twin, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("POWERTOOLS_IDEMPOTENCY_DISABLED", raising=False)
    tenant = TenantConfig.from_yaml(REPO / "events" / "tenants" / "demo-health.yaml")
    DynamoTenantStore(twin.tables["state"], ddb=local_client("dynamodb", twin.endpoint)).put(tenant)
    sqs = local_client("sqs", twin.endpoint)
    envelopes = []
    for name in ("oru_r01_chem7.hl7", "adt_a01_no_patient_id.hl7"):
        raw = (REPO / "events" / "hl7" / name).read_bytes()
        envelopes.append(new_envelope(tenant_id="demo-health", source="hl7v2", kind="X^Y", body=raw,
                                      natural_key=[name], patient_key="src-demo-lab",
                                      attributes={"source_id": "demo-lab", "msh10": name}))
    # The first one twice under different SQS dedup ids: only the stage's idempotency (message_id) can catch it.
    for i, env in enumerate(envelopes + envelopes[:1]):
        sqs.send_message(QueueUrl=twin.queues["normalize"], MessageBody=env.to_json(),
                         MessageGroupId=env.group_id, MessageDeduplicationId=f"{env.message_id}-{i}")
    esm = EventSourceMapping(sqs, queue_url=twin.queues["normalize"], queue_arn=twin.queue_arns["normalize"],
                             handler=load_handler(HANDLER), function_name="normalizer")
    for _ in range(10):
        if not esm.poll_once():
            break
    assert esm.stats.failed == 0
    out = drain_queue(twin, "identity")
    assert len(out) == 1  # idempotent: the redelivered message produced nothing new
    bundle = json.loads(out[0]["body"])
    assert out[0]["body_encoding"] == "json" and out[0]["patient_key"] == "src-demo-lab"
    assert bundle["resourceType"] == "Bundle" and len(bundle["entry"]) == 15
    quarantined = drain_queue(twin, "quarantine")
    assert len(quarantined) == 1 and "PID-3" in json.loads(quarantined[0]["body"])["reasons"][0]
