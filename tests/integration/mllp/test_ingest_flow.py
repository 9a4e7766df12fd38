"""Bridge -> hl7-inbound -> the real hl7_ingest handler (ESM-like delivery) -> normalize, on the moto twin."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from ehrbridge.local.runner import EventSourceMapping, load_handler
from ehrbridge.local.twin import local_client
from ehrbridge.mllp.client import MllpClient
from ehrbridge.mllp.tls import client_context

from .conftest import drain_queue, oru, running, settings_for

pytestmark = pytest.mark.integration
HANDLER = Path(__file__).resolve().parents[3] / "functions" / "hl7_ingest" / "handler.py"


def test_bridge_to_normalize(twin, pki, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("POWERTOOLS_IDEMPOTENCY_DISABLED", raising=False)
    batch = b"BHS|^~\\&|DEMOLAB|LABFAC\r" + oru(2) + oru(3) + b"BTS|2\r"

    async def send() -> list[str]:
        async with running(settings_for(pki), twin) as bridge, MllpClient(
                "127.0.0.1", bridge.port, ssl_context=client_context(pki.ca.cert), server_hostname="localhost") as c:
            return [(await c.send(m)).code for m in (oru(1), batch, oru(1))]  # the last is a resend

    assert asyncio.run(send()) == ["AA", "AA", "AA"]
    sqs = local_client("sqs", twin.endpoint)
    esm = EventSourceMapping(sqs, queue_url=twin.queues["hl7-inbound"], queue_arn=twin.queue_arns["hl7-inbound"],
                             handler=load_handler(HANDLER), function_name="hl7_ingest")
    for _ in range(10):
        if not esm.poll_once():
            break
    assert esm.stats.failed == 0 and esm.stats.succeeded == 2
    out = drain_queue(twin, "normalize")
    assert sorted(e["attributes"]["msh10"] for e in out) == ["CID1", "CID2", "CID3"]
    assert sorted(base64.b64decode(e["body"]) for e in out) == sorted([oru(1), oru(2), oru(3)])
    s3 = local_client("s3", twin.endpoint)
    archived = [o["Key"] for o in s3.list_objects_v2(Bucket=twin.buckets["archive"]).get("Contents", [])]
    assert len([k for k in archived if k.startswith("raw/demo-health/")]) == 2
