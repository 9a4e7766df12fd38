"""ACKs built the way HAPI builds them, in the sender's version and character set."""

from __future__ import annotations

from datetime import UTC, datetime

from ehrbridge.hl7.wire import read_msh
from ehrbridge.mllp.ack import AckError, ack_code, build_ack, fallback_header, should_send

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def seg(payload: bytes, tag: bytes) -> list[bytes]:
    return next(s for s in payload.split(b"\r") if s.startswith(tag)).split(b"|")


def test_aa_swaps_msh_3_to_6_and_echoes_control_id() -> None:
    h = read_msh(b"MSH|^~\\&|LAB|LABFAC|EHR|HOSP|20240101||ORU^R01^ORU_R01|ABC123|P|2.5.1\rPID|1\r")
    ack = build_ack(h, "AA", now=NOW, control_id="ACK1")
    msh, msa = seg(ack.payload, b"MSH"), seg(ack.payload, b"MSA")
    assert msh[2:6] == [b"EHR", b"HOSP", b"LAB", b"LABFAC"]
    assert msh[6] == b"20240506070809+0000" and msh[8] == b"ACK^R01^ACK" and msh[9] == b"ACK1"
    assert msh[10] == b"P" and msh[11] == b"2.5.1"
    assert msa == [b"MSA", b"AA", b"ABC123"]
    assert b"ERR" not in ack.payload and ack.payload.endswith(b"\r")


def test_v25_error_has_err_2_location_and_err_3_code() -> None:
    h = read_msh(b"MSH|^~\\&|LAB|F|EHR|H|2024||ADT^A01|C1|P|2.5\r")
    ack = build_ack(h, "AE", AckError("207", "queue | down", ("MSH", 1, 10)), now=NOW)
    err = seg(ack.payload, b"ERR")
    assert err[2] == b"MSH^1^10" and err[3].startswith(b"207^Application internal error^HL70357")
    assert err[4] == b"E"
    assert seg(ack.payload, b"MSA")[3] == b"queue \\F\\ down"  # escaped, structure intact


def test_pre_25_error_uses_err_1_and_two_component_msh9() -> None:
    h = read_msh(b"MSH|^~\\&|LAB|F|EHR|H|2024||ADT^A01|C1|P|2.3\r")
    ack = build_ack(h, "AR", AckError("100", "bad", ("MSH", 1, 9)), now=NOW)
    assert seg(ack.payload, b"MSH")[8] == b"ACK^A01"
    assert seg(ack.payload, b"ERR")[1] == b"MSH^1^9^100&Segment sequence error&HL70357"


def test_nonstandard_delimiters_and_charset_are_followed() -> None:
    raw = "MSH#$%@!#LAB#F#EHR#H#2024##ORU$R01#C9#P#2.5.1######8859/1\rPID#1\r".encode("latin-1")
    h = read_msh(raw)
    ack = build_ack(h, "AE", AckError("102", "Müller # ünicode"), now=NOW)
    text = ack.payload.decode("latin-1")
    assert text.startswith("MSH#$%@!#EHR#H#LAB#F#") and "ACK$R01$ACK" in text
    assert text.split("\r")[0].endswith("#8859/1")
    assert "Müller @F@ ünicode" in text  # Latin-1 bytes, field separator escaped with MSH-2's escape char


def test_enhanced_mode_codes_and_msh15() -> None:
    al = read_msh(b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5|||AL|NE\r")
    ne = read_msh(b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5|||NE|NE\r")
    er = read_msh(b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5|||ER|NE\r")
    orig = read_msh(b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5\r")
    assert ack_code(al, True) == "CA" and ack_code(al, False) == "CE" and ack_code(al, False, True) == "CR"
    assert ack_code(orig, True) == "AA" and ack_code(orig, False, True) == "AR"
    assert should_send(al, "CA") and not should_send(ne, "CA") and not should_send(ne, "CE")
    assert not should_send(er, "CA") and should_send(er, "CE") and should_send(orig, "AE")


def test_fallback_header_recovers_what_it_can() -> None:
    h = fallback_header(b"junk\rMSH|^~\\&|LAB|F|EHR|H|2024||ORU^R01|X77|P|2.4\rno more")
    assert h.control_id == "X77" and h.sending_application == "LAB" and h.version == "2.4"
    empty = fallback_header(b"\x00\x01 nothing")
    ack = build_ack(empty, "AR", AckError("100", "no MSH segment"), now=NOW)
    assert ack.payload.startswith(b"MSH|^~\\&|") and seg(ack.payload, b"MSA")[:3] == [b"MSA", b"AR", b""]


def test_control_ids_are_unique() -> None:
    h = read_msh(b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5\r")
    ids = {seg(build_ack(h, "AA").payload, b"MSH")[9] for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) <= 20 for i in ids)
