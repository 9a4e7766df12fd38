"""The quarantine as a work list for people: what was set aside (reason, tenant, stage, when), and
``release`` to put an item back into the pipeline once its cause is fixed (a mapping, a code map,
a tenant config, a code fix).

Source of truth: the quarantine bucket (``quarantine/<tenant>/<day>/<message_id>.reason.json`` with
the ``.body`` beside it, see pipeline.stages.Quarantine), not the quarantine queue: the bucket keeps
every item for as long as it is needed, a queue message expires after 14 days.

Release re-injects into the queue the quarantining stage consumes, under a new message id
(``stable_id(message_id, "release")``): the original id is already recorded as processed by that
stage's idempotency layer, which would otherwise drop the release silently. An item is released
once; a release is recorded beside it (``.released.json``). If it fails again it comes back as a new
item (with the new id), so the list stays the truth about what is still open.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from ehrbridge import resources
from ehrbridge.aws.s3 import InMemoryBlobStore, S3BlobStore
from ehrbridge.aws.sqs import Publisher
from ehrbridge.contracts.envelope import ContractError, Envelope, stable_id

PREFIX = "quarantine/"
REASON_SUFFIX = ".reason.json"
BODY_SUFFIX = ".body"
RELEASED_SUFFIX = ".released.json"
# Stages that quarantine, and the queue each consumes (where a released item goes back in).
STAGE_QUEUES = {"mllp_bridge": "hl7-inbound",
                **{fn.name: fn.consumes for fn in resources.FUNCTIONS if fn.consumes is not None}}

BlobStore = S3BlobStore | InMemoryBlobStore


class QuarantineError(RuntimeError):
    """No such item, several items match, or the item cannot be released; the text says which."""


@dataclass
class QuarantineItem:
    id: str  # the quarantined envelope's message_id
    tenant_id: str
    stage: str
    kind: str
    reasons: list[str]
    quarantined_at: str
    key: str  # the object key without suffix
    correlation_id: str = ""
    released: dict[str, Any] | None = None
    envelope: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def open(self) -> bool:
        return self.released is None

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("envelope")
        data["open"] = self.open
        return data


class QuarantineList:
    def __init__(self, store: BlobStore, queues: dict[str, Publisher]) -> None:
        self.store = store
        self.queues = queues  # queue name -> publisher (only needed for release)

    # ---- reading ----------------------------------------------------------------------
    def items(self, *, tenant: str | None = None, include_released: bool = False) -> list[QuarantineItem]:
        prefix = PREFIX + (f"{tenant}/" if tenant else "")
        keys = set(self.store.list_keys(prefix))
        out = []
        for key in sorted(k for k in keys if k.endswith(REASON_SUFFIX)):
            base = key[: -len(REASON_SUFFIX)]
            item = self._load(base, released=base + RELEASED_SUFFIX in keys)
            if include_released or item.open:
                out.append(item)
        return sorted(out, key=lambda i: (i.quarantined_at, i.id))

    def get(self, item_id: str, *, tenant: str | None = None) -> QuarantineItem:
        """By id, or a unique prefix of it (at least 6 characters), like git."""
        if len(item_id) < 6:
            raise QuarantineError("give at least 6 characters of the id")
        prefix = PREFIX + (f"{tenant}/" if tenant else "")
        keys = set(self.store.list_keys(prefix))
        matches = sorted(k[: -len(REASON_SUFFIX)] for k in keys if k.endswith(REASON_SUFFIX)
                         and k.rsplit("/", 1)[-1].startswith(item_id))
        if not matches:
            raise QuarantineError(f"no quarantined item {item_id}" + (f" for tenant {tenant}" if tenant else ""))
        if len(matches) > 1:
            raise QuarantineError(f"{len(matches)} items start with {item_id}; give more of the id")
        return self._load(matches[0], released=matches[0] + RELEASED_SUFFIX in keys)

    def body(self, item: QuarantineItem) -> bytes:
        return self.store.get(item.key + BODY_SUFFIX)

    def _load(self, base: str, *, released: bool) -> QuarantineItem:
        record = json.loads(self.store.get(base + REASON_SUFFIX))
        marker = json.loads(self.store.get(base + RELEASED_SUFFIX)) if released else None
        return QuarantineItem(id=str(record.get("message_id", base.rsplit("/", 1)[-1])),
                              tenant_id=str(record.get("tenant_id", "")), stage=str(record.get("stage", "")),
                              kind=str(record.get("kind", "")), reasons=list(record.get("reasons", [])),
                              quarantined_at=str(record.get("quarantined_at", "")), key=base,
                              correlation_id=str(record.get("correlation_id", "")), released=marker,
                              envelope=dict(record.get("envelope") or {}))

    # ---- release ----------------------------------------------------------------------
    def release(self, item: QuarantineItem, *, dry_run: bool = False) -> dict[str, Any]:
        """Put the item back into the queue its stage consumes; returns what was (or would be) sent."""
        if not item.open:
            raise QuarantineError(f"item {item.id} was already released at {item.released.get('released_at')} "
                                  f"as {item.released.get('released_as')}; if that failed again it is in the "
                                  f"list under the new id")  # type: ignore[union-attr]
        queue = STAGE_QUEUES.get(item.stage)
        if queue is None:
            raise QuarantineError(f"item {item.id} comes from stage {item.stage!r}, which has no input queue")
        envelope = self.rebuild(item)
        outcome = {"id": item.id, "released_as": envelope.message_id, "queue": queue, "tenant_id": item.tenant_id,
                   "kind": envelope.kind}
        if dry_run:
            return {**outcome, "dry_run": True}
        publisher = self.queues.get(queue)
        if publisher is None:
            raise QuarantineError(f"no publisher for queue {queue}")
        publisher.publish([envelope])
        marker = {"released_at": datetime.now(UTC).isoformat(), "released_as": envelope.message_id, "queue": queue}
        self.store.put(item.key + RELEASED_SUFFIX, json.dumps(marker).encode(), "application/json")
        return outcome

    def rebuild(self, item: QuarantineItem) -> Envelope:
        """The quarantined envelope with its body, under the release id."""
        data = dict(item.envelope)
        if not data:  # items quarantined before the envelope was recorded: rebuild from the record
            data = {"tenant_id": item.tenant_id, "message_id": item.id,
                    "correlation_id": item.correlation_id or item.id,
                    "source": "hl7v2" if item.stage in ("mllp_bridge", "hl7_ingest") else "fhir", "kind": item.kind,
                    "received_at": item.quarantined_at or datetime.now(UTC).isoformat(),
                    "body_encoding": "base64" if item.stage in ("mllp_bridge", "hl7_ingest") else "utf-8"}
        if not data.get("body_ref"):
            raw = self.body(item)
            encoding = data.get("body_encoding", "utf-8")
            data["body"] = base64.b64encode(raw).decode("ascii") if encoding == "base64" else raw.decode("utf-8")
        data["message_id"] = stable_id(item.id, "release")
        attributes = dict(data.get("attributes") or {})
        attributes["released_from"] = item.id
        data["attributes"] = attributes
        try:
            return Envelope.parse_obj(data)
        except ContractError as err:
            raise QuarantineError(f"item {item.id}: {err}") from None
