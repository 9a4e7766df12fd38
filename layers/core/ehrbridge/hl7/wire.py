"""HL7 v2 on the wire: segment ends, the MSH header, MSH-18 character sets and batch files.

Works on raw bytes, before any decoding, because the character set is only known after
reading MSH-18 (the MSH segment itself is ASCII by the standard). Decoding is strict: a
message that does not decode in its declared character set is an error, never a lossy
replacement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

UTF8_BOM = b"\xef\xbb\xbf"
_SEGMENT_END = re.compile(rb"\r\n|\n\r|\r|\n")
_BATCH_SEGMENTS = (b"FHS", b"BHS", b"BTS", b"FTS")

# HL7 table 0211 (MSH-18, v2.5-v2.9) -> Python text codec, plus the spellings feeds commonly send instead.
# Only these are accepted: MSH-18 is a table value, not a Python codec name (``codecs.lookup`` would also
# accept ROT13, BASE64, ZLIB, IDNA, UTF-7, CP037 ... which are not text encodings HL7 allows, or not
# ASCII-compatible, so the MSH we read as ASCII and the ACK we send back would be garbage).
# UNICODE UTF-16 / UTF-32 are in table 0211 but cannot travel in an MLLP frame whose MSH is read as ASCII
# bytes (and the VT/FS framing bytes can occur inside UTF-16 code units): refused with that reason.
CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859_2",
    "8859/3": "iso8859_3",
    "8859/4": "iso8859_4",
    "8859/5": "iso8859_5",
    "8859/6": "iso8859_6",
    "8859/7": "iso8859_7",
    "8859/8": "iso8859_8",
    "8859/9": "iso8859_9",
    "8859/15": "iso8859_15",
    "ISO IR14": "shift_jis",
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_2",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "CNS 11643-1992": "big5",
    "BIG-5": "big5",
    "UNICODE": "utf-8",
    "UNICODE UTF-8": "utf-8",
    # DICOM-style defined terms that some feeds copy into MSH-18.
    "ISO IR6": "ascii",
    "ISO IR100": "latin-1",
    "ISO IR101": "iso8859_2",
    "ISO IR109": "iso8859_3",
    "ISO IR110": "iso8859_4",
    "ISO IR144": "iso8859_5",
    "ISO IR127": "iso8859_6",
    "ISO IR126": "iso8859_7",
    "ISO IR138": "iso8859_8",
    "ISO IR148": "iso8859_9",
    "ISO IR192": "utf-8",
    # Non-standard but common spellings (IANA names of the same character sets).
    "US-ASCII": "ascii",
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
    "LATIN1": "latin-1",
    "LATIN-1": "latin-1",
    "ISO-8859-1": "latin-1",
    "ISO8859-1": "latin-1",
    "ISO_8859-1": "latin-1",
    "ISO-8859-2": "iso8859_2",
    "ISO-8859-5": "iso8859_5",
    "ISO-8859-7": "iso8859_7",
    "ISO-8859-8": "iso8859_8",
    "ISO-8859-9": "iso8859_9",
    "ISO-8859-15": "iso8859_15",
    "WINDOWS-1252": "cp1252",
    "CP1252": "cp1252",
    "GB18030": "gb18030",
    "BIG5": "big5",
    "SHIFT_JIS": "shift_jis",
    "EUC-KR": "euc_kr",
}
# In table 0211 but not ASCII-compatible: a clear refusal, not "unknown".
_NOT_ASCII_COMPATIBLE = {"UNICODE UTF-16", "UNICODE UTF-32", "UTF-16", "UTF-32", "UTF16", "UTF32"}
_BLANKS = re.compile(r"\s+")


class WireError(ValueError):
    """The bytes are not an HL7 v2 message we can read. ``code`` is an HL7 table 0357 error code."""

    def __init__(self, reason: str, code: str = "100") -> None:
        self.reason = reason
        self.code = code
        super().__init__(reason)


class UnsupportedCharset(WireError):
    """MSH-18 (or the source's default) is not a character set we accept: a permanent refusal."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, "103")  # table 0357: table value not found (table 0211)


def printable(text: str, limit: int = 40) -> str:
    """A value from the message, safe to put in a reason or an ACK: printable ASCII, bounded."""
    out = "".join(ch if " " <= ch <= "~" else f"\\x{ord(ch):02x}" if ord(ch) < 256 else "?" for ch in text[:limit])
    return out + ("..." if len(text) > limit else "")


@dataclass(frozen=True)
class MshHeader:
    field_separator: str
    encoding_characters: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_datetime: str
    message_type: str  # MSH-9 as sent, e.g. "ORU^R01^ORU_R01"
    control_id: str  # MSH-10
    processing_id: str
    version: str  # MSH-12
    charset: str  # MSH-18 first repetition, "" if absent
    fields: tuple[str, ...]  # MSH-1.. as strings (index 0 = MSH-1)

    @property
    def component_separator(self) -> str:
        return self.encoding_characters[0] if self.encoding_characters else "^"

    @property
    def kind(self) -> str:
        """Message code and trigger event, e.g. ``ADT^A01`` (the structure id is dropped)."""
        parts = self.message_type.split(self.component_separator)
        return "^".join(p for p in parts[:2] if p) or "UNKNOWN"

    def field(self, number: int) -> str:
        """MSH-n as sent (1-based, as in the standard)."""
        return self.fields[number - 1] if 0 < number <= len(self.fields) else ""

    def component(self, number: int, component: int = 1) -> str:
        parts = self.field(number).split(self.component_separator)
        return parts[component - 1] if component <= len(parts) else ""


def strip_bom(data: bytes) -> bytes:
    return data[len(UTF8_BOM):] if data.startswith(UTF8_BOM) else data


def split_segments(data: bytes) -> list[bytes]:
    """Segments of a message or file, whatever the sender used as segment end; blanks dropped."""
    return [seg for seg in _SEGMENT_END.split(strip_bom(data)) if seg.strip()]


def normalize_segment_ends(data: bytes) -> bytes:
    """One ``\\r`` per segment, the HL7 standard terminator."""
    return b"\r".join(split_segments(data)) + b"\r"


def _delimiter_ok(ch: str) -> bool:
    """HL7 delimiters are printable ASCII, not letters, digits or blanks (a byte like 0x80 or a control
    character is garbage, and could not be written back in an ASCII ACK)."""
    return "!" <= ch <= "~" and not ch.isalnum()


def read_msh(data: bytes) -> MshHeader:
    """Parse the MSH segment from raw bytes. Raises WireError naming the problem."""
    segments = split_segments(data.lstrip(b"\x00 \t"))
    if not segments:
        raise WireError("empty message", "100")
    msh = next((s for s in segments if s.startswith(b"MSH")), None)
    if msh is None:
        raise WireError("no MSH segment", "100")
    if segments[0][:3] not in (b"MSH", *_BATCH_SEGMENTS):
        raise WireError("message does not start with MSH", "100")
    if len(msh) < 8:
        raise WireError("MSH segment too short", "101")
    try:
        text = msh.decode("ascii")
    except UnicodeDecodeError:
        # MSH must be ASCII-compatible; non-ASCII in MSH is read as Latin-1 so we can still ACK.
        text = msh.decode("latin-1")
    separator = text[3]
    if not _delimiter_ok(separator):
        raise WireError("invalid field separator in MSH-1", "102")
    parts = text.split(separator)
    # Feeds sometimes double a character (an escaped "\\"); keep the first of each, in order.
    encoding = "".join(dict.fromkeys(parts[1])) if len(parts) > 1 else ""
    if not 2 <= len(encoding) <= 5 or separator in encoding or not all(_delimiter_ok(c) for c in encoding):
        raise WireError("invalid encoding characters in MSH-2", "102")
    fields = (separator, *parts[1:])

    def f(n: int) -> str:
        return fields[n - 1] if n <= len(fields) else ""

    repetition = encoding[1] if len(encoding) > 1 else "~"
    header = MshHeader(
        field_separator=separator, encoding_characters=encoding,
        sending_application=f(3), sending_facility=f(4), receiving_application=f(5),
        receiving_facility=f(6), message_datetime=f(7), message_type=f(9), control_id=f(10),
        processing_id=f(11), version=f(12), charset=f(18).split(repetition)[0].strip(), fields=tuple(fields))
    if not header.message_type:
        raise WireError("MSH-9 message type is empty", "101")
    if not header.control_id:
        raise WireError("MSH-10 message control id is empty", "101")
    return header


def codec_for(charset: str, default: str = "ASCII") -> str:
    """Python codec for an MSH-18 value (or the source's default when MSH-18 is empty).

    Raises UnsupportedCharset for anything outside table 0211 and its common aliases.
    """
    name = _BLANKS.sub(" ", (charset or default or "ASCII").strip().upper())
    codec = CHARSETS.get(name)
    if codec:
        return codec
    if name in _NOT_ASCII_COMPATIBLE:
        raise UnsupportedCharset(f"character set {name} is not supported over MLLP (not ASCII-compatible); "
                                 "send UNICODE UTF-8")
    raise UnsupportedCharset(f"unsupported character set in MSH-18 (HL7 table 0211): {printable(name)}")


@lru_cache(maxsize=256)
def is_supported_charset(charset: str) -> bool:
    try:
        codec_for(charset)
    except UnsupportedCharset:
        return False
    return True


def decode(data: bytes, charset: str = "", default: str = "ASCII") -> str:
    """Decode a message strictly in its declared character set. A UTF-8 BOM means UTF-8."""
    return decode_detailed(data, charset, default)[0]


def decode_detailed(data: bytes, charset: str = "", default: str = "ASCII") -> tuple[str, str]:
    """Decode strictly; return (text, codec actually used).

    Senders that declare (or default to) ASCII but send UTF-8 are common; UTF-8 is a strict
    superset of ASCII, so reading such bytes as UTF-8 loses nothing. Any other mismatch is an error.
    """
    if data.startswith(UTF8_BOM):
        codec, data = "utf-8", data[len(UTF8_BOM):]
    else:
        codec = codec_for(charset, default)
    try:
        return data.decode(codec, errors="strict"), codec
    except UnicodeDecodeError as err:
        if codec == "ascii":
            try:
                return data.decode("utf-8", errors="strict"), "utf-8"
            except UnicodeDecodeError:
                pass
        raise WireError(f"bytes at offset {err.start} are not valid {codec}", "102") from None


def encode(text: str, charset: str = "", default: str = "ASCII") -> bytes:
    """Encode (e.g. an ACK) in the sender's character set; characters it can't carry are escaped."""
    codec = codec_for(charset, default)
    return text.encode(codec, errors="backslashreplace")


def split_batch(data: bytes) -> list[bytes]:
    """Split a file or batch (FHS/BHS ... BTS/FTS) into messages, one ``\\r``-terminated message each.

    A plain single message comes back as a list of one. Batch header/trailer segments are dropped.
    """
    messages: list[list[bytes]] = []
    for segment in split_segments(data):
        tag = segment[:3]
        if tag in _BATCH_SEGMENTS:
            continue
        if tag == b"MSH" or not messages:
            messages.append([])
        messages[-1].append(segment)
    return [b"\r".join(segs) + b"\r" for segs in messages]


def is_batch(data: bytes) -> bool:
    return starts_batch(split_segments(data))


def starts_batch(segments: list[bytes]) -> bool:
    """``is_batch`` for a message already split into segments."""
    return bool(segments) and segments[0][:3] in (b"FHS", b"BHS")
