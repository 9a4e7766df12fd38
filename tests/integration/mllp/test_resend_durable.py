"""Resend replay across bridge instances (other workers/tasks) and restarts, through the state table.

Every bridge here is a separate ``MllpBridge`` with its own memory, batches and TLS listener on
127.0.0.1, sharing only what two Fargate tasks share: the moto SQS queue and DynamoDB table of the twin.
A resend that arrives "later" is simulated by moving the ACK clock (MSH-7) forward, so a freshly built
ACK would differ from the original and only a replay can be byte-identical.

The default is write-behind (the AA goes out, then the ACK is stored in the background): a test whose
resend must find the record first waits for it with ``settled(bridge)``, as a real resend comes seconds
later. Tests of write-through semantics set ``ack_store_write_behind=False``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Iterator

import pytest

from ehrbridge.local.twin import local_client
from ehrbridge.mllp import ack as ack_module
from ehrbridge.mllp import metrics as m
from ehrbridge.mllp.ack_store import DynamoAckStore
from ehrbridge.mllp.client import MllpClient, parse_ack
from ehrbridge.mllp.commit import Entry, SqsSink
from ehrbridge.mllp.tls import client_context

from .conftest import drain_queue, oru, running, settings_for

pytestmark = pytest.mark.integration
PHI = (b"DOE", b"JANE", b"MRN1", b"19800101", b"Hemoglobin")


def client(bridge, pki):  # type: ignore[no-untyped-def]
    return MllpClient("127.0.0.1", bridge.port, ssl_context=client_context(pki.ca.cert), server_hostname="localhost",
                      timeout=10)


async def send_raw(bridge, pki, message: bytes) -> bytes:  # type: ignore[no-untyped-def]
    """One connection per message: a sender that reconnects (and may land on another task) to resend."""
    async with client(bridge, pki) as c:
        return await c.send_raw(message)


@contextlib.contextmanager
def later(monkeypatch: pytest.MonkeyPatch, stamp: str = "20300101000000+0000") -> Iterator[None]:
    """ACKs built from now on carry another MSH-7, as they would after a restart or minutes later."""
    with monkeypatch.context() as patch:
        patch.setattr(ack_module, "_stamp", lambda: stamp)
        yield


async def settled(*bridges) -> None:  # type: ignore[no-untyped-def]
    """Wait until every ACK record queued so far has been written (write-behind lands after the AA)."""
    for bridge in bridges:
        await bridge.durable.close()


def state_items(twin) -> list[dict]:  # type: ignore[no-untyped-def]
    ddb = local_client("dynamodb", twin.endpoint)
    items = ddb.scan(TableName=twin.tables["state"])["Items"]
    return [i for i in items if i["pk"]["S"].startswith("mllp-ack#")]


def test_resend_to_another_task_gets_the_original_ack_byte_for_byte(twin, pki, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async def run():  # type: ignore[no-untyped-def]
        async with running(settings_for(pki), twin) as a, running(settings_for(pki), twin) as b:
            first = await send_raw(a, pki, oru(1))
            await settled(a)
            with later(monkeypatch):
                fresh = await send_raw(a, pki, oru(2))  # control: a new message gets the new MSH-7
                resent = await send_raw(b, pki, oru(1))
            return first, fresh, resent, b.metrics.total(m.DUPLICATES, "store"), b.committer.stats.entries

    first, fresh, resent, from_store, b_committed = asyncio.run(run())
    assert parse_ack(first).code == "AA" and b"20300101" in fresh
    assert resent == first  # byte-identical, MSH-7 included
    assert from_store == 1 and b_committed == 0  # B answered from the table and sent nothing to SQS
    queued = drain_queue(twin)
    assert sorted(q["attributes"]["msh10"] for q in queued) == ["CID1", "CID2"]
    [item] = [i for i in state_items(twin) if i["sk"]["S"].startswith("CID1#")]
    assert item["pk"]["S"] == "mllp-ack#demo-health#demo-lab"
    assert base64.b64decode(item["ack"]["S"]) == first
    assert item["message_id"]["S"] == next(q["message_id"] for q in queued if q["attributes"]["msh10"] == "CID1")
    ttl = int(item["expires_at"]["N"]) - time.time()
    assert 7 * 24 * 3600 - 120 < ttl <= 7 * 24 * 3600
    # Only the ACK (MSH, MSA) is kept: nothing of the message's content.
    for item in state_items(twin):
        stored = base64.b64decode(item["ack"]["S"])
        assert stored.startswith(b"MSH|") and not any(value in stored for value in PHI)


def test_resend_after_a_restart_gets_the_original_ack(twin, pki, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async def run():  # type: ignore[no-untyped-def]
        async with running(settings_for(pki), twin) as before:
            first = await send_raw(before, pki, oru(1))
        # The task was replaced (deploy, crash): a new process, empty memory, same table.
        with later(monkeypatch):
            async with running(settings_for(pki), twin, ) as after:
                resent = await send_raw(after, pki, oru(1))
                again = await send_raw(after, pki, oru(1))  # now from this task's memory
                return (first, resent, again, after.metrics.total(m.DUPLICATES, "store"),
                        after.metrics.total(m.DUPLICATES, "memory"), after.committer.stats.entries)

    first, resent, again, from_store, from_memory, committed = asyncio.run(run())
    assert resent == first and again == first
    assert (from_store, from_memory, committed) == (1, 1, 0)
    assert [q["attributes"]["msh10"] for q in drain_queue(twin)] == ["CID1"]


def test_ack_store_write_failure_still_answers_aa_and_counts_it(twin, pki, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async def run():  # type: ignore[no-untyped-def]
        # Write-through: the failed write is known (and counted) before the AA goes out.
        async with running(settings_for(pki, ack_store_write_behind=False), twin) as a, \
                running(settings_for(pki), twin) as b:
            real = a.durable.store
            # Writes go to a table that does not exist (a real DynamoDB error); lookups still work.
            broken = DynamoAckStore("ehrbridge-no-such-table")
            real.put_many = broken.put_many  # type: ignore[method-assign]
            first = await send_raw(a, pki, oru(1))
            broken.close()
            with later(monkeypatch):
                resent = await send_raw(b, pki, oru(1))
            await settled(b)
            return (first, resent, a.metrics.total(m.ACK_STORE_FAILED), a.metrics.snapshot()["counters"],
                    b.committer.stats.entries)

    first, resent, failures, counters, b_committed = asyncio.run(run())
    assert parse_ack(first).code == "AA"
    assert failures == 1 and counters[m.ACK_STORE_FAILED] == {"demo-health/write_ResourceNotFoundException": 1}
    # Nothing stored to replay: B commits again and answers a fresh AA for the same message (same MSH-10
    # and MSA-2, new MSH-7); the FIFO deduplication id keeps the queue to one copy.
    assert b_committed == 1 and resent != first
    assert resent.split(b"\r")[0].split(b"|")[9] == first.split(b"\r")[0].split(b"|")[9]
    assert parse_ack(resent).control_id == "CID1"
    [item] = state_items(twin)  # B's ACK, stored: from now on every task replays that one
    assert base64.b64decode(item["ack"]["S"]) == resent
    assert [q["attributes"]["msh10"] for q in drain_queue(twin)] == ["CID1"]


def test_ack_store_down_entirely_still_commits_and_answers(twin, pki) -> None:  # type: ignore[no-untyped-def]
    async def run():  # type: ignore[no-untyped-def]
        async with running(settings_for(pki), twin) as bridge:
            bridge.durable.store.table_name = "ehrbridge-no-such-table"  # type: ignore[union-attr]
            async with client(bridge, pki) as c:
                codes = [(await c.send(oru(n))).code for n in (1, 2)]
            await settled(bridge)  # write-behind: the write failures are counted after the AAs
            return codes, bridge.metrics.snapshot()["counters"][m.ACK_STORE_FAILED]

    codes, failed = asyncio.run(run())
    assert codes == ["AA", "AA"]
    assert failed == {"demo-health/read_ResourceNotFoundException": 2,
                      "demo-health/write_ResourceNotFoundException": 2}
    assert [q["attributes"]["msh10"] for q in drain_queue(twin)] == ["CID1", "CID2"]


def test_reused_control_id_with_other_bytes_is_not_replayed(twin, pki, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    changed = oru(1).replace(b"13.1", b"14.1")

    async def run():  # type: ignore[no-untyped-def]
        async with running(settings_for(pki), twin) as a, running(settings_for(pki), twin) as b:
            first = await send_raw(a, pki, oru(1))
            with later(monkeypatch):
                second = await send_raw(a, pki, changed)  # same MSH-10, other bytes: a new message
            await settled(a)
            with later(monkeypatch, "20310101000000+0000"):
                resent_second = await send_raw(b, pki, changed)
                resent_first = await send_raw(b, pki, oru(1))
            return first, second, resent_first, resent_second, b.committer.stats.entries

    first, second, resent_first, resent_second, b_committed = asyncio.run(run())
    assert parse_ack(first).code == parse_ack(second).code == "AA" and second != first
    assert parse_ack(second).control_id == "CID1"
    # Each resend gets its own message's original ACK; neither is committed again.
    assert resent_second == second and resent_first == first and b_committed == 0
    queued = drain_queue(twin)
    assert [q["attributes"]["msh10"] for q in queued] == ["CID1", "CID1"]
    assert "msh10_collision" not in queued[0]["attributes"] and queued[1]["attributes"]["msh10_collision"] == "true"
    assert len(state_items(twin)) == 2


class GatedSink:
    """Holds every batch until released, then forwards to the real SQS sink."""

    def __init__(self, inner: SqsSink) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.waiting = 0

    async def send_batch(self, entries: list[Entry]) -> dict[str, str]:
        self.waiting += 1
        await self.gate.wait()
        return await self.inner.send_batch(entries)

    def close(self) -> None:
        self.inner.close()


async def wait_for(predicate) -> None:  # type: ignore[no-untyped-def]
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def test_two_tasks_racing_on_one_resend_end_with_one_stored_ack(twin, pki, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async def run():  # type: ignore[no-untyped-def]
        through = settings_for(pki, ack_store_write_behind=False)  # the loser learns the winner's ACK in time
        async with running(through, twin) as a, running(through, twin) as b:
            gates = []
            for bridge in (a, b):
                gated = GatedSink(bridge.committer.sink)  # type: ignore[arg-type]
                bridge.committer.sink = gated
                gates.append(gated)
            # The sender gave up on A (its SQS is slow) and resent to B: both looked the message up,
            # found nothing, and are committing it.
            to_a = asyncio.create_task(send_raw(a, pki, oru(1)))
            await wait_for(lambda: gates[0].waiting == 1)
            to_b = asyncio.create_task(send_raw(b, pki, oru(1)))
            await wait_for(lambda: gates[1].waiting == 1)
            gates[0].gate.set()  # A wins: its commit returns first and it stores its ACK
            from_a = await to_a
            with later(monkeypatch):  # B's own ACK would carry another MSH-7
                gates[1].gate.set()
                from_b = await to_b
            for bridge, gated in zip((a, b), gates, strict=True):
                bridge.committer.sink = gated.inner
            return from_a, from_b, b.metrics.total(m.DUPLICATES, "write"), b.metrics.total(m.ACK_STORE_FAILED)

    from_a, from_b, races, failures = asyncio.run(run())
    assert parse_ack(from_a).code == "AA" and b"20300101" not in from_a
    assert from_b == from_a  # the loser answered with the winner's stored ACK
    assert races == 1 and failures == 0
    [item] = state_items(twin)
    assert base64.b64decode(item["ack"]["S"]) == from_a
    assert [q["attributes"]["msh10"] for q in drain_queue(twin)] == ["CID1"]  # FIFO deduplication


def test_a_replay_is_as_silent_as_the_first_answer(twin, pki) -> None:  # type: ignore[no-untyped-def]
    never = oru(5).replace(b"|P|2.5.1\r", b"|P|2.5.1|||NE|NE\r")  # enhanced mode: no accept ACK, ever

    async def run():  # type: ignore[no-untyped-def]
        async with running(settings_for(pki), twin) as a, running(settings_for(pki), twin) as b:
            answers = []
            for bridge in (a, b, b):  # first copy, resend from the table, resend from memory
                async with client(bridge, pki) as c:
                    await c.write(never)
                    answers.append(await c.send(oru(6)))  # the next answer must be this message's
                await settled(bridge)
            return answers, b.metrics.total(m.DUPLICATES, "store"), b.metrics.total(m.DUPLICATES, "memory")

    answers, from_store, from_memory = asyncio.run(run())
    assert [(a.code, a.control_id) for a in answers] == [("AA", "CID6")] * 3
    assert (from_store, from_memory) == (2, 2)  # CID5 from the table, then CID6 from it; then both from memory
    assert sorted(q["attributes"]["msh10"] for q in drain_queue(twin)) == ["CID5", "CID6"]


@pytest.mark.parametrize("write_behind", [False, True], ids=["write_through", "write_behind"])
def test_a_resend_later_on_a_connection_gets_the_original_ack_from_the_conditional_write(  # type: ignore[no-untyped-def]
        twin, pki, monkeypatch, write_behind: bool) -> None:
    async def run():  # type: ignore[no-untyped-def]
        async with running(settings_for(pki), twin) as a, \
                running(settings_for(pki, ack_store_lookup_first=1, ack_store_write_behind=write_behind), twin) as b:
            first = await send_raw(a, pki, oru(1))
            await settled(a)
            with later(monkeypatch):
                async with client(b, pki) as c:
                    other = await c.send_raw(oru(2))  # the connection's first frame: looked up
                    resent = await c.send_raw(oru(1))  # not looked up: committed, then the write finds the ACK
                    await settled(b)
                    again = await c.send_raw(oru(1))  # from B's memory
            return (first, other, resent, again, b.metrics.total(m.DUPLICATES, "write"),
                    b.metrics.total(m.DUPLICATES, "write_late"), b.durable.stats.gets, b.committer.stats.entries)

    first, other, resent, again, from_write, late, lookups, b_committed = asyncio.run(run())
    assert parse_ack(other).control_id == "CID2"
    if write_behind:
        # Answered before the write learnt of the stored ACK: a fresh AA with the same MSH-10 and MSA-2 ...
        assert resent != first and (from_write, late) == (0, 1)
        assert resent.split(b"\r")[0].split(b"|")[9] == first.split(b"\r")[0].split(b"|")[9]
        assert parse_ack(resent).control_id == "CID1"
    else:
        assert resent == first and (from_write, late) == (1, 0)
    assert again == first  # ... and from then on B replays the stored one (its memory took it)
    assert lookups == 1 and b_committed == 2
    # The second copy sent to SQS carried the same deduplication id: still one queue message.
    assert sorted(q["attributes"]["msh10"] for q in drain_queue(twin)) == ["CID1", "CID2"]


def test_without_conditional_writes_every_frame_is_looked_up(twin, pki, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async def run():  # type: ignore[no-untyped-def]
        async with running(settings_for(pki, ack_store_conditional=False), twin) as a, \
                running(settings_for(pki, ack_store_conditional=False, ack_store_lookup_first=0), twin) as b:
            first = await send_raw(a, pki, oru(1))
            await settled(a)
            with later(monkeypatch):
                async with client(b, pki) as c:
                    await c.send_raw(oru(2))
                    resent = await c.send_raw(oru(1))  # last-writer-wins must not overwrite: looked up
            return first, resent, b.metrics.total(m.DUPLICATES, "store"), b.committer.stats.entries

    first, resent, from_store, b_committed = asyncio.run(run())
    assert resent == first and from_store == 1 and b_committed == 1
    assert len(state_items(twin)) == 2


# ---- write-behind (the default): the AA does not wait for the ACK store --------------------------
class GatedStore:
    """Wraps a bridge's ACK store: every write waits at a gate (counted), then goes to ``inner``."""

    def __init__(self, inner, writes_to=None) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.writes_to = writes_to or inner
        self.gate = asyncio.Event()
        self.waiting = 0
        self.written = 0

    async def get_many(self, keys):  # type: ignore[no-untyped-def]
        return await self.inner.get_many(keys)

    async def put_many(self, records):  # type: ignore[no-untyped-def]
        self.waiting += 1
        await self.gate.wait()
        try:
            return await self.writes_to.put_many(records)
        finally:
            self.written += 1

    def close(self) -> None:
        self.inner.close()


