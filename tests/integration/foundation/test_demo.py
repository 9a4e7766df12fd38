"""`ehrbridge local demo --json` on the embedded default: every input accounted for, no PHI in the logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ehrbridge.local.demo import sample_files
from ehrbridge.mllp.local import read_messages
from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("demo")]


def test_demo_accounts_for_every_input_and_logs_no_phi(tmp_path: Path) -> None:
    exe = str(Path(sys.executable).with_name("ehrbridge"))
    result = subprocess.run([exe, "local", "demo", "--json", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=420,
                            env={k: v for k, v in os.environ.items() if not k.startswith("EHRBRIDGE_")})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("messages_in", "resources_out", "quarantined", "dead_lettered", "lost"):
        assert isinstance(summary[key], int), key
    hl7, fhir = sample_files(REPO / "events")
    sent = sum(len(read_messages(path)) for path in hl7)
    polled = summary["extras"]["FHIR resources polled"]  # from the sandbox EHR by the fhir_poller function
    assert polled > 0 and summary["by_kind"].get("FHIR Patient", 0) > 0
    assert summary["messages_in"] == sent + len(fhir) + polled > 0
    assert sum(summary["acks"].values()) == sent, "every HL7 message went through the bridge over TLS"
    assert summary["lost"] == 0 and summary["drained"] is True
    assert summary["delivered"] + summary["quarantined"] + summary["dead_lettered"] + \
        summary["returned_to_sender"] == summary["messages_in"]
    assert summary["extras"]["token obtained"] is True

    log = (tmp_path / "out" / "pipeline.log").read_text()
    assert log.strip(), "the functions' logs are kept next to the output"
    # Demographics that appear in the sample inputs must not appear in the logs.
    for path in hl7:
        for segment in path.read_bytes().replace(b"\n", b"\r").split(b"\r"):
            if segment.startswith(b"PID|"):
                fields = segment.decode("latin-1").split("|")
                name = fields[5].split("^")[0] if len(fields) > 5 else ""
                dob = fields[7][:8] if len(fields) > 7 else ""
                for value in (name, dob):
                    if len(value) >= 4:
                        assert value not in log, f"PHI from {path.name} leaked into the pipeline log"
