"""Routing to a tenant's source, strict checks, envelope contents, patient key."""

from __future__ import annotations

import base64

import pytest

from ehrbridge.contracts.envelope import patient_key_for, stable_id
from ehrbridge.contracts.tenant import MllpSource, TenantConfig
from ehrbridge.hl7.wire import read_msh
from ehrbridge.mllp.message import Rejected, SourceDirectory, build_envelope, inspect, msh_head, pid3

FP = "ab" * 32


def tenants() -> list[TenantConfig]:
    return [
        TenantConfig(tenant_id="alpha", vendor="generic", mllp_sources=(
            MllpSource(source_id="lab", sending_application="LAB", default_charset="8859/1"),
            MllpSource(source_id="adt-north", sending_application="ADT", sending_facility="NORTH"),
            MllpSource(source_id="bound", sending_application="BOUND", client_cert_fingerprint=FP))),
        TenantConfig(tenant_id="beta", vendor="generic", mllp_sources=(
            MllpSource(source_id="adt-south", sending_application="ADT", sending_facility="SOUTH"),)),
    ]


def msg(app: str, fac: str = "F", pid: str = "PID|1||123^^^HOSP&1.2.3&ISO^MR~999^^^SSA^SS||X\r") -> bytes:
    return f"MSH|^~\\&|{app}|{fac}|EHR|H|2024||ADT^A01^ADT_A01|C1|P|2.5\r{pid}".encode()


def test_routes_on_msh3_and_msh4_across_tenants() -> None:
    d = SourceDirectory(tenants())
    assert d.resolve(read_msh(msg("LAB")), None).source.source_id == "lab"
    assert d.resolve(read_msh(msg("ADT", "NORTH")), None).tenant.tenant_id == "alpha"
    assert d.resolve(read_msh(msg("ADT^1.2^ISO", "SOUTH")), None).tenant.tenant_id == "beta"
    with pytest.raises(Rejected) as info:
        d.resolve(read_msh(msg("ADT", "EAST")), None)
    assert info.value.reject and info.value.error.location == ("MSH", 1, 3)


def test_certificate_binding_both_ways() -> None:
    d = SourceDirectory(tenants())
    assert d.resolve(read_msh(msg("BOUND")), FP).source.source_id == "bound"
    with pytest.raises(Rejected):
        d.resolve(read_msh(msg("BOUND")), None)  # a bound source needs its certificate
    with pytest.raises(Rejected, match="client certificate"):
        d.resolve(read_msh(msg("LAB")), FP)  # a bound certificate speaks only for its sources
    assert d.tenant_for_fingerprint(FP).tenant_id == "alpha"  # type: ignore[union-attr]


def test_pid3_and_patient_key() -> None:
    raw = msg("LAB")
    h = read_msh(raw)
    assert pid3(raw.decode(), h) == ("123", "HOSP")
    assert pid3(msg("LAB", pid="PID|1||\r").decode(), h) is None
    assert pid3(msg("LAB", pid="NTE|1\r").decode(), h) is None


def test_envelope_keeps_bytes_and_sets_contract_fields() -> None:
    d = SourceDirectory(tenants())
    raw = msg("LAB").replace(b"||X\r", b"||M\xfcller\r")
    h = read_msh(msh_head(raw))
    item = inspect(raw, h, d.resolve(h, None))
    env = build_envelope(raw, item)
    assert base64.b64decode(env.body) == raw and env.body_encoding == "base64"
    assert env.kind == "ADT^A01" and env.source == "hl7v2" and env.tenant_id == "alpha"
    assert env.patient_key == patient_key_for("alpha", "HOSP", "123")
    assert env.attributes == {"source_id": "lab", "msh10": "C1", "charset": "8859/1", "version": "2.5"}
    again = build_envelope(raw, inspect(raw, h, d.resolve(h, None)))
    assert again.message_id == env.message_id  # stable
    other = raw.replace(b"M\xfcller", b"Mueller")
    assert build_envelope(other, inspect(other, h, d.resolve(h, None))).message_id != env.message_id


def test_no_pid_groups_by_source() -> None:
    d = SourceDirectory(tenants())
    raw = msg("LAB", pid="EVN|A01\r")
    h = read_msh(raw)
    assert build_envelope(raw, inspect(raw, h, d.resolve(h, None))).patient_key == "src-lab"


