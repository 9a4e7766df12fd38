"""The durable ACK store: the second level of resend replay, shared by every task and kept across restarts.

A resend can land on another worker or Fargate task (the NLB spreads reconnects) or arrive after a
deploy, where the in-memory ``AckCache`` knows nothing. The original ACK is therefore also written to
the ``state`` table, one item per accepted message::

    pk = "mllp-ack#<tenant>#<source>"   sk = "<MSH-10>#<sha256 of the raw bytes>"
    ack = base64 of the ACK bytes, message_id, stored_at (ISO time), expires_at (epoch s, the table's TTL)

An ACK holds MSH-3..6, the control ids and MSA only: no PHI goes into the table.

Requests from every connection share DynamoDB calls, like the SQS group commit: lookups go out as
``BatchGetItem`` (up to 100 keys), writes as one conditional ``TransactWriteItems`` of up to 25 puts
("only if no unexpired ACK is stored for this key"). ``BatchWriteItem`` cannot carry a condition; the
condition is what makes every copy of a message end with ONE stored ACK: a task racing another on the
same resend, or committing a resend it did not look up, learns the stored ACK from the cancellation
reason (``ReturnValuesOnConditionCheckFailure=ALL_OLD``). A transaction costs two write units per item;
``conditional=False`` switches to ``BatchWriteItem`` (one unit, last writer wins; the bridge then looks
every message up first).

When the bridge writes (``BridgeSettings.ack_store_write_behind``): write-behind (the default) sends the
AA right after the SQS commit and records the ACK in the background, with a short linger to fill
batches; the stored ACK a write learns then only replaces the worker's memory of it (the copy was
answered already, with the same MSH-10 and MSA-2 and its own MSH-7), and failures are only counted.
Write-through records first and answers with the stored ACK when one was there: byte-identical
answers for racing copies, at one DynamoDB round trip on every ACK. Either way the message is in the
queue before the AA, so the choice trades replay fidelity for latency, never data safety. ``close``
flushes both lanes, so a graceful drain stores the records still waiting.

Nothing here decides an ACK code: a failed or slow store only means replay falls back to what the
queue's FIFO deduplication and downstream idempotency give (see ``dedupe``).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

from ehrbridge.aws.clients import client
from ehrbridge.observability import logger

DEFAULT_TTL_S = 7 * 24 * 3600
GET_BATCH_MAX = 100  # BatchGetItem keys per call
# BatchWriteItem takes 25; a transaction takes 100, but one conflicting item cancels all of them.
PUT_BATCH_MAX = 25
_MAX_CONTROL_ID = 200  # MSH-10 is 20 (199 in v2.7+) chars; the sha256 keeps the sort key unique anyway
_CONDITION = "attribute_not_exists(pk) OR expires_at < :now"


class AckKey(NamedTuple):
    """What makes two messages the same message: (tenant, source, MSH-10, SHA-256 of the raw bytes).

    A NamedTuple, not a frozen dataclass: made for every message and hashed several times on the way
    (batch, store, results), where a tuple's C-level init and hash cost a fraction of the dataclass's.
    """

    tenant_id: str
    source_id: str
    control_id: str
    sha256: str

    @property
    def pk(self) -> str:
        return f"mllp-ack#{self.tenant_id}#{self.source_id}"

    @property
    def sk(self) -> str:
        return f"{self.control_id[:_MAX_CONTROL_ID]}#{self.sha256}"


class AckRecord(NamedTuple):
    key: AckKey
    ack: bytes  # the ACK exactly as sent (not framed)
    message_id: str  # the envelope's stable id: ties the item to the queue message


class GetResult(NamedTuple):
    found: dict[AckKey, bytes]  # keys with an unexpired stored ACK
    failed: dict[AckKey, str]  # keys that could not be looked up -> error code


class PutResult(NamedTuple):
    existing: dict[AckKey, bytes]  # an ACK was already stored for these keys (a race lost): replay it
    failed: dict[AckKey, str]  # not stored -> error code; every other record was stored


class AckStore(Protocol):
    async def get_many(self, keys: Sequence[AckKey]) -> GetResult: ...

    async def put_many(self, records: Sequence[AckRecord]) -> PutResult: ...

    def close(self) -> None: ...


def _error_code(err: BaseException) -> str:
    return str(getattr(err, "response", {}).get("Error", {}).get("Code") or type(err).__name__)[:64]


def _unique(records: Sequence[AckRecord]) -> list[AckRecord]:
    """The first record of each key: a DynamoDB batch must not name an item twice (results are per key,
    so a duplicate shares the first record's outcome; the bridge never sends one, one copy is in flight)."""
    seen: dict[AckKey, AckRecord] = {}
    for record in records:
        seen.setdefault(record.key, record)
    return list(seen.values())


class InMemoryAckStore:
    """The same semantics in process (insert-if-absent, TTL), for unit tests and runs without a table."""

    def __init__(self, *, ttl_s: int = DEFAULT_TTL_S, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self.items: dict[AckKey, tuple[bytes, float, str]] = {}  # key -> (ack, expires_at, message_id)
        self.get_calls = 0
        self.put_calls = 0

    async def get_many(self, keys: Sequence[AckKey]) -> GetResult:
        self.get_calls += 1
        now = self.clock()
        found = {k: item[0] for k in keys if (item := self.items.get(k)) is not None and item[1] >= now}
        return GetResult(found, {})

    async def put_many(self, records: Sequence[AckRecord]) -> PutResult:
        self.put_calls += 1
        now = self.clock()
        existing: dict[AckKey, bytes] = {}
        for record in records:
            item = self.items.get(record.key)
            if item is not None and item[1] >= now:
                existing[record.key] = item[0]
            else:
                self.items[record.key] = (record.ack, now + self.ttl_s, record.message_id)
        return PutResult(existing, {})

    def close(self) -> None:
        pass


class DynamoAckStore:
    """The ``state`` table through boto3 on a small thread pool (boto3 blocks; the event loop must not)."""

    def __init__(self, table_name: str, *, ddb: Any = None, ttl_s: int = DEFAULT_TTL_S, conditional: bool = True,
                 attempts: int = 3, max_workers: int = 8, clock: Callable[[], float] = time.time) -> None:
        self.table_name = table_name
        self.ttl_s = ttl_s
        self.conditional = conditional
        self.attempts = max(1, attempts)
        self.clock = clock
        self._ddb = ddb
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ack-store")

    @property
    def ddb(self) -> Any:
        return self._ddb or client("dynamodb")

    async def get_many(self, keys: Sequence[AckKey]) -> GetResult:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.get_many_sync, keys)

    async def put_many(self, records: Sequence[AckRecord]) -> PutResult:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.put_many_sync, records)

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    # ---- blocking implementations (worker threads) ----------------------------------------------
    def _backoff(self, attempt: int) -> None:
        time.sleep(min(0.2, 0.02 * 2 ** attempt))

    def get_many_sync(self, keys: Sequence[AckKey]) -> GetResult:
        found: dict[AckKey, bytes] = {}
        failed: dict[AckKey, str] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), GET_BATCH_MAX):
            part = self._get_chunk(unique[start:start + GET_BATCH_MAX])
            found.update(part.found)
            failed.update(part.failed)
        return GetResult(found, failed)

    def _get_chunk(self, keys: Sequence[AckKey]) -> GetResult:
        by_id = {(k.pk, k.sk): k for k in keys}
        pending: list[dict[str, Any]] = [{"pk": {"S": k.pk}, "sk": {"S": k.sk}} for k in keys]
        found: dict[AckKey, bytes] = {}
        code = "UnprocessedKeys"
        for attempt in range(self.attempts):
            if not pending:
                break
            if attempt:
                self._backoff(attempt)
            try:
                response = self.ddb.batch_get_item(RequestItems={self.table_name: {
                    # Strongly consistent: a resend right after a restart must see the first task's write.
                    "Keys": pending, "ConsistentRead": True, "ProjectionExpression": "pk, sk, ack, expires_at"}})
            except Exception as err:  # throttling after boto3's own retries, access, network: a miss, counted
                code = _error_code(err)
                break
            now = self.clock()
            for item in response.get("Responses", {}).get(self.table_name, []):
                key = by_id.get((item["pk"]["S"], item["sk"]["S"]))
                # TTL deletion is lazy (up to days): an expired item is treated as absent.
                if key is not None and float(item.get("expires_at", {}).get("N", "0")) >= now:
                    found[key] = base64.b64decode(item["ack"]["S"])
            pending = response.get("UnprocessedKeys", {}).get(self.table_name, {}).get("Keys", [])
        failed = {by_id[(k["pk"]["S"], k["sk"]["S"])]: code for k in pending}
        return GetResult(found, failed)

    def _item(self, record: AckRecord, now: float) -> dict[str, Any]:
        return {"pk": {"S": record.key.pk}, "sk": {"S": record.key.sk},
                "ack": {"S": base64.b64encode(record.ack).decode("ascii")},
                "message_id": {"S": record.message_id},
                "stored_at": {"S": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")},
                "expires_at": {"N": str(int(now) + self.ttl_s)}}

    def put_many_sync(self, records: Sequence[AckRecord]) -> PutResult:
        first = _unique(records)
        existing: dict[AckKey, bytes] = {}
        failed: dict[AckKey, str] = {}
        chunk = self._put_conditional if self.conditional else self._put_unconditional
        for start in range(0, len(first), PUT_BATCH_MAX):
            part = chunk(first[start:start + PUT_BATCH_MAX])
            existing.update(part.existing)
            failed.update(part.failed)
        return PutResult(existing, failed)

    def _put_unconditional(self, records: Sequence[AckRecord]) -> PutResult:
        by_id = {(r.key.pk, r.key.sk): r for r in records}
        now = self.clock()
        pending: list[dict[str, Any]] = [{"PutRequest": {"Item": self._item(r, now)}} for r in records]
        code = "UnprocessedItems"
        for attempt in range(self.attempts):
            if not pending:
                break
            if attempt:
                self._backoff(attempt)
            try:
                response = self.ddb.batch_write_item(RequestItems={self.table_name: pending})
            except Exception as err:
                code = _error_code(err)
                break
            pending = response.get("UnprocessedItems", {}).get(self.table_name, [])
        failed = {by_id[(p["PutRequest"]["Item"]["pk"]["S"], p["PutRequest"]["Item"]["sk"]["S"])].key: code
                  for p in pending}
        return PutResult({}, failed)

    def _put_conditional(self, records: Sequence[AckRecord]) -> PutResult:
        existing: dict[AckKey, bytes] = {}
        failed: dict[AckKey, str] = {}
        unknown: list[AckKey] = []  # lost the race but the reason carried no item: read it
        pending = list(records)
        codes: dict[AckKey, str] = {}
        for attempt in range(self.attempts):
            if not pending:
                break
            if attempt:
                self._backoff(attempt)
            now = self.clock()
            request = [{"Put": {"TableName": self.table_name, "Item": self._item(r, now),
                                "ConditionExpression": _CONDITION,
                                "ExpressionAttributeValues": {":now": {"N": str(int(now))}},
                                "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}} for r in pending]
            try:
                self.ddb.transact_write_items(TransactItems=request)
                pending = []
                break
            except Exception as err:
                code = _error_code(err)
                reasons = getattr(err, "response", {}).get("CancellationReasons") or []
                if code != "TransactionCanceledException" or len(reasons) != len(pending):
                    codes.update((r.key, code) for r in pending)
                    break
            retry: list[AckRecord] = []
            for record, reason in zip(pending, reasons, strict=True):
                why = reason.get("Code") or "None"
                if why == "ConditionalCheckFailed":
                    stored = reason.get("Item", {}).get("ack", {}).get("S")
                    if stored:
                        existing[record.key] = base64.b64decode(stored)
                    else:
                        unknown.append(record.key)
                else:  # "None" (cancelled because of another item), TransactionConflict, throttling: again
                    codes[record.key] = code if why == "None" else why[:64]
                    retry.append(record)
            pending = retry
        failed.update((r.key, codes.get(r.key, "TransactionCanceledException")) for r in pending)
        if unknown:
            looked = self.get_many_sync(unknown)
            existing.update(looked.found)
            failed.update((k, "ConditionalCheckFailed") for k in unknown if k not in looked.found)
        return PutResult(existing, failed)


# ---- batching across connections --------------------------------------------------------------
Done = Callable[[bytes | None, str | None], None]


@dataclass
class AckStoreStats:
    get_batches: int = 0
    gets: int = 0
    put_batches: int = 0
    puts: int = 0
    failed: int = 0
    consecutive_failures: int = 0


class _Lane:
    """Requests of one kind from every connection, sent as one store call per batch of ``max_batch``."""

    def __init__(self, owner: DurableAcks, kind: str, max_batch: int, linger_s: float,
                 call: Callable[[list[Any]], Any]) -> None:
        self.owner = owner
        self.kind = kind
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.call = call
        self.pending: list[tuple[AckKey, Any, Done]] = []
        self.timer: asyncio.Handle | None = None

    def add(self, key: AckKey, request: Any, done: Done) -> None:
        self.pending.append((key, request, done))
        if len(self.pending) >= self.max_batch:
            self.flush()
        elif self.timer is None:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(self.linger_s, self.flush) if self.linger_s > 0 else loop.call_soon(self.flush)

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        self.owner._start(self._run(batch))

    async def _run(self, batch: list[tuple[AckKey, Any, Done]]) -> None:
        owner = self.owner
        started = time.perf_counter()
        answers: dict[AckKey, bytes] = {}
        failed: dict[AckKey, str] = {}
        whole_batch_failed = False
        if owner.circuit_open():
            failed = {key: "CircuitOpen" for key, _, _ in batch}
        else:
            try:
                async with asyncio.timeout(owner.timeout_s):
                    async with owner.slots:
                        answers, failed = await self.call([request for _, request, _ in batch])
            except TimeoutError:
                failed, whole_batch_failed = {key: "Timeout" for key, _, _ in batch}, True
            except Exception as err:  # a store bug must still answer every waiter
                failed, whole_batch_failed = {key: _error_code(err) for key, _, _ in batch}, True
            if not whole_batch_failed and failed and len(failed) == len(batch):
                whole_batch_failed = True
            owner.note(whole_batch_failed)
        elapsed_ms = (time.perf_counter() - started) * 1000
        stats = owner.stats
        if self.kind == "read":
            stats.get_batches += 1
            stats.gets += len(batch)
        else:
            stats.put_batches += 1
            stats.puts += len(batch)
        stats.failed += len(failed)
        if owner.on_batch is not None:
            owner.on_batch(self.kind, len(batch), elapsed_ms, len(failed))
        for key, _request, done in batch:
            try:
                done(answers.get(key), failed.get(key))
            except Exception as err:  # one connection's bug must not strand the rest of the batch
                logger.error("ack store callback failed", extra={"error_type": type(err).__name__})


class DurableAcks:
    """Batches lookups and writes of every connection into few store calls (the ACK-side group commit).

    ``lookup(key, done)``: ``done(stored_ack, None)`` when an ACK is stored, ``done(None, None)`` when
    not, ``done(None, code)`` when the store could not say. ``record(record, done)``: ``done(None, None)``
    stored, ``done(other_ack, None)`` when another task stored one first (write-through answers with it),
    ``done(None, code)`` not stored. Each ``done`` runs exactly once, within about ``timeout_s``.

    After ``breaker_failures`` whole batches in a row failed, calls are skipped (``CircuitOpen``) for
    ``breaker_s``, so an unavailable table costs no per-message timeout; then one batch tries again.
    Lookups linger up to ``linger_s`` to fill a batch; writes by default go out at the end of the
    current event-loop pass (``write_linger_s=0``).
    """

    def __init__(self, store: AckStore, *, linger_s: float = 0.002, write_linger_s: float = 0.0, timeout_s: float = 1.0,
                 max_inflight_batches: int = 32, breaker_failures: int = 5, breaker_s: float = 5.0,
                 on_batch: Callable[[str, int, float, int], None] | None = None) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self.breaker_failures = breaker_failures
        self.breaker_s = breaker_s
        self.on_batch = on_batch
        self.stats = AckStoreStats()
        self.slots = asyncio.Semaphore(max_inflight_batches)
        self._open_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._reads = _Lane(self, "read", GET_BATCH_MAX, linger_s, self._get)
        # Writes arrive in bursts (every entry of an SQS batch at once): sending them at the end of the
        # current loop pass batches them without adding a linger to every ACK.
        self._writes = _Lane(self, "write", PUT_BATCH_MAX, write_linger_s, self._put)

    # Through ``self.store`` at call time, so a store can be swapped (tests, a re-created client).
    async def _get(self, keys: list[AckKey]) -> GetResult:
        return await self.store.get_many(keys)

    async def _put(self, records: list[AckRecord]) -> PutResult:
        return await self.store.put_many(records)

    def lookup(self, key: AckKey, done: Done) -> None:
        self._reads.add(key, key, done)

    def record(self, record: AckRecord, done: Done) -> None:
        self._writes.add(record.key, record, done)

    def circuit_open(self) -> bool:
        return time.monotonic() < self._open_until

    def note(self, failed: bool) -> None:
        if not failed:
            self.stats.consecutive_failures = 0
            return
        self.stats.consecutive_failures += 1
        # Not reset when opening: after the pause, one more failed batch opens the breaker again.
        if self.stats.consecutive_failures >= self.breaker_failures:
            self._open_until = time.monotonic() + self.breaker_s
            logger.warning("ack store failing; skipping it for a while", extra={"seconds": self.breaker_s})

    def _start(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def backlog(self) -> int:
        """Requests waiting for their batch plus batches in flight (reported when a drain runs out of time)."""
        return len(self._reads.pending) + len(self._writes.pending) + len(self._tasks)

    @property
    def idle(self) -> bool:
        return not (self._tasks or self._reads.pending or self._writes.pending)

    async def close(self) -> None:
        """Send what is pending and wait for every batch in flight (graceful drain)."""
        self._reads.flush()
        self._writes.flush()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
            self._reads.flush()
            self._writes.flush()
