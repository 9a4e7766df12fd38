"""HL7 v2 acknowledgements, built the way HAPI builds them.

- MSH-1/2 copied; MSH-3/4 <- inbound MSH-5/6 and MSH-5/6 <- inbound MSH-3/4; MSH-7 now; MSH-9
  ``ACK^<event>`` (plus ``^ACK`` from v2.3.1 on, when the message structure component exists);
  MSH-10 a new id; MSH-11, MSH-12 and MSH-18 copied.
- MSA-1 the code, MSA-2 = inbound MSH-10; MSA-3 a short text when not accepted.
- ERR for AE/AR: v2.5+ ``ERR||<location>|<0357 code>^<text>^HL70357|E``; before 2.5
  ``ERR|<segment>^<sequence>^<field>^<code>&<text>&HL70357``.
- Original mode (MSH-15/16 empty): AA/AE/AR. Enhanced mode (MSH-15 set): CA/CE/CR, and MSH-15
  (AL/NE/ER/SU) decides whether an accept ACK is sent at all.

The ACK is encoded in the sender's character set (MSH-18, else the source's default) when that is a
table 0211 set we support (all ASCII-compatible); otherwise MSH-18 is not echoed and the ACK is ASCII.
``build_ack`` never raises: whatever goes wrong, a minimal ASCII ACK with the same code goes out.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from ehrbridge.hl7.wire import MshHeader, WireError, codec_for, encode, is_supported_charset
from ehrbridge.hl7.wire import printable as wire_printable
from ehrbridge.observability import logger

# HL7 table 0357 texts (HAPI ErrorCode).
ERROR_TEXT = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "104": "Value too long",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}

ENHANCED = {"AA": "CA", "AE": "CE", "AR": "CR"}
_counter = itertools.count(1)
_prefix = f"{os.getpid() % 100000:05d}"


@dataclass(frozen=True)
class AckError:
    """Why a message was not accepted. ``location`` is (segment, sequence, field), e.g. ("MSH", 1, 10)."""

    code: str
    text: str
    location: tuple[str, int, int] | None = None


@dataclass(frozen=True)
class Ack:
    code: str  # AA AE AR CA CE CR
    payload: bytes  # the encoded ACK message (not framed)


_last_stamp: list[object] = [0, ""]


def _stamp() -> str:
    """MSH-7 for now; formatted once per second (thousands of ACKs a second share it)."""
    second = int(time.time())
    if _last_stamp[0] != second:
        _last_stamp[:] = [second, datetime.fromtimestamp(second, UTC).strftime("%Y%m%d%H%M%S%z")]
    return str(_last_stamp[1])


def _new_control_id() -> str:
    # Unique per process and time; MSH-10 is ST(20) in most versions.
    return f"A{_prefix}{next(_counter):09d}"[:20]


_VERSION = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3}){0,3}$")


def _version_tuple(version: str) -> tuple[int, ...]:
    """MSH-12 as numbers; (2, 5) when it is not a plain dotted version (ASCII digits only:
    '\u00b3'.isdigit() is True but int() refuses it)."""
    head = version.split("^")[0].split("&")[0].strip()
    if not _VERSION.match(head):
        return (2, 5)
    return tuple(int(piece) for piece in head.split("."))


def _escape(text: str, sep: str, enc: str) -> str:
    """HL7-escape free text so a reason can never break the ACK's structure."""
    esc = enc[2] if len(enc) > 2 else "\\"
    table = {esc: f"{esc}E{esc}", sep: f"{esc}F{esc}", "\r": " ", "\n": " "}
    for ch, code in zip(enc[:2] + enc[3:4], "SRT", strict=False):
        table.setdefault(ch, f"{esc}{code}{esc}")
    return "".join(table.get(ch, ch) for ch in text)


def ack_code(header: MshHeader | None, accepted: bool, rejected: bool = False) -> str:
    code = "AA" if accepted else ("AR" if rejected else "AE")
    if header is not None and header.field(15).strip():
        return ENHANCED[code]
    return code


def should_send(header: MshHeader | None, code: str) -> bool:
    """Enhanced mode honours MSH-15 (AL always, NE never, ER on error only, SU on success only)."""
    if header is None or not header.field(15).strip():
        return True
    mode = header.field(15).strip().upper()
    success = code in ("CA", "AA")
    return {"NE": False, "ER": not success, "SU": success}.get(mode, True)


def build_ack(header: MshHeader, code: str, error: AckError | None = None, *, default_charset: str = "ASCII",
              now: datetime | None = None, control_id: str | None = None) -> Ack:
    """Build the ACK for ``header``'s message. ``code`` is AA/AE/AR (or CA/CE/CR). Never raises."""
    try:
        if error is None and now is None:
            return _fast_accept(header, code, default_charset, control_id)
        return _build(header, code, error, default_charset, now, control_id)
    except Exception as err:  # a header shape we did not foresee must still get its answer
        logger.error("ack builder failed; minimal ACK sent", extra={"error_type": type(err).__name__})
        return minimal_ack(header, code, error, control_id)


