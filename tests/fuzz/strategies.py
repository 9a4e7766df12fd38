"""Hypothesis strategies: HL7 v2 messages mutated the way broken senders and attackers mutate them.

A seed message (``seeds.py``) goes through a short list of mutations, each drawn by hypothesis (so a
failure shrinks to the fewest, simplest mutations): a field replaced by an interesting value (calendar
edges, Unicode digits, huge numbers, codec names outside table 0211, separators, control bytes), a byte
flipped/inserted/deleted, a segment duplicated or dropped, a field repeated many times, the message
cut short. Plus raw bytes with no structure at all.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from hypothesis import strategies as st

from .seeds import seed_messages

SEEDS = seed_messages()
T = TypeVar("T")

CHARSETS = ["", "ASCII", "8859/1", "8859/15", "UNICODE UTF-8", "UNICODE", "ISO IR87", "GB 18030-2000", "BIG-5",
            "KS X 1001", "ROT13", "BASE64", "ZLIB", "HEX", "UU", "QUOPRI", "BZ2", "UNDEFINED", "A\x00B", "CP037",
            "IDNA", "UTF-7", "UNICODE UTF-16", "UNICODE UTF-32", "UNICODE_ESCAPE", "PUNYCODE", "utf-8~8859/1"]
TIMES = ["0000", "000001", "00000101", "00000101120000", "00010101000000", "00010101000000+1400",
         "09990101120000", "0999", "99991231", "99991231235959", "99991231230000-1200", "99991231235959.999999999",
         "\uff12\uff10\uff12\uff13", "\u0662\u0660\u0662\u0664\u0660\u0661\u0660\u0661", "2024", "202402",
         "20240230", "20241301", "20240101246060", "20240310023000", "20241103013000", "20240101120000+9999",
         "20240101120000-0000", "20240101120000+14", "20240101120000.1234567890", "2024010112", "20240101 1200",
         "19000101", "18500101", "-20240101", "2024-01-01T12:00:00Z", ""]
NUMBERS = ["9" * 5000, "9" * 400 + ".5", "1e400", "-0", ".5", "5.", "+7", "NaN", "inf", "\u0661\u0662\u0663",
           "\uff11\uff12", "0" * 60 + "1", "-" + "1" * 4301, "1,5", "2147483648", "-1", "0", "1-2", "<=5", ">"]
TEXT = ["", '""', "A  B", " A", "A ", "A\tB", "\x00", "\x0b", "\x1c", "\xa0", "\u2028", "\ufeff", "é",
        "\\X00\\", "\\E\\", "\\F\\", "\\H\\bold\\N\\", "\\", "^", "~", "&", "|", "^^^^", "~~~~", "&&&&",
        "x" * 300, "ADT^A01^ADT_A01", "ORU^R01", "2.\xb3", "2.5.1", "9" * 50, "NE", "AL", "ER", "SU", "P", "T",
        "MR", "LN", "UCUM", "mg/dL", "1234^WELBY^MARCUS", "A" * 70, "..", "urn:oid:1.2.3", "1.2.3.4"]
# Inputs stay below this (repeated mutations compound); big inputs are covered by the unit tests of the limits.
MAX_INPUT_BYTES = 256 * 1024
SPECIAL_BYTES = b"\r\n\x0b\x1c\x00|^~\\&\xff\xfe\xef\xbb\xbf \t"


def _fields(message: bytes) -> list[list[bytes]]:
    return [segment.split(b"|") for segment in message.replace(b"\n", b"\r").split(b"\r") if segment]


def _join(segments: list[list[bytes]]) -> bytes:
    return b"".join(b"|".join(fields) + b"\r" for fields in segments)


class _Draws:
    """Choices from hypothesis (shrinkable) ..."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def integer(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high))

    def pick(self, items: Sequence[T]) -> T:
        return self.draw(st.sampled_from(items))

    def text(self) -> bytes:
        return self.draw(st.text(max_size=12)).encode("utf-8")

    def binary(self) -> bytes:
        return self.draw(st.binary(max_size=12))


