"""Parse one HL7 v2 message into segments, after cleaning what real feeds send.

Cleaning (``clean``): UTF-8 BOM, ``\\n``/``\\r\\n`` segment ends and blank lines, the MSH-18
character set (strict decoding via :mod:`ehrbridge.hl7.wire`), doubled characters in MSH-2.

Parsing uses python-hl7's parse plan (``hl7.create_parse_plan``: separators, escape character,
the MSH/FHS/BHS rules) and splits lazily: fields eagerly, repetitions/components/sub-components
only when a map reads them. ``hl7.parse`` itself builds every container up front and costs 3-6 ms
per message here, more than the whole normalisation budget; the lazy tree is checked against
``hl7.parse`` on the whole corpus in the tests, so both read a message the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hl7 import ParseException
from hl7.parser import create_parse_plan

from ehrbridge.hl7 import wire


class ParseError(ValueError):
    """The message cannot be parsed; ``reason`` is PHI-free and specific."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Separators:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""


_HEX = re.compile(r"^[0-9A-Fa-f]+$")
_SEGMENT_ID = re.compile(r"^[A-Z0-9]{3}$")
# Formatting escapes of FT/TX (HL7 v2 2.7.2): line breaks become "\n"; layout hints are dropped.
_FORMAT = {".br": "\n", ".sp": "\n", ".fi": "", ".nf": "", ".in": "", ".ti": "", ".sk": " ", ".ce": "\n",
           "H": "", "N": ""}


def unescape(value: str, seps: Separators, charset: str = "utf-8") -> str:
    """Resolve HL7 escape sequences: \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\P\\, \\Xhh..\\, \\.br\\ and friends.

    ``\\Xhh\\`` bytes are decoded in the message's character set. Character-set switches
    (``\\C..\\``, ``\\M..\\``) and ``\\Z..\\`` are locally defined: they are dropped, their text kept.
    An unterminated or unknown sequence is kept literally (nothing silently lost).
    """
    esc = seps.escape
    if not esc or esc not in value:
        return value
    out: list[str] = []
    i, n = 0, len(value)
    singles = {"F": seps.field, "S": seps.component, "T": seps.subcomponent, "R": seps.repetition,
               "E": esc, "P": seps.truncation}
    while i < n:
        ch = value[i]
        if ch != esc:
            j = value.find(esc, i)
            if j < 0:
                out.append(value[i:])
                break
            out.append(value[i:j])
            i = j
            continue
        end = value.find(esc, i + 1)
        if end < 0:
            out.append(value[i:])
            break
        seq = value[i + 1:end]
        if seq in singles:
            out.append(singles[seq])
        elif seq in _FORMAT:
            out.append(_FORMAT[seq])
        elif seq[:3] in (".sp", ".in", ".ti", ".sk") and seq[3:].lstrip("+-").isdigit():
            out.append("\n" if seq.startswith(".sp") else "")
        elif seq[:1] == "X" and _HEX.match(seq[1:] or "-") and len(seq) % 2 == 1:
            try:
                out.append(bytes.fromhex(seq[1:]).decode(charset))
            except (UnicodeDecodeError, LookupError):
                out.append(bytes.fromhex(seq[1:]).decode("latin-1"))
        elif seq[:1] in ("C", "M", "Z") and len(seq) > 1:
            pass
        else:
            out.append(value[i:end + 1])
        i = end + 1
    return "".join(out)


class Segment:
    """One segment. ``fields[n]`` is field n as in the standard (MSH-1 is the field separator)."""

    __slots__ = ("_comps", "fields", "index", "name", "seps")

    def __init__(self, name: str, fields: list[str], seps: Separators, index: int) -> None:
        self.name = name
        self.fields = fields
        self.seps = seps
        self.index = index
        # (field, repetition) -> raw components; maps read the same field several times.
        self._comps: dict[tuple[int, int], list[str]] = {}

    def raw(self, n: int) -> str:
        """Field n as sent ('' when absent). ``""`` (an explicit HL7 null) reads as empty."""
        fields = self.fields
        if n >= len(fields):
            return ""
        value = fields[n]
        return "" if value == '""' else value

    def reps(self, n: int) -> list[str]:
        raw = self.raw(n)
        if not raw:
            return []
        if self.name == "MSH" and n <= 2:
            return [raw]
        if self.seps.repetition not in raw:
            return [raw]
        return [r for r in raw.split(self.seps.repetition) if r and r != '""']

    def value(self, n: int, c: int = 1, s: int = 1, r: int = 0) -> str:
        """Unescaped text of field n, repetition r (0-based), component c, sub-component s."""
        comps = self._comps.get((n, r))
        if comps is None:
            raw = self.raw(n)
            if not raw:
                return ""
            if self.name == "MSH" and n <= 2:
                return raw
            seps = self.seps
            if seps.repetition in raw:
                reps = raw.split(seps.repetition)
                raw = reps[r] if r < len(reps) else ""
            elif r:
                raw = ""
            comps = raw.split(seps.component)
            self._comps[(n, r)] = comps
        if c > len(comps):
            return ""
        part = comps[c - 1]
        if not part:
            return ""
        return leaf(part, self.seps, 1, s)

    def text(self, n: int) -> str:
        """The whole field unescaped (for text fields such as NTE-3 or OBX-5 TX)."""
        return unescape(self.raw(n), self.seps)

    def field_numbers(self) -> range:
        return range(1, len(self.fields))

    def er7(self) -> str:
        if self.name == "MSH":
            return "MSH" + self.seps.field + self.seps.field.join(self.fields[2:])
        return self.seps.field.join(self.fields)

    def __repr__(self) -> str:  # never the content: it can be PHI
        return f"Segment({self.name}, #{self.index}, {len(self.fields) - 1} fields)"


