"""Replay: raw HL7 v2 from the archive (``raw/<tenant>/<YYYY/MM/DD>/<message_id>``, written by
hl7_ingest before anything else) back into ``hl7-inbound``, for a tenant and a time range.

Safe to run over data that was processed: each message goes back with its original ``message_id``
(and its original attributes and patient key, kept in the archive object's metadata), so SQS FIFO
deduplication (5 minutes) and the consumers' idempotency (15 days) drop what was already
processed; what was lost downstream (a purged queue, an expired DLQ message) is processed anew.
To re-process something that *was* processed - after a mapping fix - release it from the quarantine
or wait out the idempotency window; replay never creates a second copy in the lake.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ehrbridge.aws.sqs import Publisher
from ehrbridge.contracts.envelope import ContractError, Envelope
from ehrbridge.hl7.wire import WireError, decode_detailed, read_msh

RAW_PREFIX = "raw/"


@dataclass
class ReplayResult:
    tenant_id: str
    start: str
    end: str
    dry_run: bool
    archived_in_range: int = 0
    sent: int = 0
    rebuilt_without_metadata: int = 0  # archived before the envelope was kept beside the raw bytes
    unreadable: list[str] = field(default_factory=list)  # archive keys that could not be rebuilt
    by_kind: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_instant(text: str) -> datetime:
    """ISO 8601; a value without offset is UTC; a bare date is its midnight."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 date/time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def replay(s3: Any, *, archive_bucket: str, out: Publisher, tenant_id: str, start: datetime, end: datetime,
           dry_run: bool = False, batch: int = 10) -> ReplayResult:
    if end <= start:
        raise ValueError("--to must be after --from")
    result = ReplayResult(tenant_id=tenant_id, start=start.isoformat(), end=end.isoformat(), dry_run=dry_run)
    pending: list[Envelope] = []
    day = start.astimezone(UTC).date()
    while day <= end.astimezone(UTC).date():
        prefix = f"{RAW_PREFIX}{tenant_id}/{day:%Y/%m/%d}/"
        for obj in _objects(s3, archive_bucket, prefix):
            envelope = _envelope(s3, archive_bucket, obj, tenant_id, result)
            if envelope is None or not start <= envelope.received_at < end:
                continue
            result.archived_in_range += 1
            result.by_kind[envelope.kind] = result.by_kind.get(envelope.kind, 0) + 1
            if dry_run:
                continue
            pending.append(envelope)
            if len(pending) >= batch:
                out.publish(pending)
                result.sent += len(pending)
                pending = []
        day += timedelta(days=1)
    if pending:
        out.publish(pending)
        result.sent += len(pending)
    return result


def _objects(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.extend(page.get("Contents", []))
    return sorted(found, key=lambda o: (o["LastModified"], o["Key"]))


def _envelope(s3: Any, bucket: str, obj: dict[str, Any], tenant_id: str, result: ReplayResult) -> Envelope | None:
    key = obj["Key"]
    got = s3.get_object(Bucket=bucket, Key=key)
    raw = got["Body"].read()
    head = (got.get("Metadata") or {}).get("envelope")
    body = base64.b64encode(raw).decode("ascii")
    try:
        if head:
            data = json.loads(head)
            data.update(body=body, body_encoding="base64")
            return Envelope.parse_obj(data)
        return _rebuild(raw, body, key, tenant_id, obj["LastModified"], result)
    except (ContractError, ValueError, WireError):
        result.unreadable.append(key)
        return None


def _rebuild(raw: bytes, body: str, key: str, tenant_id: str, archived_at: datetime,
             result: ReplayResult) -> Envelope:
    """An archive object without the envelope beside it: the id is in the key, the rest in MSH."""
    from ehrbridge.mllp.message import patient_key

    header = read_msh(raw)
    text, _codec = decode_detailed(raw, header.charset, "ASCII")
    message_id = key.rsplit("/", 1)[-1]
    result.rebuilt_without_metadata += 1
    attributes = {"source_id": "replay", "msh10": header.control_id[:64]}
    if header.charset:
        attributes["charset"] = header.charset
    return Envelope.parse_obj({
        "tenant_id": tenant_id, "message_id": message_id, "correlation_id": message_id, "source": "hl7v2",
        "kind": header.kind[:64] or "UNKNOWN", "received_at": archived_at.astimezone(UTC).isoformat(),
        "patient_key": patient_key(tenant_id, "replay", text, header), "body": body, "body_encoding": "base64",
        "attributes": attributes})
