"""MLLP framing: split, coalesced, junk, missing CR, size cap."""

from __future__ import annotations

import pytest

from ehrbridge.mllp.framing import FrameTooLarge, MllpDecoder, frame

MSG = b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5\rPID|1||X\r"


def test_one_frame_in_one_read() -> None:
    d = MllpDecoder()
    assert d.feed(frame(MSG)) == [MSG]
    assert not d.in_frame and d.junk_bytes == 0


def test_split_byte_by_byte() -> None:
    d = MllpDecoder()
    out: list[bytes] = []
    for byte in frame(MSG):
        out += d.feed(bytes([byte]))
    assert out == [MSG]


def test_several_frames_in_one_read_with_junk_between() -> None:
    d = MllpDecoder()
    data = b"\x00\x00garbage" + frame(MSG) + b"\x00" + frame(MSG + b"NTE|1\r") + b"\r\n"
    assert d.feed(data) == [MSG, MSG + b"NTE|1\r"]
    assert d.junk_bytes == len(b"\x00\x00garbage") + 1 + 1  # the trailing LF counts, CR does not


def test_missing_cr_after_fs_is_tolerated() -> None:
    d = MllpDecoder()
    assert d.feed(b"\x0b" + MSG + b"\x1c" + b"\x0b" + MSG + b"\x1c") == [MSG, MSG]


def test_fs_then_cr_in_next_read() -> None:
    d = MllpDecoder()
    assert d.feed(b"\x0b" + MSG + b"\x1c") == [MSG]
    assert d.feed(b"\r" + frame(MSG)) == [MSG]
    assert d.junk_bytes == 0


def test_partial_frame_reports_in_frame() -> None:
    d = MllpDecoder()
    assert d.feed(b"\x0b" + MSG[:10]) == []
    assert d.in_frame and d.pending_bytes == 10


def test_too_large_raises_with_head_and_resets() -> None:
    d = MllpDecoder(max_message_bytes=100)
    with pytest.raises(FrameTooLarge) as info:
        d.feed(b"\x0b" + MSG + b"x" * 200)
    assert info.value.head.startswith(b"MSH|") and not d.in_frame
    with pytest.raises(FrameTooLarge):
        MllpDecoder(max_message_bytes=10).feed(frame(MSG))
    assert MllpDecoder(max_message_bytes=len(MSG)).feed(frame(MSG)) == [MSG]


def test_whole_frame_reads_match_the_buffered_path() -> None:
    """One-whole-frame reads (sliced without the buffer) give what byte-by-byte feeding gives."""
    reads = [frame(MSG), frame(b""), frame(MSG + b"\x0bVT inside"), b"\x0b" + MSG + b"\x1c", frame(MSG) + b"\r",
             b"\r" + frame(MSG), frame(MSG) + frame(MSG), b"junk" + frame(MSG)]
    whole, bytewise = MllpDecoder(), MllpDecoder()
    for data in reads:
        got = whole.feed(data)
        expected = [f for i in range(len(data)) for f in bytewise.feed(data[i:i + 1])]
        assert got == expected, data
        assert (whole.in_frame, whole.junk_bytes) == (bytewise.in_frame, bytewise.junk_bytes)
    with pytest.raises(FrameTooLarge):  # the size cap holds on the fast path's boundary too
        MllpDecoder(max_message_bytes=len(MSG) - 1).feed(frame(MSG))
    split = MllpDecoder()
    assert split.feed(b"\x0b" + MSG[:5]) == [] and split.feed(MSG[5:] + b"\x1c\r") == [MSG]  # mid-frame: buffered