def test_strict_charset_and_structure_checks() -> None:
    d = SourceDirectory(tenants())
    utf8 = msg("ADT", "NORTH").replace(b"|P|2.5\r", b"|P|2.5||||||UNICODE UTF-8\r").replace(b"||X\r", b"||\xff\r")
    h = read_msh(utf8)
    with pytest.raises(Rejected) as info:
        inspect(utf8, h, d.resolve(h, None))
    assert not info.value.reject and info.value.error.code == "102"
    odd = msg("ADT", "NORTH").replace(b"|P|2.5\r", b"|P|2.5||||||KLINGON\r")
    h = read_msh(odd)
    with pytest.raises(Rejected) as info:
        inspect(odd, h, d.resolve(h, None))
    assert info.value.reject
    only_msh = b"MSH|^~\\&|LAB|F|EHR|H|2024||ADT^A01|C1|P|2.5\r"
    h = read_msh(only_msh)
    with pytest.raises(Rejected, match="no segment after MSH"):
        inspect(only_msh, h, d.resolve(h, None))
    # Blank bytes after MSH (more than the first window looked at) are still no body; a segment after them is.
    padded = only_msh + b"\r\n" * 40 + b" \t\x00" * 20
    with pytest.raises(Rejected, match="no segment after MSH"):
        inspect(padded, h, d.resolve(h, None))
    late = padded + b"PID|1||MRN1\r"
    assert inspect(late, h, d.resolve(h, None)).sha256


def test_fast_envelope_json_is_the_validated_envelope() -> None:
    from ehrbridge.contracts.envelope import Envelope
    from ehrbridge.mllp.message import envelope_json, message_id_for

    d = SourceDirectory(tenants())
    odd = msg("LAB").replace(b"|C1|", b'|C"1\\x|').replace(b"ADT^A01^ADT_A01", b'AD"T^A0\\1')
    for raw in (msg("LAB").replace(b"||X\r", b'||M\xfcller "q" \\\\ x\r'), msg("ADT", "NORTH", pid="EVN|1\r"), odd):
        h = read_msh(msh_head(raw))
        item = inspect(raw, h, d.resolve(h, None))
        mid = message_id_for(item.route.tenant.tenant_id, item.route.source.source_id, h.control_id, item.sha256)
        # The cached-prefix derivation is stable_id's, so every worker and task computes the same id.
        assert mid == stable_id(item.route.tenant.tenant_id, "hl7v2", item.route.source.source_id, h.control_id,
                                item.sha256)
        body, group = envelope_json(raw, item, mid, batch=True, collision=True)
        fast = Envelope.parse_json(body)
        slow = build_envelope(raw, item, batch=True, collision=True)
        assert fast.model_dump(exclude={"received_at"}) == slow.model_dump(exclude={"received_at"})
        assert group == slow.group_id and base64.b64decode(fast.body) == raw


def test_read_header_matches_read_msh_and_keeps_its_checks() -> None:
    from ehrbridge.hl7.wire import WireError
    from ehrbridge.mllp.message import read_header

    def same(raw: bytes) -> None:
        try:
            expected = read_msh(msh_head(raw))
        except WireError as err:
            with pytest.raises(WireError) as info:
                read_header(raw)
            assert (info.value.code, info.value.reason) == (err.code, err.reason)
            return
        got = read_header(raw)
        assert got == expected and got.fields == expected.fields and got.kind == expected.kind

    base = msg("LAB")
    for control_id, stamp in (("C1", "2024"), ("C2", "20250101"), ("", "2024"), ("Z\xfc9", ""), ("C3", "2\xe924")):
        raw = base.replace(b"|C1|", f"|{control_id}|".encode("latin-1")).replace(b"|2024|", f"|{stamp}|".encode(
            "latin-1"))
        same(raw)  # first sight of the remainder is read in full, later ones reuse it
        same(raw)
    same(base.replace(b"\r", b"\n"))  # LF segment ends
    same(base.replace(b"\r", b"\r\n"))
    same(b"\x00 " + base)  # leading junk: the general path
    same(b"FHS|^~\\&\rBHS|^~\\&\r" + base)  # batch header before MSH
    same(base.replace(b"ADT^A01^ADT_A01", b""))  # empty MSH-9 is refused every time, never cached
    same(base.replace(b"ADT^A01^ADT_A01", b""))
    same(base.replace(b"|^~\\&|", b"|^~|"))  # same fields, other encoding characters: another remainder
    same(b"MSH|^~\\&|LAB|F|EHR\r")  # too few fields for the fast path
    same(b"MSH\rPID|1||X\r")  # MSH then a segment end: a WireError (an AR), never another exception
    same(b"MSH|\r|||||||||||\r")
    same(b"MSHX^~\\&|LAB|F|EHR|H|2024||ADT^A01|C9|P|2.5\rPID|1\r")  # alphanumeric separator
    # MSH-9 differs only in where the separators fall: different remainders, different headers.
    a = b"MSH|^~\\&|A|B|C|D|1||X|C1|P|2.5\rPID|1\r"
    b = b"MSH|^~\\&|A|B|C|D|1||X|C2|P||2.5\rPID|1\r"
    same(a)
    same(b)
    same(b.replace(b"|C2|", b"|C3|"))
