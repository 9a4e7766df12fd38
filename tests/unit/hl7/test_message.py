"""Parsing: the lazy tree equals hl7.parse, escapes, charsets, segment ends, batches, bad input."""

from __future__ import annotations

import glob
from pathlib import Path

import hl7
import pytest

from ehrbridge.hl7.message import ParseError, Separators, parse, split_messages, unescape
from tests.conftest import CORPUS

SEPS = Separators()


def _corpus_messages() -> list[tuple[str, bytes]]:
    out = []
    for path in sorted(glob.glob(str(CORPUS / "*" / "*.hl7"))):
        for i, message in enumerate(split_messages(Path(path).read_bytes())):
            out.append((f"{Path(path).parent.name}/{Path(path).name}#{i}", message))
    return out


def test_corpus_is_present() -> None:
    assert len(_corpus_messages()) > 100


def test_lazy_tree_equals_hl7_parse_on_the_whole_corpus() -> None:
    compared = 0
    for name, data in _corpus_messages():
        try:
            msg = parse(data)
        except ParseError:
            continue
        if "msh2-repaired" in msg.cleanups:
            continue  # hl7 would read the doubled "\\" in MSH-2 as the sub-component separator
        reference = hl7.parse(msg.text)
        assert len(reference) == len(msg.segments), name
        occurrence: dict[str, int] = {}
        for ours, theirs in zip(msg.segments, reference, strict=True):
            assert str(theirs[0]) == ours.name, name
            occurrence[ours.name] = occurrence.get(ours.name, 0) + 1
            last = ours is msg.segments[-1]  # hl7.parse strips the message's trailing whitespace
            for n in range(1, len(theirs)):
                mine = ours.fields[n].rstrip() if last and n == len(ours.fields) - 1 else ours.fields[n]
                assert mine == str(theirs[n]), f"{name} {ours.name}-{n}"
            if ours.name == "MSH":
                continue
            # Components/sub-components through our lazy accessors equal hl7's extract_field.
            for n in range(1, min(len(theirs), 12)):
                if not ours.raw(n) or ours.raw(n) == '""' or ours.seps.escape in ours.raw(n):
                    continue
                for c, sub in ((1, 1), (2, 1), (1, 2)):
                    try:
                        expected = str(reference.extract_field(ours.name, occurrence[ours.name], n, 1, c, sub))
                    except IndexError:
                        expected = ""  # hl7 raises past a leaf; we read "absent" as empty
                    if expected == '""':
                        expected = ""
                    assert ours.value(n, c, sub) == expected.strip(), f"{name} {ours.name}-{n}.{c}.{sub}"
        compared += 1
    assert compared > 90


@pytest.mark.parametrize("raw,expected", [
    (r"A\F\B", "A|B"), (r"A\S\B", "A^B"), (r"A\T\B", "A&B"), (r"A\R\B", "A~B"), (r"A\E\B", "A\\B"),
    ("\\X41\\\\X4243\\", "ABC"), (r"line1\.br\line2", "line1\nline2"), (r"\H\bold\N\ text", "bold text"),
    (r"\Zcustom\x", "x"), (r"keep \Q\ unknown", r"keep \Q\ unknown"), ("no escapes", "no escapes"),
    (r"trailing \F", r"trailing \F"), ("\\XC3A9\\", "é"),
])
def test_escape_sequences(raw: str, expected: str) -> None:
    assert unescape(raw, SEPS) == expected


def test_escapes_match_python_hl7_for_the_standard_set() -> None:
    msg = hl7.parse("MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\r")
    # (\H\..\N\ differ on purpose: python-hl7 writes "_" markers, we drop highlighting.)
    for raw in (r"A\F\B\S\C\T\D\R\E\E\F", r"\X41\ and \X4243\ y"):
        assert unescape(raw, SEPS) == msg.unescape(raw)


def test_custom_escape_character_and_separators() -> None:
    data = b"MSH^~|\\&^A^B^C^D^20240101^^ADT~A01^1^P^2.4\rPID^1^^MRN1^^DOE~JOHN\r"
    msg = parse(data)
    assert msg.kind == "ADT^A01"
    assert msg.segments[1].value(5, 2) == "JOHN"


def test_lf_crlf_bom_and_blank_lines_are_cleaned() -> None:
    base = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\rPID|1||MRN1\r"
    for variant in (base.replace(b"\r", b"\n"), base.replace(b"\r", b"\r\n"), b"\xef\xbb\xbf" + base,
                    base.replace(b"\r", b"\r\r\n")):
        msg = parse(variant)
        assert [s.name for s in msg.segments] == ["MSH", "PID"]
        assert msg.segments[1].value(3) == "MRN1"
    assert "utf8-bom" in parse(b"\xef\xbb\xbf" + base).cleanups
    assert "lf-segment-ends" in parse(base.replace(b"\r", b"\n")).cleanups


def test_latin1_declared_in_msh18_decodes_strictly() -> None:
    data = "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.3||||||8859/1\rPID|1||M1||Müller^Zoë\r".encode("latin-1")
    msg = parse(data)
    assert msg.codec == "latin-1"
    assert msg.segments[1].value(5) == "Müller" and msg.segments[1].value(5, 2) == "Zoë"


def test_latin1_bytes_declared_ascii_are_rejected_with_a_reason() -> None:
    data = "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.3\rPID|1||M1||Müller\r".encode("latin-1")
    with pytest.raises(ParseError, match="not valid"):
        parse(data)


def test_corpus_latin1_sample() -> None:
    msg = parse((CORPUS / "v2fhir-bridge" / "adt_a04_v23_latin1.hl7").read_bytes())
    assert msg.codec == "latin-1"
    assert any(ord(c) > 127 for c in msg.text)


def test_repetitions_and_nulls() -> None:
    msg = parse(b'MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\rPID|1||M1^^^H1~M2^^^H2~""||""\r')
    pid = msg.segments[1]
    assert pid.reps(3) == ["M1^^^H1", "M2^^^H2"]
    assert pid.value(3, 1, r=1) == "M2" and pid.value(3, 4, r=1) == "H2"
    assert pid.value(5) == ""


def test_batch_and_file_split_into_messages() -> None:
    file_two_batches = (CORPUS / "python-hl7" / "file_fhs_two_batches.hl7").read_bytes()
    assert len(split_messages(file_two_batches)) == 3
    with pytest.raises(ParseError, match="split the batch"):
        parse(file_two_batches)


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"), (b"PID|1||X\r", "no MSH"), (b"MSH|^~\\&|A|B|C|D|2024||ADT^A01||P|2.5\r", "MSH-10"),
    (b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5\rthis is not a segment\r", "bad segment id"),
])
def test_unparseable_input_has_a_specific_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ParseError, match=reason):
        parse(data)
