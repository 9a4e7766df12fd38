"""Group commit: messages from every connection share ``SendMessageBatch`` calls.

A sender waits for its ACK, so each connection has at most one message in flight; batching
*across* connections is what keeps throughput from collapsing to one SQS round trip per
message (research/mllp.md §7: ~4-5x less CPU per message than one SendMessage each, and a FIFO
queue allows only 300 API calls/s). A message is acknowledged AA only when its own batch entry
came back in ``Successful`` with the MD5 of the body we sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from ehrbridge.aws.clients import client
from ehrbridge.contracts.claim_check import ClaimCheck
from ehrbridge.contracts.envelope import Envelope
from ehrbridge.observability import logger

SQS_BATCH_MAX = 10
# A SendMessageBatch request is limited to 256 KiB in total (1 MiB on newer quotas; stay safe).
SQS_BATCH_BYTES = 256 * 1024 - 4096


class CommitError(RuntimeError):
    """The queue did not take the message. ``code`` is the SQS error code or our own reason."""

    def __init__(self, code: str) -> None:
        self.code = code
        super().__init__(code)


class Entry(NamedTuple):  # one per message: a tuple is cheaper to make than a frozen dataclass
    id: str
    body: str
    group_id: str
    dedup_id: str


class Sink(Protocol):
    """Where committed messages go. Returns {entry id: error code} for the entries NOT accepted."""

    async def send_batch(self, entries: Sequence[Entry]) -> dict[str, str]: ...


class SqsSink:
    """SendMessageBatch on a thread pool (boto3 is blocking), checking each entry and its MD5."""

    def __init__(self, queue_url: str, *, sqs: Any = None, max_workers: int = 16) -> None:
        self.queue_url = queue_url
        self.fifo = queue_url.endswith(".fifo")
        self._sqs = sqs
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sqs")

    @property
    def sqs(self) -> Any:
        return self._sqs or client("sqs")

    def _send(self, entries: Sequence[Entry]) -> dict[str, str]:
        request = []
        for e in entries:
            item = {"Id": e.id, "MessageBody": e.body}
            if self.fifo:
                item["MessageGroupId"] = e.group_id
                item["MessageDeduplicationId"] = e.dedup_id
            request.append(item)
        try:
            response = self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=request)
        except Exception as err:  # any transport/API failure fails every entry of this batch
            code = getattr(err, "response", {}).get("Error", {}).get("Code") or type(err).__name__
            return {e.id: str(code) for e in entries}
        failed = {f["Id"]: f.get("Code", "unknown") for f in response.get("Failed", [])}
        ok = {s["Id"]: s.get("MD5OfMessageBody") for s in response.get("Successful", [])}
        for e in entries:
            if e.id in failed:
                continue
            if e.id not in ok:
                failed[e.id] = "NotInResponse"
            elif ok[e.id] and ok[e.id] != hashlib.md5(e.body.encode("utf-8"), usedforsecurity=False).hexdigest():
                failed[e.id] = "MD5Mismatch"
        return failed

    async def send_batch(self, entries: Sequence[Entry]) -> dict[str, str]:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._send, entries)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class _Waiter:
    """One message waiting for its batch: the callback runs exactly once (result or deadline).

    A waiter with a deadline sits in ``timed`` (the committer's set of those) until it finishes, and
    leaves it then, dropping its callback too: nothing keeps a finished message's state (callbacks,
    header, bytes) alive until a later sweep. Kept longer, every message's objects would survive into
    the garbage collector's older generations and be scanned again and again (measured: ~20 us a message).
    """

    __slots__ = ("deadline", "done", "finished", "timed")

    def __init__(self, done: Callable[[str | None], None], deadline: float = 0.0,
                 timed: set[_Waiter] | None = None) -> None:
        self.done: Callable[[str | None], None] | None = done
        self.finished = False
        self.deadline = deadline
        self.timed = timed
        if timed is not None:
            timed.add(self)

    def finish(self, code: str | None) -> None:
        if self.finished:
            return
        self.finished = True
        done, self.done = self.done, None
        if self.timed is not None:
            self.timed.discard(self)
            self.timed = None
        if done is not None:
            done(code)


@dataclass
class CommitStats:
    batches: int = 0
    entries: int = 0
    failed_entries: int = 0
    consecutive_failures: int = 0
    last_failure_at: float = 0.0
    batch_ms_total: float = 0.0


class GroupCommitter:
    """Collects envelopes from all connections into batches of up to 10, lingering at most ``linger_s``."""

    def __init__(self, sink: Sink, *, claim_check: ClaimCheck | None = None, linger_s: float = 0.002,
                 max_batch: int = SQS_BATCH_MAX, max_inflight_batches: int = 64,
                 on_batch: Callable[[int, float, int], None] | None = None) -> None:
        self.sink = sink
        self.claim_check = claim_check
        self.linger_s = linger_s
        self.max_batch = max(1, min(max_batch, SQS_BATCH_MAX))
        self.stats = CommitStats()
        self._on_batch = on_batch
        self._pending: list[tuple[Entry, _Waiter]] = []
        self._pending_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._slots = asyncio.Semaphore(max_inflight_batches)
        self._tasks: set[asyncio.Task[None]] = set()
        self._seq = 0
        self._timed: set[_Waiter] = set()  # unfinished waiters with a deadline (the sweep's work list)
        self._deadline_task: asyncio.Task[None] | None = None
        self.deadline_tick_s = 0.25

    def entry_for(self, envelope: Envelope) -> Entry:
        return self.entry(envelope.to_json(), envelope.group_id, envelope.message_id)

    def entry(self, body: str, group_id: str, dedup_id: str) -> Entry:
        self._seq += 1
        return Entry(id=f"m{self._seq}", body=body, group_id=group_id, dedup_id=dedup_id)

    async def prepare(self, envelope: Envelope) -> Envelope:
        """Claim-check a body too big for SQS (S3 first, so AA still means everything is stored)."""
        if self.claim_check is None or envelope.body is None:
            return envelope
        if len(envelope.body) + 2048 <= self.claim_check.threshold:
            return envelope
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.claim_check.outbound, envelope)

    def needs_prepare(self, envelope: Envelope) -> bool:
        """True when the body must go to S3 first (claim check) before it can be queued."""
        return (self.claim_check is not None and envelope.body is not None
                and len(envelope.body) + 2048 > self.claim_check.threshold)

    def submit(self, envelope: Envelope, done: Callable[[str | None], None], timeout: float | None = None) -> None:
        """Queue ``envelope`` for the next batch; ``done(None)`` once the queue confirmed it, else
        ``done(error_code)``, exactly once. Callbacks, not a coroutine per message: this is the hot path.

        ``timeout`` bounds the wait (the sender must get an answer before its own ACK timeout); on
        expiry ``done("Timeout")``. The entry may still be stored afterwards: the FIFO dedup id (the
        stable message id) keeps the sender's resend from becoming a second copy.
        """
        self.submit_entry(self.entry_for(envelope), done, timeout)

    def submit_entry(self, entry: Entry, done: Callable[[str | None], None], timeout: float | None = None) -> None:
        """``submit`` for an already serialized envelope (the bridge's hot path)."""
        loop = asyncio.get_running_loop()
        size = len(entry.body) + 200
        if self._pending and self._pending_bytes + size > SQS_BATCH_BYTES:
            self._flush()
        if timeout:
            # Deadlines are checked by one periodic sweep over the unfinished waiters (cheaper than a
            # timer per message; a waiter leaves the set as soon as its batch answers).
            waiter = _Waiter(done, time.monotonic() + timeout, self._timed)
            if self._deadline_task is None or self._deadline_task.done():
                self._deadline_task = loop.create_task(self._expire_loop())
        else:
            waiter = _Waiter(done)
        self._pending.append((entry, waiter))
        self._pending_bytes += size
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.linger_s, self._flush)

    async def commit(self, envelope: Envelope, timeout: float | None = None) -> None:
        """Return once the queue confirmed this envelope; raise CommitError otherwise."""
        if self.needs_prepare(envelope):
            envelope = await self.prepare(envelope)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(code: str | None) -> None:
            if future.done():
                return
            if code is None:
                future.set_result(None)
            else:
                future.set_exception(CommitError(code))

        self.submit(envelope, done, timeout)
        await future

    async def _expire_loop(self) -> None:
        timed = self._timed
        while timed:
            await asyncio.sleep(self.deadline_tick_s)
            now = time.monotonic()
            # Only messages still in flight are in the set (a few per connection at most).
            for waiter in [w for w in timed if w.deadline <= now]:
                waiter.finish("Timeout")

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[Entry, _Waiter]]) -> None:
        async with self._slots:
            started = time.perf_counter()
            try:
                failed = await self.sink.send_batch([e for e, _ in batch])
            except Exception as err:  # a sink bug must still answer every waiter
                failed = {e.id: type(err).__name__ for e, _ in batch}
            elapsed_ms = (time.perf_counter() - started) * 1000
        self.stats.batches += 1
        self.stats.entries += len(batch)
        self.stats.batch_ms_total += elapsed_ms
        self.stats.failed_entries += len(failed)
        if failed:
            self.stats.consecutive_failures += 1
            self.stats.last_failure_at = time.monotonic()
        else:
            self.stats.consecutive_failures = 0
        if self._on_batch is not None:
            self._on_batch(len(batch), elapsed_ms, len(failed))
        for entry, waiter in batch:
            try:
                waiter.finish(failed.get(entry.id))
            except Exception as err:  # one connection's bug must not strand the rest of the batch
                logger.error("commit callback failed", extra={"error_type": type(err).__name__})

    async def close(self) -> None:
        """Send what is pending and wait for every batch in flight (graceful drain)."""
        self._flush()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._deadline_task is not None:
            self._deadline_task.cancel()
