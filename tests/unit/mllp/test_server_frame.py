"""The per-frame path (``MllpBridge.handle`` + ``_Frame``) without sockets or TLS: a fake transport
records what the bridge writes, a fake sink what it commits."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from ehrbridge.contracts.tenant import MllpSource, TenantConfig
from ehrbridge.mllp import server as server_module
from ehrbridge.mllp.ack_store import DurableAcks, InMemoryAckStore
from ehrbridge.mllp.client import parse_ack
from ehrbridge.mllp.commit import GroupCommitter
from ehrbridge.mllp.framing import frame
from ehrbridge.mllp.metrics import BridgeMetrics
from ehrbridge.mllp.server import BridgeSettings, MllpBridge, MllpConnection
from tests.support import RecordingSink as Sink
from tests.support import RecordingTransport

TENANT = TenantConfig(tenant_id="t1", vendor="generic",
                      mllp_sources=(MllpSource(source_id="lab", sending_application="DEMOLAB"),))


def oru(control_id: str = "C1", ack_type: str = "") -> bytes:
    msh15 = f"|||{ack_type}" if ack_type else ""
    return (f"MSH|^~\\&|DEMOLAB|LABFAC|EHRBRIDGE|HOSP|20240102030405||ORU^R01^ORU_R01|{control_id}|P|2.5.1{msh15}\r"
            "PID|1||MRN1^^^MRN^MR||DOE^JANE\rOBR|1|ORD1||58410-2^CBC^LN\rOBX|1|NM|718-7^Hgb^LN||13|g/dL\r").encode()


class FakeTransport(RecordingTransport):
    def acks(self) -> list[str]:
        return [parse_ack(w.strip(b"\x0b\x1c\r")).code for w in self.written]



def make_bridge(sink: Sink, **settings: object) -> MllpBridge:
    durable = settings.pop("durable", None)
    cfg = BridgeSettings(certfile=Path("unused.crt"), keyfile=Path("unused.key"), health_port=None,
                         **settings)  # type: ignore[arg-type]
    return MllpBridge(cfg, [TENANT], GroupCommitter(sink, linger_s=0.001),
                      metrics=BridgeMetrics(interval=3600), ssl_context=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
                      ack_store=durable)  # type: ignore[arg-type]


async def send(conn: MllpConnection, transport: FakeTransport, raw: bytes, answers: int) -> None:
    conn.data_received(frame(raw))
    for _ in range(200):
        if len(transport.written) >= answers:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("no answer")


def test_aa_after_commit_and_a_resend_replays_the_same_ack() -> None:
    async def run() -> tuple[FakeTransport, Sink, MllpBridge]:
        sink = Sink()
        bridge = make_bridge(sink)
        conn = MllpConnection(bridge, 1 << 20)
        transport = FakeTransport()
        conn.connection_made(transport)
        await send(conn, transport, oru(), 1)
        await send(conn, transport, oru(), 2)  # the sender did not see the ACK: same bytes again
        return transport, sink, bridge

    transport, sink, bridge = asyncio.run(run())
    assert transport.acks() == ["AA", "AA"]
    assert transport.written[0] == transport.written[1]
    assert len(sink.entries) == 1
    assert bridge.metrics.total("MllpDuplicates", "memory") == 1


def test_a_bug_after_the_commit_still_accepts_and_releases_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13 item 2: never AE ("resend") for a message the queue confirmed; a minimal accept instead."""
    real = server_module.build_ack
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("bug in the answer")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(server_module, "build_ack", flaky)

    async def run() -> tuple[FakeTransport, Sink]:
        sink = Sink()
        bridge = make_bridge(sink)
        conn = MllpConnection(bridge, 1 << 20)
        transport = FakeTransport()
        conn.connection_made(transport)
        await send(conn, transport, oru(), 1)
        assert not conn.busy
        await send(conn, transport, oru(), 2)  # handled afresh, not stuck on the first copy
        return transport, sink

    transport, sink = asyncio.run(run())
    assert transport.acks() == ["AA", "AA"] and b"|207" not in transport.written[0]
    assert parse_ack(transport.written[0].strip(b"\x0b\x1c\r")).control_id == "C1"
    # Committed twice under one FIFO deduplication id (the stable message id): one copy in the queue.
    assert len(sink.entries) == 2 and sink.entries[0].dedup_id == sink.entries[1].dedup_id


def test_write_through_answers_with_the_ack_stored_first() -> None:
    async def run() -> tuple[FakeTransport, bytes]:
        store = InMemoryAckStore()
        durable = DurableAcks(store, linger_s=0.001, write_linger_s=0.001, timeout_s=1.0)
        sink = Sink()
        bridge = make_bridge(sink, durable=durable, ack_store_write_behind=False, ack_store_lookup_first=0)
        conn = MllpConnection(bridge, 1 << 20)
        transport = FakeTransport()
        conn.connection_made(transport)
        await send(conn, transport, oru(), 1)
        first = transport.written[0]
        # Another task's memory: a fresh bridge on the same store, no lookup, so only the write learns it.
        other = make_bridge(Sink(), durable=DurableAcks(store, linger_s=0.001, write_linger_s=0.001, timeout_s=1.0),
                            ack_store_write_behind=False, ack_store_lookup_first=0)
        conn2 = MllpConnection(other, 1 << 20)
        transport2 = FakeTransport()
        conn2.connection_made(transport2)
        await asyncio.sleep(1.1)  # a second later: a fresh ACK would carry another MSH-7
        await send(conn2, transport2, oru(), 1)
        assert other.metrics.total("MllpDuplicates", "write") == 1
        return transport2, first

    transport2, first = asyncio.run(run())
    assert transport2.written == [first]


def test_enhanced_mode_never_ack_stays_silent_but_commits() -> None:
    async def run() -> tuple[FakeTransport, Sink, MllpConnection]:
        sink = Sink()
        bridge = make_bridge(sink)
        conn = MllpConnection(bridge, 1 << 20)
        transport = FakeTransport()
        conn.connection_made(transport)
        conn.data_received(frame(oru("C9", "NE")))
        for _ in range(200):
            if sink.entries and not conn.busy:
                break
            await asyncio.sleep(0.005)
        return transport, sink, conn

    transport, sink, conn = asyncio.run(run())
    assert len(sink.entries) == 1 and transport.written == [] and not conn.busy