class _Random:
    """... or from a PRNG seeded by hypothesis (the long form's fan-out: many inputs per drawn example)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def pick(self, items: Sequence[T]) -> T:
        return items[self.rng.randrange(len(items))]

    def text(self) -> bytes:
        return "".join(chr(self.rng.choice((self.rng.randint(32, 126), self.rng.randint(0, 0x2FFF))))
                       for _ in range(self.rng.randint(0, 12))).encode("utf-8", errors="replace")

    def binary(self) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, 12))


def _value(c: _Draws | _Random) -> bytes:
    kind = c.integer(0, 5)
    if kind == 4:
        return c.text()
    if kind == 5:
        return c.binary()
    text = c.pick((TIMES, NUMBERS, CHARSETS, TEXT)[kind])
    return text.encode("utf-8") if c.integer(0, 1) else text.encode("latin-1", errors="replace")


def mutate(data: bytes, c: _Draws | _Random, mutations: int) -> bytes:
    """Apply ``mutations`` structured mutations chosen by ``c``."""
    for _ in range(mutations):
        segments = _fields(data) or [[b"MSH"]]
        op = c.integer(0, 9)
        si = c.integer(0, len(segments) - 1)
        seg = segments[si]
        if op <= 3:  # replace a field (MSH fields more often: they steer everything else)
            if c.integer(0, 1):
                si, seg = 0, segments[0]
            fi = c.integer(1, max(1, len(seg) + 2))
            while len(seg) <= fi:
                seg.append(b"")
            if c.integer(0, 1) and b"^" in seg[fi]:
                comps = seg[fi].split(b"^")
                comps[c.integer(0, len(comps) - 1)] = _value(c)
                seg[fi] = b"^".join(comps)
            else:
                seg[fi] = _value(c)
            data = _join(segments)
        elif op == 4:  # repeat a field many times (amplification)
            fi = c.integer(1, max(1, len(seg) - 1))
            while len(seg) <= fi:
                seg.append(b"x")
            # Short values, so the input stays small while the repetition count passes the limit.
            seg[fi] = b"~".join([seg[fi][:24] or b"x"] * c.pick((2, 50, 1001, 3000)))
            data = _join(segments)
        elif op == 5:  # duplicate or drop a segment
            if c.integer(0, 1):
                segments.insert(si, list(seg))
            elif len(segments) > 1:
                segments.pop(si)
            data = _join(segments)
        elif op == 6:  # flip / insert / delete a byte
            pos = c.integer(0, max(0, len(data) - 1))
            byte = c.pick(SPECIAL_BYTES) if c.integer(0, 1) else c.integer(0, 255)
            how = c.integer(0, 2)
            if how == 0:
                data = data[:pos] + bytes([byte]) + data[pos + 1:]
            elif how == 1:
                data = data[:pos] + bytes([byte]) + data[pos:]
            else:
                data = data[:pos] + data[pos + 1:]
        elif op == 7:  # cut short
            data = data[:c.integer(0, len(data))]
        elif op == 8:  # change the segment ends
            data = data.replace(b"\r", c.pick((b"\n", b"\r\n", b"\n\r", b"\r\r")))
        else:  # another message glued on (a batch that was not split)
            data = data + c.pick(SEEDS)
        if len(data) > MAX_INPUT_BYTES:  # compounding mutations: keep inputs in the range a sender sends
            data = data[:MAX_INPUT_BYTES]
    return data


@st.composite
def mutated_message(draw: st.DrawFn, max_mutations: int = 4) -> bytes:
    """One seed with up to ``max_mutations`` structured mutations, every choice drawn by hypothesis."""
    c = _Draws(draw)
    return mutate(c.pick(SEEDS), c, c.integer(0, max_mutations))


def hl7_bytes() -> st.SearchStrategy[bytes]:
    """Mostly mutated messages; sometimes bytes with no structure at all."""
    return st.one_of(mutated_message(), mutated_message(8), st.binary(max_size=300),
                     st.binary(max_size=40).map(lambda b: b"MSH|^~\\&|" + b))


def fan_out(data: bytes, seed: int, count: int) -> list[bytes]:
    """``data`` plus ``count - 1`` further mutants of it (1-3 mutations each), from a PRNG seeded by hypothesis.

    Hypothesis's own machinery costs more per example than most targets; the long form feeds each
    drawn example's neighbourhood too. Reproducible: the same hypothesis seed gives the same inputs.
    """
    c = _Random(seed)
    return [data] + [mutate(data, c, c.integer(1, 3)) for _ in range(count - 1)]


def inputs_per_example() -> int:
    """Inputs per hypothesis example: 1 in the short form, ``EHRBRIDGE_FUZZ_FANOUT`` (10) in the long."""
    import os

    if os.environ.get("EHRBRIDGE_FUZZ_PROFILE") != "long":
        return 1
    return max(1, int(os.environ.get("EHRBRIDGE_FUZZ_FANOUT", "10")))


def hl7_inputs() -> st.SearchStrategy[list[bytes]]:
    """The inputs for one example: a drawn message and (long form) its PRNG neighbourhood."""
    count = inputs_per_example()
    return st.builds(fan_out, hl7_bytes(), st.integers(0, 2**32 - 1), st.just(count))
