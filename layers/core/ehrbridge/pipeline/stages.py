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


# S3 user metadata is limited to 2 KB per object (keys and values, US-ASCII).
_ARCHIVE_METADATA_MAX = 1800


def archive_metadata(envelope: Envelope) -> dict[str, str]:
    """The envelope without its body, beside the archived raw bytes: `ehrbridge replay` rebuilds the
    inbound envelope (same message id, attributes, patient key) from it. PHI-free: ids, kind,
    hashed patient key, PHI-free attributes."""
    head = envelope.model_dump_json(exclude={"body", "body_ref"}, exclude_none=True)
    if len(head) <= _ARCHIVE_METADATA_MAX and head.isascii():
        return {"envelope": head}
    return {"received-at": envelope.received_at.isoformat(), "message-id": envelope.message_id}


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
                  "quarantined_at": datetime.now(UTC).isoformat(),
                  # Everything but the body (kept beside it): `ehrbridge quarantine release` rebuilds
                  # the envelope from it. PHI-free: ids, kind, hashed patient key, attributes.
                  "envelope": envelope.model_dump(mode="json", exclude={"body"}, exclude_none=True)}
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
