"""Two bridge workers racing on the same MSH-10 against the local twin (hardened moto over HTTP).

The twin used to fail here: concurrent ``TransactWriteItems`` from two workers crashed inside moto
(HTTP 500), so the durable ACK store mostly failed locally and a resend's original ACK could not be
shown. Each worker is its own ``MllpBridge`` (own memory, batches, thread pools), sharing only the
twin's queue and state table, as two ``bridge serve`` workers or two Fargate tasks do.
"""

from __future__ import annotations

import asyncio

import pytest

from ehrbridge.mllp import metrics as m
from ehrbridge.mllp.client import parse_ack

from .conftest import drain_queue, oru, running, settings_for
from .test_resend_durable import later, send_raw, settled, state_items

pytestmark = pytest.mark.integration
MESSAGES = range(1, 11)
# These tests are about the race, not latency: on a loaded CI machine a fresh worker's first store call
# (which also creates its boto3 client) can pass the 1 s store default, and a commit the directory's 3 s
# ACK timeout (the sender then gets AE and would resend): both are given room here.
STORE_TIMEOUT_S = 15.0
ACK_TIMEOUT_S = 8.0  # under send_raw's 10 s client timeout


@pytest.fixture(autouse=True)
def event_loop_impl() -> str:
    """The race is in the store, not the event loop: one loop (asyncio's) instead of the directory's two."""
    return "asyncio"


def worker_figures(*bridges) -> list[tuple[int, int, int]]:  # type: ignore[no-untyped-def]
    return [(b.metrics.total(m.DUPLICATES, "store"), b.committer.stats.entries, b.metrics.total(m.ACK_STORE_FAILED))
            for b in bridges]


def test_two_workers_resending_the_same_msh10_concurrently_get_the_original_ack(  # type: ignore[no-untyped-def]
        twin, pki, moto_server, monkeypatch) -> None:
    errors_before = moto_server.stats()["errors_total"]
    # The default write-behind: the ACK stored after it is sent.
    behind = settings_for(pki, ack_store_timeout_s=STORE_TIMEOUT_S, ack_timeout_s=ACK_TIMEOUT_S)

    async def run():  # type: ignore[no-untyped-def]
        async with running(behind, twin) as first:
            originals = await asyncio.gather(*(send_raw(first, pki, oru(n)) for n in MESSAGES))
            await settled(first)
        with later(monkeypatch):  # a fresh ACK would now carry another MSH-7: only a replay is byte-identical
            async with running(behind, twin) as b, running(behind, twin) as c:
                # Every message resent to both workers at the same time, each copy on its own connection.
                resent = await asyncio.gather(*(send_raw(w, pki, oru(n)) for n in MESSAGES for w in (b, c)))
                return originals, resent, worker_figures(b, c)

    originals, resent, figures = asyncio.run(run())
    assert all(parse_ack(ack).code == "AA" for ack in originals)
    assert resent == [ack for ack in originals for _ in (1, 2)]  # the original, byte for byte, from both
    assert figures == [(10, 0, 0), (10, 0, 0)]  # from the store; nothing committed again; no store failure
    assert sorted(q["attributes"]["msh10"] for q in drain_queue(twin)) == sorted(f"CID{n}" for n in MESSAGES)
    assert moto_server.stats()["errors_total"] == errors_before


def test_two_workers_taking_the_same_new_message_at_once_answer_one_stored_ack(  # type: ignore[no-untyped-def]
        twin, pki, moto_server) -> None:
    errors_before = moto_server.stats()["errors_total"]
    # Write-through: the ACK is stored before it is sent.
    through = settings_for(pki, ack_store_write_behind=False, ack_store_timeout_s=STORE_TIMEOUT_S,
                           ack_timeout_s=ACK_TIMEOUT_S)

    async def run():  # type: ignore[no-untyped-def]
        async with running(through, twin) as b, running(through, twin) as c:
            answers = await asyncio.gather(*(send_raw(w, pki, oru(n)) for n in MESSAGES for w in (b, c)))
            await settled(b, c)
            return answers, worker_figures(b, c)

    answers, figures = asyncio.run(run())
    pairs = [(answers[i], answers[i + 1]) for i in range(0, len(answers), 2)]
    # Both copies were committed (FIFO dedup keeps one), one conditional write won, the other answered with it.
    assert all(x == y and parse_ack(x).code == "AA" for x, y in pairs), [(x, y, figures) for x, y in pairs if x != y]
    assert [failed for _, _, failed in figures] == [0, 0]
    assert sum(committed for _, committed, _ in figures) == 2 * len(MESSAGES)
    stored = {item["sk"]["S"].split("#")[0] for item in state_items(twin)}
    assert stored == {f"CID{n}" for n in MESSAGES}
    assert sorted(q["attributes"]["msh10"] for q in drain_queue(twin)) == sorted(f"CID{n}" for n in MESSAGES)
    assert moto_server.stats()["errors_total"] == errors_before