def _msa2(control_id: str) -> str:
    """MSH-10 for MSA-2 of a standard-delimiter ACK: as sent when it is printable ASCII without ``|``."""
    if control_id.isascii() and control_id.isprintable() and "|" not in control_id:
        return control_id[:199]
    return wire_printable(control_id.replace("|", "\\F\\"), 199)


def minimal_ack(header: MshHeader | None, code: str, error: AckError | None = None,
                control_id: str | None = None) -> Ack:
    """An ACK that cannot fail: standard delimiters, ASCII, MSA-2 = MSH-10 when readable."""
    msh10 = ""
    with contextlib.suppress(Exception):  # an unreadable MSH-10 is left empty
        msh10 = _msa2(header.control_id) if header is not None else ""
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    code = code if code in ENHANCED or code in ENHANCED.values() else "AE"
    lines = [f"MSH|^~\\&|||||{stamp}||ACK|{wire_printable(control_id or _new_control_id(), 20)}|P|2.5",
             f"MSA|{code}|{msh10}"]
    if error is not None:
        lines.append(f"ERR||MSH^1^0|{error.code if error.code in ERROR_TEXT else '207'}^"
                     f"{ERROR_TEXT.get(error.code, ERROR_TEXT['207'])}^HL70357|E")
    payload = ("\r".join(lines) + "\r").encode("ascii", errors="replace")
    return Ack(code=code, payload=payload)


def _ack_charset(header: MshHeader) -> str:
    """MSH-18 of the ACK: the sender's when it is one we can write, else none (ASCII)."""
    return header.charset if header.charset and is_supported_charset(header.charset) else ""


_STANDARD = "^~\\&"
_SPARE = "^~\\&#$*!@%+;:?"


def _printable_delimiter(ch: str) -> bool:
    return len(ch) == 1 and "!" <= ch <= "~" and not ch.isalnum()


def ack_delimiters(header: MshHeader) -> tuple[str, str]:
    """(MSH-1, MSH-2) for the ACK: the sender's, completed to four distinct encoding characters.

    A sender may send fewer than four (or ones that python-hl7 then completes with a default it already
    uses, so nothing can parse the ACK): each missing or colliding one becomes the standard character
    for its place, or a spare one, so the ACK always parses with the sender's own separators.
    """
    sep = header.field_separator if _printable_delimiter(header.field_separator) else "|"
    given = header.encoding_characters
    used = {sep, "\r", "\n"}
    chosen: list[str] = []
    for place in range(4):
        ch = given[place] if place < len(given) else ""
        if not ch or ch in used or not _printable_delimiter(ch):
            ch = next(c for c in _STANDARD[place] + _SPARE if c not in used)
        used.add(ch)
        chosen.append(ch)
    if len(given) > 4 and given[4] not in used and _printable_delimiter(given[4]):
        chosen.append(given[4])  # truncation character (v2.7+)
    return sep, "".join(chosen)


def _build(header: MshHeader, code: str, error: AckError | None, default_charset: str, now: datetime | None,
           control_id: str | None) -> Ack:
    if not _printable_delimiter(header.field_separator):
        # Fields split on a separator we cannot write back may hold "|": only the minimal ACK is safe.
        return minimal_ack(header, code, error, control_id)
    sep, enc = ack_delimiters(header)
    comp = enc[0] if enc else "^"
    sub = enc[3] if len(enc) > 3 else "&"
    version = header.version or "2.5"
    if not _VERSION.match(version.split("^")[0].strip()):
        version = "2.5"  # an unreadable MSH-12 is not echoed
    vt = _version_tuple(version)
    stamp = now.strftime("%Y%m%d%H%M%S%z") if now else _stamp()
    event = header.component(9, 2)
    # MSH-9.3 (message structure) exists from v2.3.1 on.
    msh9 = comp.join(("ACK", event, "ACK")) if vt >= (2, 3, 1) else comp.join(("ACK", event)).rstrip(comp)
    msh = ["MSH", enc, header.receiving_application, header.receiving_facility, header.sending_application,
           header.sending_facility, stamp, "", msh9, control_id or _new_control_id(),
           header.processing_id or "P", version]
    charset = _ack_charset(header)
    if charset:
        msh += [""] * 5 + [header.field(18)]
    segments = [sep.join(msh)]
    msa = ["MSA", code, header.control_id]
    if error is not None:
        msa.append(_escape(error.text, sep, enc)[:80])
    segments.append(sep.join(msa))
    if error is not None:
        text = _escape(error.text, sep, enc)
        label = ERROR_TEXT.get(error.code, "Application internal error")
        if vt >= (2, 5):
            location = ""
            if error.location:
                seg, seq, fld = error.location
                location = comp.join((seg, str(seq), str(fld)))
            segments.append(sep.join(["ERR", "", location, comp.join((error.code, label, "HL70357", "", "", "",
                                                                      "", "", text)), "E"]))
        else:
            seg, seq, fld = error.location or ("", 0, 0)
            code_ce = sub.join((error.code, label, "HL70357"))
            segments.append(sep.join(["ERR", comp.join((seg, str(seq) if seq else "", str(fld) if fld else "",
                                                        code_ce))]))
    text = "\r".join(segments) + "\r"
    return Ack(code=code, payload=_encode(text, charset, default_charset))


