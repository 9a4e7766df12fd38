"""The worker's ACK memory: replay, joining a copy still being committed, MSH-10 collisions."""

from __future__ import annotations

import asyncio

from ehrbridge.mllp.dedupe import AckCache


def test_a_resend_joins_the_copy_in_flight_and_gets_its_answer() -> None:
    async def run() -> None:
        acks = AckCache()
        assert acks.inflight("k") is None
        acks.begin("k")
        waiting = acks.inflight("k")
        assert waiting is not None and acks.inflight("k") is waiting  # one future, made on first ask
        acks.end("k", b"ACK")
        assert await waiting == b"ACK" and acks.get("k") == b"ACK" and acks.inflight("k") is None

    asyncio.run(run())


def test_a_failed_copy_releases_its_waiters_and_is_not_replayed() -> None:
    async def run() -> None:
        acks = AckCache()
        acks.begin("k")
        waiting = acks.inflight("k")
        acks.end("k", None)
        assert waiting is not None and await waiting is None  # the resend is handled afresh
        assert acks.get("k") is None and acks.inflight("k") is None
        acks.begin("j")
        acks.end("j", b"A")  # nobody waited: no future was ever made
        acks.end("j", None)  # a second end (error path after the answer) changes nothing
        assert acks.get("j") == b"A"

    asyncio.run(run())


def test_collision_is_per_tenant_source_and_control_id() -> None:
    acks = AckCache()
    assert not acks.collision("t", "s", "C1", "h1")
    assert not acks.collision("t", "s", "C1", "h1")  # same bytes again: a resend, not a collision
    assert acks.collision("t", "s", "C1", "h2")
    assert not acks.collision("t", "s2", "C1", "h3") and not acks.collision("t2", "s", "C1", "h3")
    assert not acks.collision("t", "s", "C", "h9")  # ids are length-prefixed: no ambiguous joins
    assert not acks.collision("t", "sC", "", "h8") and not acks.collision("ts", "", "C", "h7")
