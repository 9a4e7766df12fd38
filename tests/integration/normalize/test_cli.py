"""`ehrbridge normalize` / `ehrbridge preflight`: output lines, exit codes, reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ehrbridge.cli.main import app

pytestmark = pytest.mark.integration
EVENTS = Path(__file__).resolve().parents[3] / "events"
runner = CliRunner()


def test_batch_file_gives_one_line_per_message_and_exit_0() -> None:
    result = runner.invoke(app, ["normalize", "--json", str(EVENTS / "hl7" / "adt_a08_batch.hl7")])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["message_control_id"] for line in lines] == ["ADT000201", "ADT000202"]
    assert all(line["status"] == "ok" and line["bundle"]["type"] == "transaction" for line in lines)
    assert {"unmapped", "repairs", "source"} <= set(lines[0])


def test_any_quarantine_exits_1_with_reasons() -> None:
    result = runner.invoke(app, ["normalize", "--json", str(EVENTS / "hl7" / "oru_r01_chem7.hl7"),
                                 str(EVENTS / "hl7" / "adt_a01_no_patient_id.hl7")])
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["status"] == "ok" and lines[0]["repairs"]
    assert lines[1]["status"] == "quarantined" and "PID-3" in lines[1]["reasons"][0]


def test_strict_validation_and_table_output() -> None:
    result = runner.invoke(app, ["normalize", "--strict", str(EVENTS / "hl7" / "vxu_v04_hepb.hl7"),
                                 str(EVENTS / "fhir" / "oracle-patient.json")])
    assert result.exit_code == 0 and "VXU^V04" in result.stdout


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert runner.invoke(app, ["normalize", str(tmp_path / "missing.hl7")]).exit_code == 2
    bad = tmp_path / "t.yaml"
    bad.write_text("tenant_id: [", encoding="utf-8")
    assert runner.invoke(app, ["normalize", "--tenant-config", str(bad), str(EVENTS / "hl7" / "vxu_v04_hepb.hl7")]
                         ).exit_code == 2
    assert runner.invoke(app, ["normalize"]).exit_code == 2
    assert runner.invoke(app, ["preflight", str(tmp_path / "nope")]).exit_code == 2


def test_tenant_config_changes_policy(tmp_path: Path) -> None:
    cfg = tmp_path / "strict.yaml"
    cfg.write_text("tenant_id: strict-lab\nvendor: generic\ntimezone: Europe/Berlin\n"
                   "terminology:\n  on_invalid_code: quarantine\n", encoding="utf-8")
    result = runner.invoke(app, ["normalize", "--json", "--tenant-config", str(cfg),
                                 str(EVENTS / "hl7" / "oru_r01_chem7.hl7")])
    assert result.exit_code == 1
    assert "invalid check digit" in json.loads(result.stdout)["reasons"][0]


def test_preflight_reports_per_type_with_html(tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["preflight", str(EVENTS / "hl7"), "--html", str(html), "--json-out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    oru = report["by_type"]["ORU^R01"]
    assert oru["ok"] >= 1 and oru["repairs"] and oru["invalid_codes"]
    assert oru["fields_mapped"] > 50 and oru["fields_unmapped"] >= 1
    assert report["by_type"]["ADT^A01"]["quarantine_reasons"]
    assert "ZDS" in report["by_type"]["ADT^A01"]["unmapped_segments"]
    assert report["by_type"]["ADT^A01"]["times_without_offset"] > 0
    text = html.read_text()
    assert "<svg" in text and "ORU^R01" in text and "<script" not in text
    assert "Testpatient" not in text and "DEMO100234" not in text  # counts and codes only