def test_write_behind_answers_before_the_ack_is_stored_and_the_record_lands_after(twin, pki, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async def run():  # type: ignore[no-untyped-def]
        slow = settings_for(pki, ack_store_timeout_s=30)  # the gate, not the store timeout, decides here
        async with running(slow, twin) as a, running(settings_for(pki), twin) as b:
            gated = GatedStore(a.durable.store)
            a.durable.store = gated
            first = await send_raw(a, pki, oru(1))
            # The AA is here while its write is still held at the gate: nothing stored yet.
            await wait_for(lambda: gated.waiting == 1)
            pending = (gated.written, len(state_items(twin)), a.metrics.total(m.ACKS, "AA"))
            gated.gate.set()
            await settled(a)
            landed = state_items(twin)
            with later(monkeypatch):
                resent = await send_raw(b, pki, oru(1))
            return (first, pending, landed, resent, b.metrics.total(m.DUPLICATES, "store"), b.committer.stats.entries,
                    a.metrics.total(m.ACK_STORE_FAILED), a.metrics.total(m.DUPLICATES))

    first, pending, landed, resent, from_store, b_committed, failures, a_duplicates = asyncio.run(run())
    assert parse_ack(first).code == "AA" and pending == (0, 0, 1)
    [item] = landed
    assert base64.b64decode(item["ack"]["S"]) == first
    assert resent == first and from_store == 1 and b_committed == 0  # another task replays it byte for byte
    assert failures == 0 and a_duplicates == 0
    assert [q["attributes"]["msh10"] for q in drain_queue(twin)] == ["CID1"]


def test_write_behind_failure_after_the_aa_is_counted_and_the_message_is_queued(twin, pki) -> None:  # type: ignore[no-untyped-def]
    async def run():  # type: ignore[no-untyped-def]
        async with running(settings_for(pki, ack_store_timeout_s=30), twin) as a:
            broken = DynamoAckStore("ehrbridge-no-such-table")  # a real DynamoDB error, after the gate
            gated = GatedStore(a.durable.store, writes_to=broken)
            a.durable.store = gated
            async with client(a, pki) as c:
                answers = [await c.send(oru(n)) for n in (1, 2)]
            await wait_for(lambda: gated.waiting >= 1)
            before = a.metrics.total(m.ACK_STORE_FAILED)
            gated.gate.set()
            await settled(a)
            broken.close()
            return answers, before, a.metrics.snapshot()["counters"][m.ACK_STORE_FAILED], a.metrics.total(m.ACKS)

    answers, before, failed, acks = asyncio.run(run())
    assert [(x.code, x.control_id) for x in answers] == [("AA", "CID1"), ("AA", "CID2")]
    assert before == 0  # both AAs went out before any write had failed
    assert failed == {"demo-health/write_ResourceNotFoundException": 2}
    assert acks == 2  # counted once each: a failed background write never answers the connection again
    assert state_items(twin) == []
    assert [q["attributes"]["msh10"] for q in drain_queue(twin)] == ["CID1", "CID2"]


def test_write_behind_racing_tasks_each_answer_and_one_ack_is_stored(twin, pki, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async def run():  # type: ignore[no-untyped-def]
        async with running(settings_for(pki), twin) as a, running(settings_for(pki), twin) as b:
            gates = []
            for bridge in (a, b):
                gated = GatedSink(bridge.committer.sink)  # type: ignore[arg-type]
                bridge.committer.sink = gated
                gates.append(gated)
            to_a = asyncio.create_task(send_raw(a, pki, oru(1)))
            await wait_for(lambda: gates[0].waiting == 1)
            to_b = asyncio.create_task(send_raw(b, pki, oru(1)))
            await wait_for(lambda: gates[1].waiting == 1)
            gates[0].gate.set()
            from_a = await to_a
            await settled(a)  # A's ACK is in the table before B's commit returns
            with later(monkeypatch):
                gates[1].gate.set()
                from_b = await to_b  # B answered at once with its own ACK
                await settled(b)
                again = await send_raw(b, pki, oru(1))  # from B's memory, which took the stored ACK
            for bridge, gated in zip((a, b), gates, strict=True):
                bridge.committer.sink = gated.inner
            return (from_a, from_b, again, b.metrics.total(m.DUPLICATES, "write_late"),
                    b.metrics.total(m.DUPLICATES, "write"), b.metrics.total(m.ACKS),
                    b.metrics.total(m.ACK_STORE_FAILED))

    from_a, from_b, again, late, through, b_acks, failures = asyncio.run(run())
    assert parse_ack(from_a).code == parse_ack(from_b).code == "AA"
    assert from_b != from_a and b"20300101" in from_b  # fresh: same MSH-10 and MSA-2, another MSH-7
    assert from_b.split(b"\r")[0].split(b"|")[9] == from_a.split(b"\r")[0].split(b"|")[9]
    assert parse_ack(from_b).control_id == parse_ack(from_a).control_id == "CID1"
    assert (late, through, failures) == (1, 0, 0)
    assert b_acks == 2  # B's first copy and the replay: the late write did not answer a second time
    assert again == from_a
    [item] = state_items(twin)
    assert base64.b64decode(item["ack"]["S"]) == from_a  # the first stored ACK stays the fleet's answer
    assert [q["attributes"]["msh10"] for q in drain_queue(twin)] == ["CID1"]


def test_drain_flushes_write_behind_records(twin, pki, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async def run():  # type: ignore[no-untyped-def]
        # Writes would linger far past the test: only the drain's flush can store them.
        lingering = settings_for(pki, ack_store_write_linger_s=600)
        async with running(lingering, twin) as a:
            async with client(a, pki) as c:
                answers = [await c.send(oru(n)) for n in (1, 2, 3)]
            pending = (a.durable.backlog, len(state_items(twin)))
        after = state_items(twin)  # the bridge drained (as on SIGTERM)
        with later(monkeypatch):
            async with running(settings_for(pki), twin) as b:
                resent = await send_raw(b, pki, oru(2))
                return answers, pending, after, resent, b.committer.stats.entries

    answers, pending, after, resent, b_committed = asyncio.run(run())
    assert [x.code for x in answers] == ["AA"] * 3
    assert pending == (3, 0)
    assert sorted(i["sk"]["S"].split("#")[0] for i in after) == ["CID1", "CID2", "CID3"]
    assert parse_ack(resent).control_id == "CID2" and b"20300101" not in resent and b_committed == 0
    assert [q["attributes"]["msh10"] for q in drain_queue(twin)] == ["CID1", "CID2", "CID3"]
