"""Issue 13 items 1-4 at the ACK builder, the framer and the per-frame path (no sockets): each defect
from the smallest input that showed it. The same cases over TLS against the twin are in
tests/integration/mllp/test_malformed_e2e.py."""

from __future__ import annotations

import asyncio
from typing import Any

import hl7
import pytest

from ehrbridge.hl7.wire import read_msh
from ehrbridge.mllp import ack as ack_module
from ehrbridge.mllp import server as server_module
from ehrbridge.mllp.ack import AckError, build_ack, fallback_header
from ehrbridge.mllp.client import parse_ack
from ehrbridge.mllp.framing import FrameTooLarge, MllpDecoder, frame
from ehrbridge.mllp.server import MllpConnection

from .test_server_frame import FakeTransport, Sink, make_bridge, oru


def msg(charset: str = "", version: str = "2.5.1", sender: str = "DEMOLAB", control_id: str = "C1") -> bytes:
    msh18 = f"||||||{charset}" if charset else ""
    return (f"MSH|^~\\&|{sender}|FAC|EHR|DEMO|20240101120000||ADT^A01|{control_id}|P|{version}{msh18}\r"
            "PID|1||R1^^^MRN^MR||Doe^Jane\r").encode("latin-1")


def readable(payload: bytes) -> Any:
    """The ACK as python-hl7 reads it (what `ehrbridge send` and most senders use)."""
    assert payload.isascii()
    return hl7.parse(payload.decode("ascii"))


class Quarantine:
    def __init__(self, fail: bool = False) -> None:
        self.items: list[tuple[bytes, str]] = []
        self.fail = fail

    async def put(self, raw: bytes, *, tenant_id: str, kind: str, reason: str) -> None:
        if self.fail:
            raise OSError("quarantine bucket unavailable")
        self.items.append((raw, reason))


def run_frames(data: bytes, answers: int, *, quarantine: Quarantine | None = None, max_bytes: int = 1 << 20,
               **settings: object) -> tuple[FakeTransport, Sink, Quarantine, Any]:
    """Feed ``data`` (one read) to one connection; wait for ``answers`` writes."""
    quarantine = quarantine or Quarantine()

    async def go() -> tuple[FakeTransport, Sink, Any]:
        sink = Sink()
        bridge = make_bridge(sink, **settings)
        bridge.quarantine = quarantine  # type: ignore[assignment]
        conn = MllpConnection(bridge, max_bytes)
        transport = FakeTransport()
        conn.connection_made(transport)
        conn.data_received(data)
        for _ in range(400):
            if len(transport.written) >= answers and not conn.busy:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)
        return transport, sink, bridge

    transport, sink, bridge = asyncio.run(go())
    return transport, sink, quarantine, bridge


def acks(transport: FakeTransport) -> list[Any]:
    return [parse_ack(w.strip(b"\x0b\x1c\r")) for w in transport.written]


# ---- item 3: the ACK builder cannot fail ----------------------------------------------------------
def test_fallback_header_of_a_bare_msh_line() -> None:
    header = fallback_header(b"MSH\rPID|1\r")  # was IndexError: text[3] of "MSH"
    assert header.field_separator == "|"
    readable(build_ack(header, "AR", AckError("100", "no MSH fields")).payload)


def test_version_with_a_non_ascii_digit() -> None:
    header = read_msh(msg(version="2.\xb3"))  # '\xb3'.isdigit() is True, int() refuses it
    payload = build_ack(header, "AR", AckError("103", "sending application/facility not configured")).payload
    assert readable(payload).segment("MSA")[2][0] == "C1"


@pytest.mark.parametrize("charset", ["IDNA", "UU", "BASE64", "CP037", "UNICODE UTF-16", "A\x00B"])
def test_ack_of_an_unsupported_charset_is_ascii_without_msh18(charset: str) -> None:
    header = read_msh(msg(charset))
    for ack in (build_ack(header, "AR", AckError("103", "unsupported character set")), build_ack(header, "AA")):
        parsed = readable(ack.payload)
        assert parsed.segment("MSA")[2][0] == "C1"
        assert len(parsed.segment("MSH")) < 18  # MSH-18 not echoed: the ACK is plain ASCII


