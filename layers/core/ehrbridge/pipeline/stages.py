"""Generic stage steps the capability stages are built from: archive, forward, sink, quarantine."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from ehrbridge.aws.s3 import InMemoryBlobStore, S3BlobStore
from ehrbridge.aws.sqs import Publisher
from ehrbridge.contracts.envelope import Envelope
from ehrbridge.observability import emit_metric, logger
from ehrbridge.observability.names import QUARANTINED, quarantine_reason

BlobStoreLike = S3BlobStore | InMemoryBlobStore


def archive_key(envelope: Envelope, suffix: str = "raw") -> str:
    day = envelope.received_at.astimezone(UTC).strftime("%Y/%m/%d")
    return f"{suffix}/{envelope.tenant_id}/{day}/{envelope.message_id}"


class Quarantine:
    """Input that can't be mapped: body kept in S3 with the reasons, and a queue message to act on."""

    def __init__(self, store: BlobStoreLike, queue: Publisher) -> None:
        self.store = store
        self.queue = queue

    def put(self, envelope: Envelope, reasons: Sequence[str], stage: str) -> str:
        key = archive_key(envelope, "quarantine")
        record = {"message_id": envelope.message_id, "correlation_id": envelope.correlation_id,
                  "tenant_id": envelope.tenant_id, "stage": stage,
                  "kind": envelope.kind, "reasons": list(reasons),
                  "quarantined_at": datetime.now(UTC).isoformat()}
        self.store.put(key + ".reason.json", json.dumps(record).encode(), "application/json")
        self.store.put(key + ".body", envelope.body_bytes() if envelope.body is not None else b"",
                       "application/octet-stream")
        notice = envelope.derive(kind="Quarantine", body=json.dumps({**record, "body_key": key + ".body"}),
                                 message_id=envelope.message_id)
        self.queue.publish([notice])
        # Per tenant and reason: the alarm on new quarantines groups by both (a quarantine is a work item).
        emit_metric(QUARANTINED.name, tenant=envelope.tenant_id, reason=quarantine_reason(stage, reasons))
        logger.warning("quarantined", extra={"stage": stage, "reasons": list(reasons)})
        return key


class LakeWriter:
    """The sink: canonical FHIR as NDJSON per tenant / resource type (one object per message)."""

    def __init__(self, store: BlobStoreLike) -> None:
        self.store = store

    def write(self, envelope: Envelope, resources_by_type: dict[str, list[dict]]) -> int:
        count = 0
        day = envelope.received_at.astimezone(UTC).strftime("%Y/%m/%d")
        for resource_type, items in sorted(resources_by_type.items()):
            if not items:
                continue
            body = "".join(json.dumps(item, separators=(",", ":"), sort_keys=True) + "\n" for item in items)
            # Keyed by message id: a redelivery overwrites its own object instead of duplicating rows.
            key = f"lake/{envelope.tenant_id}/{resource_type}/{day}/{envelope.message_id}.ndjson"
            # Lineage in metadata: the demo and audits trace every input to where it ended.
            self.store.put(key, body.encode(), "application/x-ndjson",
                           metadata={"message-id": envelope.message_id, "correlation-id": envelope.correlation_id,
                                     "resource-count": str(len(items))})
            count += len(items)
        return count
