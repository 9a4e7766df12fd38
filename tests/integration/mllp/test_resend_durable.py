"""Resend replay across bridge instances (other workers/tasks) and restarts, through the state table.

Every bridge here is a separate ``MllpBridge`` with its own memory, batches and TLS listener on
127.0.0.1, sharing only what two Fargate tasks share: the moto SQS queue and DynamoDB table of the twin.
A resend that arrives "later" is simulated by moving the ACK clock (MSH-7) forward, so a freshly built
ACK would differ from the original and only a replay can be byte-identical.
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


def state_items(twin) -> list[dict]:  # type: ignore[no-untyped-def]
    ddb = local_client("dynamodb", twin.endpoint)
    items = ddb.scan(TableName=twin.tables["state"])["Items"]
    return [i for i in items if i["pk"]["S"].startswith("mllp-ack#")]


def test_resend_to_another_task_gets_the_original_ack_byte_for_byte(twin, pki, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async def run():  # type: ignore[no-untyped-def]
        async with running(settings_for(pki), twin) as a, running(settings_for(pki), twin) as b:
            first = await send_raw(a, pki, oru(1))
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
        async with running(settings_for(pki), twin) as a, running(settings_for(pki), twin) as b:
            real = a.durable.store
            # Writes go to a table that does not exist (a real DynamoDB error); lookups still work.
            broken = DynamoAckStore("ehrbridge-no-such-table")
            real.put_many = broken.put_many  # type: ignore[method-assign]
            first = await send_raw(a, pki, oru(1))
            broken.close()
            with later(monkeypatch):
                resent = await send_raw(b, pki, oru(1))
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


def test_two_tasks_racing_on_one_resend_end_with_one_stored_ack(twin, pki, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async def wait_for(predicate) -> None:  # type: ignore[no-untyped-def]
        for _ in range(500):
            if predicate():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("timed out")

    async def run():  # type: ignore[no-untyped-def]
        async with running(settings_for(pki), twin) as a, running(settings_for(pki), twin) as b:
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
            return answers, b.metrics.total(m.DUPLICATES, "store"), b.metrics.total(m.DUPLICATES, "memory")

    answers, from_store, from_memory = asyncio.run(run())
    assert [(a.code, a.control_id) for a in answers] == [("AA", "CID6")] * 3
    assert (from_store, from_memory) == (2, 2)  # CID5 from the table, then CID6 from it; then both from memory
    assert sorted(q["attributes"]["msh10"] for q in drain_queue(twin)) == ["CID5", "CID6"]


def test_a_resend_later_on_a_connection_gets_the_original_ack_from_the_conditional_write(  # type: ignore[no-untyped-def]
        twin, pki, monkeypatch) -> None:
    async def run():  # type: ignore[no-untyped-def]
        async with running(settings_for(pki), twin) as a, \
                running(settings_for(pki, ack_store_lookup_first=1), twin) as b:
            first = await send_raw(a, pki, oru(1))
            with later(monkeypatch):
                async with client(b, pki) as c:
                    other = await c.send_raw(oru(2))  # the connection's first frame: looked up
                    resent = await c.send_raw(oru(1))  # not looked up: committed, then the write finds the ACK
            return (first, other, resent, b.metrics.total(m.DUPLICATES, "write"), b.durable.stats.gets,
                    b.committer.stats.entries)

    first, other, resent, from_write, lookups, b_committed = asyncio.run(run())
    assert parse_ack(other).control_id == "CID2"
    assert resent == first and from_write == 1
    assert lookups == 1 and b_committed == 2
    # The second copy sent to SQS carried the same deduplication id: still one queue message.
    assert sorted(q["attributes"]["msh10"] for q in drain_queue(twin)) == ["CID1", "CID2"]


def test_without_conditional_writes_every_frame_is_looked_up(twin, pki, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async def run():  # type: ignore[no-untyped-def]
        async with running(settings_for(pki, ack_store_conditional=False), twin) as a, \
                running(settings_for(pki, ack_store_conditional=False, ack_store_lookup_first=0), twin) as b:
            first = await send_raw(a, pki, oru(1))
            with later(monkeypatch):
                async with client(b, pki) as c:
                    await c.send_raw(oru(2))
                    resent = await c.send_raw(oru(1))  # last-writer-wins must not overwrite: looked up
            return first, resent, b.metrics.total(m.DUPLICATES, "store"), b.committer.stats.entries

    first, resent, from_store, b_committed = asyncio.run(run())
    assert resent == first and from_store == 1 and b_committed == 1
    assert len(state_items(twin)) == 2
