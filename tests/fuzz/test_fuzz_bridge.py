"""Fuzz: the bridge's per-connection path (framing -> header -> routing -> checks -> commit/quarantine -> ACK)
without sockets. Random frames (mutated messages, raw bytes, oversized ones) arrive in random read sizes.

Every frame the decoder completes gets exactly one answer (``finish``: an ACK, or the silence MSH-15
asks for), in order, or a deliberate close that is counted. With a working queue and quarantine,
each frame is either committed (accept) or quarantined (refusal), never both, never neither, and
never answered AE 207 ("not stored; resend").
"""

from __future__ import annotations

import asyncio
import random
import ssl
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from ehrbridge.contracts.tenant import MllpSource, TenantConfig
from ehrbridge.mllp.commit import GroupCommitter
from ehrbridge.mllp.framing import FrameTooLarge, MllpDecoder, frame
from ehrbridge.mllp.metrics import BridgeMetrics
from ehrbridge.mllp.server import BridgeSettings, MllpBridge, MllpConnection
from tests.support import RecordingSink as Sink
from tests.support import RecordingTransport

from . import stats
from .strategies import fan_out, hl7_bytes, inputs_per_example

TARGET = "bridge_frames"
TENANT = TenantConfig(tenant_id="t1", vendor="generic", mllp_sources=(
    MllpSource(source_id="lab", sending_application="DEMOLAB"),
    MllpSource(source_id="adt", sending_application="DEMOADT", default_charset="8859/1")))
_SSL = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
_LOOP = asyncio.new_event_loop()



class Quarantine:
    def __init__(self) -> None:
        self.items: list[tuple[bytes, str]] = []

    async def put(self, raw: bytes, *, tenant_id: str, kind: str, reason: str) -> None:
        self.items.append((raw, reason))


class Counting(MllpConnection):
    def __init__(self, bridge: MllpBridge, limit: int) -> None:
        super().__init__(bridge, limit)
        self.answers: list[bytes | None] = []

    def finish(self, tenant: str, payload: bytes | None, *, close: bool = False) -> None:
        self.answers.append(payload)
        super().finish(tenant, payload, close=close)


def _expected(stream: bytes, limit: int) -> tuple[int, bool]:
    decoder = MllpDecoder(limit)
    try:
        return len(decoder.feed(stream)), False
    except FrameTooLarge as err:
        return len(err.frames), True


async def _run(pieces: list[bytes], limit: int) -> tuple[Counting, RecordingTransport, Sink, Quarantine, MllpBridge]:
    sink, quarantine = Sink(), Quarantine()
    settings = BridgeSettings(certfile=Path("unused.crt"), keyfile=Path("unused.key"), health_port=None,
                              ack_timeout_s=2)
    bridge = MllpBridge(settings, [TENANT], GroupCommitter(sink, linger_s=0.0),
                        metrics=BridgeMetrics(interval=3600), ssl_context=_SSL,
                        quarantine=quarantine)  # type: ignore[arg-type]
    conn = Counting(bridge, limit)
    transport = RecordingTransport()
    conn.connection_made(transport)
    for piece in pieces:
        for n in range(4000):  # a paused transport delivers nothing (as asyncio's and uvloop's do)
            if not transport.paused or transport.closed:
                break
            await asyncio.sleep(0 if n < 200 else 0.001)
        if transport.closed:
            break
        conn.data_received(piece)
        await asyncio.sleep(0)
    for n in range(4000):
        if not conn.busy and not conn.queue:
            break
        await asyncio.sleep(0 if n < 200 else 0.001)
    await bridge.committer.close()
    return conn, transport, sink, quarantine, bridge


@given(st.lists(hl7_bytes(), min_size=1, max_size=4), st.lists(st.integers(0, 20_000), max_size=5),
       st.sampled_from([1 << 20, 2048]), st.integers(0, 2**32 - 1))
def test_every_frame_gets_one_answer_and_one_fate(messages: list[bytes], cuts: list[int], limit: int,
                                                  seed: int) -> None:
    _connection(messages, cuts, limit)
    rng = random.Random(seed)  # the long form's fan-out: more connections per drawn example, reproducible
    for _ in range(inputs_per_example() // 2):
        more = [fan_out(m, rng.getrandbits(32), 2)[1] for m in messages]
        _connection(more, [rng.randint(0, 20_000) for _ in cuts], limit)


def _connection(messages: list[bytes], cuts: list[int], limit: int) -> None:
    stats.count(TARGET, "connections")
    stats.count(TARGET, "inputs", len(messages))
    stream = b"".join(frame(m) for m in messages)
    points = sorted({c for c in cuts if 0 < c < len(stream)})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    frames, oversize = _expected(stream, limit)
    try:
        conn, _transport, sink, quarantine, bridge = _LOOP.run_until_complete(_run(pieces, limit))
    except Exception:
        stats.count(TARGET, "uncaught_exceptions")
        raise
    closes = bridge.metrics.total("MllpDeliberateCloses")
    expected = frames + (1 if oversize else 0)
    stats.count(TARGET, "frames", expected)
    answered = len(conn.answers)
    if answered < expected and not closes:
        stats.count(TARGET, "frames_unanswered", expected - answered)
    if answered > expected:
        stats.count(TARGET, "answered_twice", answered - expected)
    assert answered == expected or (answered < expected and closes), (answered, expected, closes)
    acks = bridge.metrics.total("MllpAcks")
    accepted = sum(v for (n, _t, d), v in bridge.metrics.totals.items() if n == "MllpAcks" and d in ("AA", "CA"))
    refused = acks - accepted
    duplicates = bridge.metrics.total("MllpDuplicates")
    stats.count(TARGET, "accepted", accepted)
    stats.count(TARGET, "refused", refused)
    stats.count(TARGET, "deliberate_closes", closes)
    assert acks == answered
    assert accepted == len(sink.entries) + duplicates  # accepted -> on the queue (or already there)
    assert refused == len(quarantine.items)  # refused -> quarantined with its reason
    assert not any(b"|207^" in (a or b"") or b"^207&" in (a or b"") for a in conn.answers)  # never "resend"
    assert not any("could not be processed" in reason for _, reason in quarantine.items)  # no handling bug
