"""Group commit: batching across callers, per-entry results, MD5 check, deadline."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from ehrbridge.contracts.envelope import new_envelope
from ehrbridge.mllp.commit import CommitError, Entry, GroupCommitter, SqsSink


def env(n: int):  # type: ignore[no-untyped-def]
    return new_envelope(tenant_id="demo-health", source="hl7v2", kind="ORU^R01", body=f"m{n}".encode(),
                        natural_key=[str(n)], patient_key=f"src-p{n % 3}")


class RecordingSink:
    def __init__(self, fail: set[str] | None = None, delay: float = 0.0) -> None:
        self.batches: list[list[Entry]] = []
        self.fail = fail or set()
        self.delay = delay

    async def send_batch(self, entries):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.delay)
        self.batches.append(list(entries))
        return {e.id: "InternalError" for e in entries if e.dedup_id in self.fail}


def test_concurrent_commits_share_batches_of_at_most_ten() -> None:
    sink = RecordingSink()

    async def run() -> None:
        committer = GroupCommitter(sink, linger_s=0.005)
        await asyncio.gather(*(committer.commit(env(n)) for n in range(25)))

    asyncio.run(run())
    assert sorted(len(b) for b in sink.batches) == [5, 10, 10]
    entries = [e for b in sink.batches for e in b]
    assert len({e.id for e in entries}) == 25
    assert all(e.group_id.startswith("demo-health:src-p") for e in entries)


def test_only_the_failed_entry_raises() -> None:
    bad = env(3).message_id
    sink = RecordingSink(fail={bad})

    async def run() -> list[object]:
        committer = GroupCommitter(sink, linger_s=0.001)
        return await asyncio.gather(*(committer.commit(env(n)) for n in range(5)), return_exceptions=True)

    results = asyncio.run(run())
    assert [type(r).__name__ for r in results] == ["NoneType"] * 3 + ["CommitError"] + ["NoneType"]
    assert results[3].code == "InternalError"  # type: ignore[union-attr]


def test_deadline_answers_before_a_slow_queue() -> None:
    sink = RecordingSink(delay=0.5)

    async def run() -> None:
        committer = GroupCommitter(sink, linger_s=0.001)
        with pytest.raises(CommitError, match="Timeout"):
            await committer.commit(env(1), timeout=0.05)
        await committer.close()  # the batch still completes; the FIFO dedup id covers the resend

    asyncio.run(run())
    assert len(sink.batches) == 1


def test_a_raising_sink_fails_every_waiter() -> None:
    class Broken:
        async def send_batch(self, entries):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    async def run() -> list[object]:
        committer = GroupCommitter(Broken(), linger_s=0.001)
        return await asyncio.gather(*(committer.commit(env(n)) for n in range(3)), return_exceptions=True)

    assert all(isinstance(r, CommitError) for r in asyncio.run(run()))


class FakeSqs:
    def __init__(self, response) -> None:  # type: ignore[no-untyped-def]
        self.response = response
        self.requests: list[dict] = []

    def send_message_batch(self, **kwargs):  # type: ignore[no-untyped-def]
        self.requests.append(kwargs)
        return self.response(kwargs["Entries"])


def test_sqs_sink_checks_each_entry_and_md5() -> None:
    def respond(entries):  # type: ignore[no-untyped-def]
        md5 = [hashlib.md5(e["MessageBody"].encode(), usedforsecurity=False).hexdigest() for e in entries]
        return {"Successful": [{"Id": entries[0]["Id"], "MD5OfMessageBody": md5[0]},
                               {"Id": entries[1]["Id"], "MD5OfMessageBody": "0" * 32}],
                "Failed": [{"Id": entries[2]["Id"], "Code": "ThrottlingException", "SenderFault": False}]}
        # entries[3] is in neither list

    fake = FakeSqs(respond)
    sink = SqsSink("https://sqs.example/q.fifo", sqs=fake)
    entries = [Entry(id=f"e{i}", body=f"b{i}", group_id="g", dedup_id=f"d{i}") for i in range(4)]
    failed = asyncio.run(sink.send_batch(entries))
    sink.close()
    assert failed == {"e1": "MD5Mismatch", "e2": "ThrottlingException", "e3": "NotInResponse"}
    sent = fake.requests[0]["Entries"]
    assert sent[0]["MessageGroupId"] == "g" and sent[0]["MessageDeduplicationId"] == "d0"


def test_sqs_sink_maps_a_call_failure_to_every_entry() -> None:
    def respond(entries):  # type: ignore[no-untyped-def]
        raise ConnectionError("endpoint unreachable")

    sink = SqsSink("https://sqs.example/q.fifo", sqs=FakeSqs(respond))
    failed = asyncio.run(sink.send_batch([Entry("a", "x", "g", "d"), Entry("b", "y", "g", "e")]))
    sink.close()
    assert failed == {"a": "ConnectionError", "b": "ConnectionError"}


def test_answered_waiters_release_their_callbacks_and_leave_the_deadline_sweep() -> None:
    """A finished message's callback (and what it holds) is dropped at once, not at the next sweep."""
    sink = RecordingSink(delay=0.05)
    calls: list[str | None] = []

    async def run() -> None:
        committer = GroupCommitter(sink, linger_s=0.001)
        committer.deadline_tick_s = 0.01
        for n in range(3):
            committer.submit(env(n), calls.append, timeout=5.0)  # answered by the batch
        committer.submit(env(9), calls.append, timeout=0.02)  # expires first
        assert len(committer._timed) == 4
        waiters = list(committer._timed)
        await asyncio.sleep(0.03)
        assert calls == ["Timeout"] and len(committer._timed) == 3
        await committer.close()
        assert not committer._timed
        assert all(w.done is None and w.finished for w in waiters)

    asyncio.run(run())
    assert sorted(calls, key=str) == [None, None, None, "Timeout"]  # each exactly once, the late one not again


def test_settle_gc_freezes_startup_objects_and_raises_the_young_threshold() -> None:
    import gc

    from ehrbridge.mllp.server import GC_YOUNG_THRESHOLD, settle_gc

    before = gc.get_threshold()
    try:
        settle_gc()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
