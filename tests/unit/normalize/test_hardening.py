"""Issue 13 items 5-7 in the normalizer: crashes that only the last guard caught, invalid values called
``ok``, amplification, silent empty input. Each from the smallest message that showed it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ehrbridge.cli.main import app
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.hl7.timefmt import TsError, parse_ts
from ehrbridge.normalize import datatypes
from ehrbridge.normalize.context import QuarantineError
from ehrbridge.normalize.engine import _instant, normalize_hl7
from ehrbridge.normalize.preflight import normalize_file

from .conftest import with_policy

MSH = "MSH|^~\\&|LAB|FAC|EHR|DEMO|{ts}||ADT^A01|C1|P|2.5.1\r"
PID = "PID|1||R1^^^MRN^MR||Doe^Jane||{birth}\r"
runner = CliRunner()


def adt(ts: str = "20240101120000", birth: str = "19800101", extra: str = "") -> bytes:
    return (MSH.format(ts=ts) + "EVN|A01|" + ts + "\r" + PID.format(birth=birth) + "PV1|1|I\r" + extra).encode()


def no_crash(result) -> None:  # type: ignore[no-untyped-def]
    assert not any(r.startswith("mapping failed") for r in result.reasons), result.reasons


# ---- crashes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["99991231235959", "99991231230000", "00010101000000"])
def test_parse_ts_near_the_ends_of_the_calendar_with_a_sender_zone(value: str) -> None:
    for zone in ("America/New_York", "Pacific/Kiritimati", "Etc/GMT+12"):
        try:
            ts = parse_ts(value, zone)  # was OverflowError
        except TsError:
            continue
        assert ts.fhir[:4] == value[:4]


def test_message_time_near_year_9999_does_not_crash(tenant: TenantConfig) -> None:
    no_crash(normalize_hl7(adt(ts="99991231235959"), tenant))


@pytest.mark.parametrize("value", ["0000", "000001", "00000101", "00000101120000"])
def test_year_0000_is_not_a_date(value: str) -> None:
    with pytest.raises(TsError):
        parse_ts(value)


def test_instant_of_year_0_quarantines_instead_of_crashing() -> None:
    with pytest.raises(QuarantineError):
        _instant("0000")  # was ValueError: year 0 is out of range
    assert _instant("0001", "Europe/Amsterdam").endswith("+00:19")  # local mean time: no seconds in the offset


def test_message_with_year_0000_is_never_ok_with_it(tenant: TenantConfig) -> None:
    for result in (normalize_hl7(adt(ts="0000"), tenant), normalize_hl7(adt(birth="0000"), tenant)):
        no_crash(result)
        assert '"0000' not in json.dumps(result.bundle or {})  # no date value in year 0000


def test_unicode_digits_are_not_dates() -> None:
    with pytest.raises(TsError):
        parse_ts("\uff12\uff10\uff12\uff13")  # '２０２３'
    assert datatypes.decimal("\uff12\uff13") is None


def test_years_below_1000_keep_four_digits() -> None:
    assert parse_ts("09990101120000", "UTC").fhir == "0999-01-01T12:00:00+00:00"


def test_nm_longer_than_pythons_int_limit(tenant: TenantConfig) -> None:
    assert datatypes.decimal("9" * 4301) is None  # was ValueError (int max str digits)
    assert datatypes.decimal("9" * 400 + ".5") is None  # float would be inf
    oru = ("MSH|^~\\&|LAB|FAC|EHR|DEMO|20240101120000||ORU^R01^ORU_R01|C1|P|2.5.1\r"
           "PID|1||R1^^^MRN^MR||Doe^Jane\rOBR|1||O1|718-7^Hgb^LN\r"
           f"OBX|1|NM|718-7^Hgb^LN||{'9' * 4301}|g/dL|{'1' * 4301}-{'2' * 4301}\r").encode()
    no_crash(normalize_hl7(oru, tenant))


# ---- amplification ------------------------------------------------------------------------------
def test_repetitions_over_the_limit_are_quarantined_before_mapping(tenant: TenantConfig) -> None:
    pv1 = "PV1|1|I|||||" + "~".join(["1234^WELBY^MARCUS"] * 1001) + "\r"
    data = (MSH.format(ts="20240101120000") + "EVN|A01|20240101120000\r" + PID.format(birth="19800101")
            + pv1).encode()
    result = normalize_hl7(data, tenant)
    assert result.status == "quarantined"
    assert result.reasons == ["limit exceeded: PV1-7 has 1001 repetitions (max_repetitions_per_field 1000)"]
    assert normalize_hl7(data, with_policy(tenant, limits={"max_repetitions_per_field": 2000})).ok


def test_segments_resources_and_output_bytes_limits(tenant: TenantConfig) -> None:
    data = adt(extra="AL1|1|DA|7980^Penicillin^RXNORM|SV|Hives\r" * 3)
    assert normalize_hl7(data, tenant).ok
    small = with_policy(tenant, limits={"max_segments": 5})
    assert normalize_hl7(data, small).reasons == ["limit exceeded: 7 segments (max_segments 5)"]
    few = with_policy(tenant, limits={"max_resources_per_bundle": 2})
    assert normalize_hl7(data, few).reasons[0].startswith("limit exceeded: ")
    assert "resources in the bundle" in normalize_hl7(data, few).reasons[0]
    tiny = with_policy(tenant, limits={"max_output_bytes": 1024})
    assert "max_output_bytes 1024" in normalize_hl7(data, tiny).reasons[0]


def test_ok_result_carries_the_serialized_bundle(tenant: TenantConfig) -> None:
    result = normalize_hl7(adt(), tenant)
    assert result.ok and json.loads(result.bundle_json) == result.bundle


# ---- empty input and the CLI --------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"", b" \n\t\r\n"])
def test_empty_files_are_reported(tmp_path: Path, content: bytes, tenant: TenantConfig) -> None:
    path = tmp_path / "empty.hl7"
    path.write_bytes(content)
    [result] = normalize_file(path, tenant)
    assert result.status == "quarantined" and result.reasons == ["empty input"]
    cli = runner.invoke(app, ["normalize", "--json", str(path)])
    assert cli.exit_code == 1
    assert json.loads(cli.stdout)["reasons"] == ["empty input"]


def test_issue_reproducer_exits_1_with_a_quarantine_line(tmp_path: Path) -> None:
    path = tmp_path / "x.hl7"
    path.write_bytes(b"MSH|^~\\&|LAB|FAC|EHR|DEMO|20240101120000||ADT^A01|C1|P|2.5.1||||||ROT13\r"
                     b"PID|1||R1^^^MRN^MR||Doe^Jane\r")
    result = runner.invoke(app, ["normalize", "--json", str(path)])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    line = json.loads(result.stdout)
    assert line["status"] == "quarantined" and line["message_control_id"] == "C1"
    assert "unsupported character set in MSH-18" in line["reasons"][0] and "Traceback" not in result.output


def test_preflight_reports_every_file_whatever_its_charset(tmp_path: Path) -> None:
    for i, charset in enumerate(("ROT13", "BASE64", "A\x00B", "UNICODE UTF-8")):
        (tmp_path / f"m{i}.hl7").write_bytes(
            f"MSH|^~\\&|LAB|FAC|EHR|DEMO|20240101120000||ADT^A01|C{i}|P|2.5.1||||||{charset}\r"
            "EVN|A01|20240101120000\rPID|1||R1^^^MRN^MR||Doe^Jane\rPV1|1|I\r".encode("latin-1"))
    (tmp_path / "empty.hl7").write_bytes(b"")
    result = runner.invoke(app, ["preflight", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["messages"] == 5 and report["ok"] == 1 and report["quarantined"] == 4


def test_codes_with_runs_of_blanks_are_collapsed_not_emitted_invalid(tenant: TenantConfig) -> None:
    from ehrbridge.normalize.validate import validate_with_models

    oru = (b"MSH|^~\\&|LAB|FAC|EHR|DEMO|20240101120000||ORU^R01^ORU_R01|C1|P|2.5.1\r"
           b"PID|1||R1^^^MRN^M  R||Doe^Jane\rOBR|1||O1|718-7^Hgb^LN\r"
           b"OBX|1|CWE|A  B^Thing^L||X  Y^Val^L||||||F\r")
    result = normalize_hl7(oru, tenant)
    assert result.ok and validate_with_models(result.bundle or {}) == []
    assert '"A B"' in result.bundle_json and '"X Y"' in result.bundle_json
    assert {r["where"] for r in result.repairs if r["kind"] == "code-whitespace"} == {"PID-3.5", "OBX-3", "OBX-5"}


def test_integers_and_times_stay_in_fhir_ranges(tenant: TenantConfig) -> None:
    """Found by the long fuzz: PID-25 99999999999 became multipleBirthInteger past FHIR's 32 bits; OBX TM
    '9999' or Unicode digits became valueTime '99:99:00'."""
    from ehrbridge.normalize.validate import validate_with_models

    oru = ("MSH|^~\\&|LAB|FAC|EHR|DEMO|20240101120000||ORU^R01^ORU_R01|C1|P|2.5.1\r"
           "PID|1||R1^^^MRN^MR||Doe^Jane||19800101|F||||||||||||||||Y|99999999999\rOBR|1||O1|718-7^Hgb^LN\r"
           "OBX|1|TM|A^B^L||9999||||||F\rOBX|2|TM|A^C^L||\uff12\uff13\uff15\uff19||||||F\r"
           "OBX|3|TM|A^D^L||1230||||||F\r").encode()
    result = normalize_hl7(oru, tenant)
    assert result.ok and validate_with_models(result.bundle or {}) == []
    resources = [e["resource"] for e in (result.bundle or {})["entry"]]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    assert "multipleBirthInteger" not in patient and patient["multipleBirthBoolean"] is True
    times = [r.get("valueTime") for r in resources if r["resourceType"] == "Observation"]
    assert times == [None, None, "12:30:00"]
    assert [i["code"] for i in result.issues].count("invalid-time") == 2


def test_too_many_segments_is_refused_before_parsing(tenant: TenantConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    from ehrbridge.normalize import engine

    def no_parse(*_: object) -> None:
        raise AssertionError("parsed although the segment bound was passed")

    monkeypatch.setattr(engine, "parse", no_parse)
    many = adt(extra="NTE|1||x\r" * 200)
    for data in (many, many.replace(b"\r", b"\r\n")):
        result = normalize_hl7(data, with_policy(tenant, limits={"max_segments": 100}))
        assert result.reasons == ["limit exceeded: 204 segments (max_segments 100)"]
        assert (result.kind, result.control_id) == ("ADT^A01", "C1")


def test_unicode_blanks_in_text_become_spaces(tenant: TenantConfig) -> None:
    """Found by the long fuzz: FHIR string is [ \\r\\n\\t\\S]+, so a no-break space, U+2028 or VT in any text
    made the R4B models refuse an `ok` bundle."""
    from ehrbridge.normalize.validate import validate_with_models

    oru = ("MSH|^~\\&|LAB|FAC|EHR|DEMO|20240101120000||ORU^R01^ORU_R01|C1|P|2.5.1\r"
           "PID|1||R1^^^MRN^MR||Doe\xa0Jane\rOBR|1||O1|718-7^Hgb^LN\r"
           "OBX|1|ST|A^B^L||\u2028||||||F\rOBX|2|ST|A^C^L||x\x0by||||||F\r").encode()
    result = normalize_hl7(oru, tenant)
    assert result.ok and validate_with_models(result.bundle or {}) == []
    assert json.loads(result.bundle_json) == result.bundle and "\\u00a0" not in result.bundle_json
    assert any(r["kind"] == "whitespace" for r in result.repairs)


def test_form_feed_in_text_becomes_a_space_and_a_literal_backslash_f_does_not(tenant: TenantConfig) -> None:
    """JSON writes a form feed as ``\\f`` (not ``\\u000c``): the blank scan must read that escape too, and
    only a real escape (an odd run of backslashes), not a text that spells a backslash and an f."""
    from ehrbridge.normalize.validate import validate_with_models

    head = ("MSH|^~\\&|LAB|FAC|EHR|DEMO|20240101120000||ORU^R01^ORU_R01|C1|P|2.5.1\r"
            "PID|1||R1^^^MRN^MR||Doe^Jane\rOBR|1||O1|718-7^Hgb^LN\r")
    result = normalize_hl7((head + "OBX|1|ST|A^B^L||page\x0cbreak||||||F\r").encode(), tenant)
    assert result.ok and validate_with_models(result.bundle or {}) == []
    assert "\\f" not in result.bundle_json and "page break" in result.bundle_json
    assert any(r["kind"] == "whitespace" for r in result.repairs)
    # HL7 escape \E\ is a literal backslash: "C:\E\files" is the text C:\files, JSON "C:\\files" - no blank.
    literal = normalize_hl7((head + "OBX|1|ST|A^B^L||C:\\E\\files||||||F\r").encode(), tenant)
    assert literal.ok and "C:\\\\files" in literal.bundle_json
    assert not any(r["kind"] == "whitespace" for r in literal.repairs)
