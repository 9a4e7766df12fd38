"""Issue 13 item 1: MSH-18 accepts only HL7 table 0211 character sets (and common aliases) mapped to
ASCII-compatible text codecs; everything else is a clear refusal (table 0357 code 103) with a reason."""

from __future__ import annotations

import pytest

from ehrbridge.hl7 import wire
from ehrbridge.hl7.message import ParseError, parse

TABLE_0211 = ("ASCII", "8859/1", "8859/2", "8859/3", "8859/4", "8859/5", "8859/6", "8859/7", "8859/8", "8859/9",
              "8859/15", "ISO IR14", "ISO IR87", "ISO IR159", "GB 18030-2000", "KS X 1001", "CNS 11643-1992",
              "BIG-5", "UNICODE", "UNICODE UTF-8")
# Python knows all of these; none is an HL7 character set (or not an ASCII-compatible one).
REFUSED = ("ROT13", "BASE64", "ZLIB", "HEX", "UU", "QUOPRI", "BZ2", "UNDEFINED", "A\x00B", "CP037", "IDNA",
           "UNICODE UTF-16", "UNICODE UTF-32", "UTF-7", "UNICODE_ESCAPE", "PUNYCODE", "RAW_UNICODE_ESCAPE",
           "MBCS", "UTF-16", "")


def msh(charset: str) -> bytes:
    return (f"MSH|^~\\&|LAB|FAC|EHR|DEMO|20240101120000||ADT^A01|C1|P|2.5.1||||||{charset}\r"
            "PID|1||R1^^^MRN^MR||Doe^Jane\r").encode("latin-1")


@pytest.mark.parametrize("name", TABLE_0211)
def test_every_table_0211_value_is_accepted(name: str) -> None:
    assert wire.codec_for(name)


@pytest.mark.parametrize("codec", sorted(set(wire.CHARSETS.values())))
def test_every_accepted_codec_is_ascii_compatible(codec: str) -> None:
    # The MSH is read as ASCII bytes and a refusal's ACK must stay readable: ASCII must be itself.
    text = "MSH|^~\\&|A|B|C|D|20240101||ACK^A01^ACK|X1|P|2.5.1\rMSA|AA|C1\r"
    assert text.encode(codec) == text.encode("ascii")
    assert text.encode("ascii").decode(codec) == text


@pytest.mark.parametrize("name", [n for n in REFUSED if n])
def test_non_table_charsets_are_refused_with_code_103_and_a_printable_reason(name: str) -> None:
    with pytest.raises(wire.UnsupportedCharset) as info:
        wire.codec_for(name)
    assert info.value.code == "103"
    assert info.value.reason.isascii() and info.value.reason.isprintable()
    assert "\x00" not in info.value.reason


def test_aliases_and_spacing() -> None:
    assert wire.codec_for("unicode  utf-8") == "utf-8"
    assert wire.codec_for(" iso-8859-1 ") == "latin-1"
    assert wire.codec_for("", default="8859/1") == "latin-1"


@pytest.mark.parametrize("name", ["ROT13", "BASE64", "UNDEFINED", "A\x00B", "CP037", "IDNA", "UU"])
def test_parse_refuses_with_parse_error_not_a_crash(name: str) -> None:
    with pytest.raises(ParseError) as info:
        parse(msh(name))
    assert "character set" in info.value.reason


def test_invalid_bytes_in_a_known_charset_are_a_data_type_error() -> None:
    with pytest.raises(wire.WireError) as info:
        wire.decode(msh("ASCII") + b"\xff\xfe", "ASCII")
    assert info.value.code == "102" and not isinstance(info.value, wire.UnsupportedCharset)