def leaf(raw: str, seps: Separators, c: int = 1, s: int = 1) -> str:
    """Component c / sub-component s of one repetition, unescaped ('' when absent or ``""``)."""
    if not raw:
        return ""
    if c != 1 or seps.component in raw:
        comps = raw.split(seps.component)
        if c > len(comps):
            return ""
        raw = comps[c - 1]
    if s != 1 or seps.subcomponent in raw:
        subs = raw.split(seps.subcomponent)
        if s > len(subs):
            return ""
        raw = subs[s - 1]
    if not raw or raw == '""':
        return ""
    # Trailing/leading blanks are not significant outside TX/FT (read those with Segment.text).
    return (unescape(raw, seps) if seps.escape in raw else raw).strip()


def components(raw: str, seps: Separators) -> list[str]:
    """Raw (still escaped) components of one repetition."""
    return raw.split(seps.component)


@dataclass
class Message:
    segments: list[Segment]
    seps: Separators
    header: wire.MshHeader
    text: str
    codec: str
    cleanups: list[str] = field(default_factory=list)

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    @property
    def message_code(self) -> str:
        return self.msh.value(9, 1).upper()

    @property
    def trigger(self) -> str:
        return self.msh.value(9, 2).upper()

    @property
    def structure(self) -> str:
        return self.msh.value(9, 3).upper()

    @property
    def kind(self) -> str:
        code, trigger = self.message_code, self.trigger
        return f"{code}^{trigger}" if trigger else (code or "UNKNOWN")

    @property
    def control_id(self) -> str:
        return self.msh.value(10)

    @property
    def version(self) -> str:
        return self.msh.value(12, 1)

    def first(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]


def clean(data: bytes, default_charset: str = "ASCII") -> tuple[str, wire.MshHeader, str, list[str]]:
    """Raw bytes -> (text with '\\r' segment ends, MSH header, codec used, cleanups applied)."""
    cleanups: list[str] = []
    if data.startswith(wire.UTF8_BOM):
        cleanups.append("utf8-bom")
    try:
        header = wire.read_msh(data)
    except wire.WireError as err:
        raise ParseError(err.reason) from None
    segments = wire.split_segments(data)
    if wire.starts_batch(segments) or sum(1 for s in segments if s[:3] == b"MSH") > 1:
        raise ParseError("more than one message: split the batch first")
    if b"\r" not in data:
        cleanups.append("lf-segment-ends")
    elif b"\n" in data:
        cleanups.append("crlf-segment-ends")
    try:
        text, codec = wire.decode_detailed(b"\r".join(segments), header.charset, default_charset)
    except wire.WireError as err:
        raise ParseError(err.reason) from None
    if codec != wire.codec_for(header.charset, default_charset) and not data.startswith(wire.UTF8_BOM):
        cleanups.append(f"charset-fallback:{codec}")
    return text, header, codec, cleanups


def parse(data: bytes, default_charset: str = "ASCII") -> Message:
    """Clean and parse one message. Raises ParseError with a specific reason."""
    text, header, codec, cleanups = clean(data, default_charset)
    sep = header.field_separator
    enc = header.encoding_characters
    if len(enc) < 4 and len(enc) != len(header.field(2)):
        cleanups.append("msh2-short")
    lines = text.split("\r")
    first = lines[0]
    if first[:3] != "MSH":
        raise ParseError("message does not start with MSH")
    # MSH-2 as the sender meant it (doubled characters removed), then hl7's plan reads the separators.
    msh_fields = first.split(sep)
    if msh_fields[1] != enc:
        cleanups.append("msh2-repaired")
        msh_fields[1] = enc
        lines[0] = sep.join(msh_fields)
    try:
        plan = create_parse_plan(lines[0])
    except (ParseException, IndexError) as err:
        raise ParseError(f"hl7 cannot parse MSH: {type(err).__name__}") from None
    # plan.separators = segment, field, repetition, component, sub-component
    seps = Separators(field=plan.separators[1], repetition=plan.separators[2], component=plan.separators[3],
                      subcomponent=plan.separators[4], escape=plan.esc, truncation=enc[4] if len(enc) > 4 else "")
    segments: list[Segment] = []
    for index, line in enumerate(lines):
        name = line[:3]
        if (len(line) > 3 and line[3] != sep) or not _SEGMENT_ID.match(name):
            raise ParseError(f"segment {index + 1} is not an HL7 segment (bad segment id)")
        if name == "MSH":
            if index:
                raise ParseError("more than one MSH segment: split the batch first")
            parts = line.split(sep)
            fields = ["MSH", sep, *parts[1:]]
        else:
            fields = line.split(sep)
        segments.append(Segment(name, fields, seps, index))
    return Message(segments=segments, seps=seps, header=header, text="\r".join(lines), codec=codec,
                   cleanups=cleanups)


def split_messages(data: bytes) -> list[bytes]:
    """A file, a batch or a stream of messages (no FHS/BHS) -> one bytes object per message."""
    return wire.split_batch(data)
