"""Fuzz: the HL7 wire reader and the MLLP framer.

- Wire reader: any bytes -> a header or a WireError with a table 0357 code, never another exception;
  the bridge's cached header reader agrees with the full one; ``parse`` raises only ParseError.
- Framer: a stream split at every byte boundary (and byte by byte) decodes to exactly the frames of the
  whole stream, including where an oversized frame is refused and the frames before it.
"""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from ehrbridge.hl7 import wire
from ehrbridge.hl7.message import ParseError, parse
from ehrbridge.mllp.ack import ERROR_TEXT
from ehrbridge.mllp.framing import END, START, FrameTooLarge, MllpDecoder
from ehrbridge.mllp.message import msh_head, read_header

from . import stats
from .strategies import hl7_inputs, inputs_per_example

TARGET_WIRE = "wire_reader"
TARGET_FRAMER = "framer"


def _read(reader, data: bytes):  # type: ignore[no-untyped-def]
    try:
        return reader(data)
    except wire.WireError as err:
        assert err.reason and err.code in ERROR_TEXT, (err.code, err.reason)
        return ("error", err.code, err.reason)


@given(hl7_inputs())
def test_wire_reader_never_raises_anything_but_wire_errors(inputs: list[bytes]) -> None:
    for data in inputs:
        _read_all(data)


def _read_all(data: bytes) -> None:
    stats.count(TARGET_WIRE, "inputs")
    try:
        full = _read(wire.read_msh, msh_head(data))
        cached = _read(read_header, data)
        if isinstance(full, tuple) or isinstance(cached, tuple):
            assert full == cached
        else:
            assert cached.fields == full.fields and cached.charset == full.charset
        header = _read(wire.read_msh, data)
        if not isinstance(header, tuple):
            stats.count(TARGET_WIRE, "headers_read")
            _read(lambda d: wire.decode_detailed(d, header.charset, "ASCII"), data)
        wire.split_segments(data)
        wire.split_batch(data)
        wire.is_batch(data)
        try:
            parse(data)
            stats.count(TARGET_WIRE, "parsed")
        except ParseError as err:
            assert err.reason
    except AssertionError:
        raise
    except Exception:
        stats.count(TARGET_WIRE, "uncaught_exceptions")
        raise


def _decode(stream: bytes, cuts: list[int], limit: int) -> tuple[list[bytes], bool]:
    """Frames from ``stream`` fed in pieces cut at ``cuts``; True when an oversized frame was refused."""
    decoder = MllpDecoder(max_message_bytes=limit)
    frames: list[bytes] = []
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        piece = stream[start:cut]
        start = cut
        if not piece:
            continue
        try:
            frames.extend(decoder.feed(piece))
        except FrameTooLarge as err:
            frames.extend(err.frames)
            return frames, True
    return frames, False


_payload = st.binary(max_size=80).map(lambda b: b.replace(b"\x1c", b""))
_junk = st.binary(max_size=4).map(lambda b: b.replace(b"\x0b", b""))


def _random_parts(rng: random.Random) -> tuple[list[tuple[bytes, bytes, bool]], bytes, int, list[int]]:
    def junk() -> bytes:
        return rng.randbytes(rng.randint(0, 4)).replace(b"\x0b", b"")

    parts = [(junk(), rng.randbytes(rng.randint(0, 40)).replace(b"\x1c", b""), rng.random() < 0.5)
             for _ in range(rng.randint(0, 4))]
    return parts, junk(), rng.choice((16, 64, 1 << 20)), [rng.randint(0, 600) for _ in range(rng.randint(0, 6))]


@given(st.lists(st.tuples(_junk, _payload, st.booleans()), max_size=5), _junk, st.sampled_from([16, 64, 1 << 20]),
       st.lists(st.integers(0, 600), max_size=6), st.integers(0, 2**32 - 1))
def test_framer_split_anywhere_equals_whole(parts: list[tuple[bytes, bytes, bool]], tail: bytes, limit: int,
                                            cuts: list[int], seed: int) -> None:
    _frame_check(parts, tail, limit, cuts)
    rng = random.Random(seed)  # the long form's fan-out: more streams per drawn example, reproducible
    for _ in range(inputs_per_example() - 1):
        _frame_check(*_random_parts(rng))


def _frame_check(parts: list[tuple[bytes, bytes, bool]], tail: bytes, limit: int, cuts: list[int]) -> None:
    stats.count(TARGET_FRAMER, "inputs")
    stream = b"".join(junk + START + payload + (END if with_cr else END[:1]) for junk, payload, with_cr in parts)
    stream += tail
    try:
        whole = _decode(stream, [], limit)
        expected = [p for _, p, _ in parts]
        if not whole[1]:
            assert whole[0] == expected
        else:
            stats.count(TARGET_FRAMER, "oversize_refused")
            assert whole[0] == expected[:len(whole[0])]
        stats.count(TARGET_FRAMER, "frames", len(whole[0]))
        # Byte by byte: a split at every boundary at once. Then each single boundary (two reads: the
        # buffered path and the one-whole-frame fast path meet there), and the drawn multi-splits.
        mismatches = _decode(stream, list(range(len(stream))), limit) != whole
        mismatches += sum(_decode(stream, [cut], limit) != whole for cut in range(len(stream) + 1))
        mismatches += _decode(stream, [c for c in cuts if c <= len(stream)], limit) != whole
        stats.count(TARGET_FRAMER, "splits_checked", len(stream) + 3)
        if mismatches:
            stats.count(TARGET_FRAMER, "split_mismatches", mismatches)
        assert mismatches == 0
    except AssertionError:
        raise
    except Exception:
        stats.count(TARGET_FRAMER, "uncaught_exceptions")
        raise