def test_builder_falls_back_to_a_minimal_ascii_ack(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("unforeseen header")

    monkeypatch.setattr(ack_module, "_build", broken)
    monkeypatch.setattr(ack_module, "_fast_accept", broken)
    header = read_msh(msg(control_id="C9"))
    for code, error in (("AA", None), ("AR", AckError("103", "nope"))):
        ack = build_ack(header, code, error)
        parsed = readable(ack.payload)
        assert ack.code == code and parsed.segment("MSA")[1][0] == code and parsed.segment("MSA")[2][0] == "C9"


def test_unknown_msh18_is_table_value_not_found_not_unsupported_version() -> None:
    from ehrbridge.mllp.message import Rejected, SourceDirectory, inspect

    from .test_server_frame import TENANT

    header = read_msh(msg("ROT13"))
    route = SourceDirectory([TENANT]).resolve(header, None)
    with pytest.raises(Rejected) as info:
        inspect(msg("ROT13"), header, route)
    assert info.value.error.code == "103" and info.value.reject


# ---- item 4: frames decoded in the same read as an oversized frame --------------------------------
def test_frames_before_an_oversized_frame_come_with_the_error() -> None:
    decoder = MllpDecoder(max_message_bytes=64)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(frame(b"A1") + frame(b"B2") + b"\x0b" + b"x" * 65)
    assert info.value.frames == [b"A1", b"B2"]
    decoder2 = MllpDecoder(max_message_bytes=64)
    with pytest.raises(FrameTooLarge) as info2:  # the oversized frame complete in the same read
        decoder2.feed(frame(b"A1") + frame(b"x" * 65))
    assert info2.value.frames == [b"A1"]


def test_bridge_answers_frames_before_the_oversized_one_then_refuses_it() -> None:
    big = b"\x0b" + oru("BIG") + b"OBX|2|TX|||" + b"x" * 5000
    transport, sink, quarantine, bridge = run_frames(frame(oru("C1")) + frame(oru("C2")) + big, 3,
                                                     max_bytes=4096)
    answers = acks(transport)
    assert [a.code for a in answers] == ["AA", "AA", "AR"]
    assert [a.control_id for a in answers] == ["C1", "C2", "BIG"]
    assert b"104^Value too long^HL70357" in transport.written[2] and b"|207" not in transport.written[2]
    assert len(sink.entries) == 2 and transport.closed
    assert len(quarantine.items) == 1 and "104: message larger than 4096 bytes" in quarantine.items[0][1]
    assert bridge.metrics.total("MllpDeliberateCloses", "too_large") == 1


# ---- items 2 and 3: permanent errors -> AR + quarantine; an answer for every frame -------------------
@pytest.mark.parametrize(("frame_bytes", "code", "err"), [
    (b"MSH\rPID|1\r", "AR", b"101"),  # was: no ACK at all (IndexError escaped data_received)
    (msg("BASE64"), "AR", b"103"),  # was: AE 207 "resend", nothing quarantined
    (msg("ROT13"), "AR", b"103"),
    (msg("UNDEFINED"), "AR", b"103"),
    (msg("A\x00B"), "AR", b"103"),
    (msg("IDNA"), "AR", b"103"),  # was: AE although the message was queued
    (msg(sender="STRANGER", version="2.\xb3"), "AR", b"103"),  # was: no ACK within 8 s
    (msg(charset="ASCII") + b"\xff", "AE", b"102"),  # invalid bytes in a known charset: content error
])
def test_permanent_errors_are_refused_and_quarantined_never_queued(frame_bytes: bytes, code: str,
                                                                   err: bytes) -> None:
    transport, sink, quarantine, _ = run_frames(frame(frame_bytes), 1)
    [answer] = acks(transport)
    assert answer.code == code and (b"ERR||" in answer.raw and b"|" + err + b"^" in answer.raw)
    assert b"|207^" not in answer.raw  # 207 means "not stored; resend" here
    readable(answer.raw)
    assert sink.entries == []  # never both
    assert [raw for raw, _ in quarantine.items] == [frame_bytes]  # never neither
    assert quarantine.items[0][1].startswith(err.decode())


def test_quarantine_failure_turns_a_refusal_into_ae_207_resend() -> None:
    transport, sink, _, _ = run_frames(frame(msg("ROT13")), 1, quarantine=Quarantine(fail=True))
    [answer] = acks(transport)
    assert answer.code == "AE" and b"207^Application internal error" in answer.raw and sink.entries == []


def test_a_bug_before_the_commit_quarantines_and_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise KeyError("bug")

    monkeypatch.setattr(server_module, "inspect", broken)
    transport, sink, quarantine, _ = run_frames(frame(oru("C1")), 1)
    [answer] = acks(transport)
    assert answer.code == "AR" and answer.control_id == "C1" and sink.entries == []
    assert len(quarantine.items) == 1 and "KeyError" in quarantine.items[0][1]


def test_a_bug_while_reading_closes_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("decoder bug")

    monkeypatch.setattr(MllpDecoder, "feed", broken)
    transport, _, _, bridge = run_frames(frame(oru("C1")), 0)
    assert transport.written == [] and bridge.metrics.total("MllpDeliberateCloses", "internal_error") == 1


def test_a_non_ascii_field_separator_is_refused_and_the_ack_stays_parseable() -> None:
    """Found by the long fuzz: MSH-1 = 0x80 was taken as the separator and written back as '\\x80'."""
    from ehrbridge.hl7.wire import WireError

    data = b"MSH\x80^~\\&|LAB|FAC|EHR|DEMO|20240101||ADT^A01|C1|P|2.5.1\nPID|1\n"
    with pytest.raises(WireError) as info:
        read_msh(data)
    assert info.value.code == "102"
    for code in ("AA", "AR"):
        parsed = readable(build_ack(fallback_header(data), code).payload)
        assert parsed.segment("MSA")[1][0] == code