def _encode(text: str, charset: str, default_charset: str) -> bytes:
    """In the sender's character set; ASCII when that (or the source default) is not one we support."""
    try:
        return encode(text, charset, default_charset)
    except (WireError, UnicodeError):
        return text.encode("ascii", errors="backslashreplace")


_TEMPLATES: dict[tuple[str, ...], tuple[str, str, str]] = {}


def _fast_accept(header: MshHeader, code: str, default_charset: str, control_id: str | None = None) -> Ack:
    """The accept ACK from a template per sender header (a feed repeats the same MSH-3..6/9/12).

    Same bytes as the general path; only MSH-7, MSH-10 and MSA-2 vary per message.
    """
    f = header.fields
    key = (code, default_charset, header.charset, *f[:6], *f[8:9], *f[10:12], *f[17:18])
    parts = _TEMPLATES.get(key)
    if parts is None:
        stamp, cid = "20000101000000+0000", "\x00CID\x00"
        marker = _build(header, code, None, default_charset, datetime(2000, 1, 1, tzinfo=UTC), cid)
        text = _decode_payload(marker.payload, header, default_charset)
        if text.count(stamp) != 1 or text.count(cid) != 1 or not text.endswith(header.control_id + "\r"):
            # A header that contains a marker itself: no template, the general path (same bytes).
            return _build(header, code, None, default_charset, None, control_id)
        head, rest = text.split(stamp, 1)
        mid, tail = rest.split(cid, 1)
        tail = tail[:len(tail) - len(header.control_id) - 1]  # strip MSA-2 + final CR
        if len(_TEMPLATES) > 4096:
            _TEMPLATES.clear()
        parts = _TEMPLATES[key] = (head, mid, tail)
    head, mid, tail = parts
    text = head + _stamp() + mid + (control_id or _new_control_id()) + tail + header.control_id + "\r"
    return Ack(code=code, payload=_encode(text, _ack_charset(header), default_charset))


def _decode_payload(payload: bytes, header: MshHeader, default_charset: str) -> str:
    try:
        return payload.decode(codec_for(_ack_charset(header), default_charset))
    except (WireError, UnicodeError):
        return payload.decode("latin-1")


def fallback_header(raw: bytes) -> MshHeader:
    """A best-effort MSH from bytes ``read_msh`` refused, so a NACK can still echo MSH-10 and swap MSH-3..6.

    Anything unrecoverable becomes empty; the ACK then goes out with standard delimiters.
    """
    fields: list[str] = []
    separator, encoding = "|", "^~\\&"
    pos = raw.find(b"MSH")
    if pos >= 0 and len(raw) > pos + 4:
        line = raw[pos:]
        for end in (b"\r", b"\n"):
            cut = line.find(end)
            if cut >= 0:
                line = line[:cut]
        text = line.decode("latin-1")
        cand = text[3] if len(text) > 3 else "|"
        if len(text) > 3 and "!" <= cand <= "~" and not cand.isalnum():  # printable ASCII, as read_msh wants
            separator = cand
            parts = text.split(separator)
            enc = parts[1] if len(parts) > 1 else ""
            if 2 <= len(enc) <= 5 and all("!" <= c <= "~" and not c.isalnum() and c != separator for c in enc):
                encoding = enc
            fields = [separator, *parts[1:]]
    fields = [f[:199] for f in fields] or [separator, encoding]
    fields[1] = encoding

    def f(n: int) -> str:
        return fields[n - 1] if n <= len(fields) else ""

    version = f(12).strip() if f(12)[:1].isdigit() else ""
    return MshHeader(field_separator=separator, encoding_characters=encoding, sending_application=f(3),
                     sending_facility=f(4), receiving_application=f(5), receiving_facility=f(6),
                     message_datetime=f(7), message_type=f(9), control_id=f(10), processing_id=f(11),
                     version=version or "2.5", charset="", fields=tuple(fields))
