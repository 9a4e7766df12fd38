"""DLQ redrive: every message of a dead-letter queue back to its source queue, with counts.

SQS's own ``StartMessageMoveTask`` is not in moto (the local twin), and it cannot skip messages that
would fail again at once, so this does receive -> send -> delete itself:

- FIFO: the message keeps its ``MessageGroupId`` (one patient's order is kept); its deduplication
  id is ``redrive-<run>-<SQS message id>``: a message received twice in one run (its visibility ran
  out while we worked) is sent once; a later run - after the message failed its way back into the
  DLQ - is a new id, so SQS's 5-minute deduplication window never swallows a redriven message.
- A message is deleted from the DLQ only after the source queue accepted it. A crash between the
  two leaves a copy in both: the consumers are idempotent on the envelope's ``message_id``
  (Powertools Idempotency), so the copy is processed once.
- Messages whose body is not a valid envelope went to the DLQ with a ``reason`` attribute; they
  would fail again the same way, so they stay unless ``include_invalid``.
- A dry run looks without moving. SQS hides the rest of a FIFO group while its head is being looked
  at, so a dry run's breakdown covers the heads of the groups; the count is SQS's own.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from ehrbridge.contracts.envelope import ContractError, Envelope, stable_id


@dataclass
class RedriveResult:
    queue: str
    dry_run: bool
    found: int = 0  # distinct messages seen in the DLQ
    moved: int = 0
    kept_invalid: int = 0
    failed: int = 0  # the source queue did not accept them; still in the DLQ
    in_dlq_before: int = 0  # SQS's approximate count
    in_dlq_after: int = 0  # what is left: kept, failed, or behind a kept message in its FIFO group
    by_kind: dict[str, int] = field(default_factory=dict)
    by_tenant: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def redrive(sqs: Any, *, queue: str, dlq_url: str, source_url: str, dry_run: bool = False,
            max_messages: int | None = None, include_invalid: bool = False, visibility_s: int = 120,
            run_id: str | None = None) -> RedriveResult:
    result = RedriveResult(queue=queue, dry_run=dry_run)
    run = run_id or uuid.uuid4().hex[:12]
    fifo = source_url.endswith(".fifo")
    seen: set[str] = set()
    held: list[dict[str, Any]] = []  # dry run / kept: made visible again at the end
    kinds, tenants, reasons = Counter[str](), Counter[str](), Counter[str]()
    result.in_dlq_before = _depth(sqs, dlq_url)
    try:
        while max_messages is None or len(seen) < max_messages:
            want = 10 if max_messages is None else max(1, min(10, max_messages - len(seen)))
            messages = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=want, WaitTimeSeconds=0,
                                           VisibilityTimeout=visibility_s, AttributeNames=["All"],
                                           MessageSystemAttributeNames=["All"],
                                           MessageAttributeNames=["All"]).get("Messages", [])
            fresh = [m for m in messages if m["MessageId"] not in seen]
            if not fresh:
                held.extend(messages)
                break
            to_send = []
            for message in fresh:
                seen.add(message["MessageId"])
                reason = message.get("MessageAttributes", {}).get("reason", {}).get("StringValue")
                try:
                    envelope = Envelope.parse_json(message["Body"])
                    kinds[envelope.kind] += 1
                    tenants[envelope.tenant_id] += 1
                    if reason:
                        reasons[reason[:120]] += 1
                except ContractError as err:
                    envelope = None
                    reasons[(reason or str(err))[:120]] += 1
                if dry_run or (envelope is None and not include_invalid):
                    if envelope is None:
                        result.kept_invalid += 1
                    held.append(message)
                    continue
                to_send.append((message, envelope))
            result.found = len(seen)
            for start in range(0, len(to_send), 10):
                _move(sqs, to_send[start:start + 10], source_url, dlq_url, fifo, run, result)
    finally:
        _release(sqs, dlq_url, held)
        result.by_kind, result.by_tenant, result.reasons = dict(kinds), dict(tenants), dict(reasons)
    result.in_dlq_after = _depth(sqs, dlq_url)
    return result


def _depth(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs.get("ApproximateNumberOfMessages", 0)) + int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0))


def _move(sqs: Any, chunk: list[tuple[dict[str, Any], Envelope | None]], source_url: str, dlq_url: str, fifo: bool,
          run: str, result: RedriveResult) -> None:
    entries = []
    for index, (message, envelope) in enumerate(chunk):
        entry: dict[str, Any] = {"Id": str(index), "MessageBody": message["Body"]}
        attributes = message.get("MessageAttributes") or {}
        if attributes:
            entry["MessageAttributes"] = {k: {key: v[key] for key in ("DataType", "StringValue", "BinaryValue")
                                              if key in v} for k, v in attributes.items()}
        if fifo:
            group = message.get("Attributes", {}).get("MessageGroupId") or (
                envelope.group_id if envelope is not None else "redrive")
            entry["MessageGroupId"] = group
            entry["MessageDeduplicationId"] = stable_id("redrive", run, message["MessageId"])[:128]
        entries.append(entry)
    response = sqs.send_message_batch(QueueUrl=source_url, Entries=entries)
    accepted = {s["Id"] for s in response.get("Successful", [])}
    result.failed += len(chunk) - len(accepted)
    done = [chunk[int(i)][0] for i in sorted(accepted, key=int)]
    if done:
        sqs.delete_message_batch(QueueUrl=dlq_url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)])
    result.moved += len(done)


def _release(sqs: Any, dlq_url: str, messages: list[dict[str, Any]]) -> None:
    """Make messages we only looked at visible again at once (a FIFO group stays locked otherwise)."""
    unique = {m["ReceiptHandle"]: m for m in messages}
    handles = list(unique)
    for start in range(0, len(handles), 10):
        sqs.change_message_visibility_batch(QueueUrl=dlq_url, Entries=[
            {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
            for i, h in enumerate(handles[start:start + 10])])
