"""`tenants show` and `tenants check` (a deployed tenant, on the twin) name each recorded 403 denial and
when the poller asks again; the DynamoDB state clears one denial and keeps the others."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from ehrbridge.auth.state import DynamoRefreshState
from ehrbridge.cli.main import app
from ehrbridge.poll.cursor import DynamoCursorStore
from ehrbridge.poll.jobs import DEFAULT_REPROBE_AFTER_S, REPROBE_ENV
from ehrbridge.sandbox.server import SandboxEHR
from tests.integration.auth.conftest import pem, register

pytestmark = pytest.mark.integration


def test_show_and_check_name_the_denial_and_its_next_reprobe(tmp_path: Path, twin: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with SandboxEHR("generic") as sandbox:
        register(sandbox, policy_denied_types={"Observation"})
        key = tmp_path / "k.pem"
        key.write_text(pem("RS384"))
        config = tmp_path / "tenant.yaml"
        config.write_text(yaml.safe_dump({
            "tenant_id": "acme-health", "vendor": "generic", "fhir_base_url": sandbox.fhir_base_url,
            "client_id": "client-1", "key_id": "k1", "algorithm": "RS384", "workflows": ["labs"],
            "private_key_file": str(key)}))
        runner = CliRunner()
        assert runner.invoke(app, ["tenants", "add", str(config)]).exit_code == 0
        table = twin.tables["state"]
        state, cursors = DynamoRefreshState(table), DynamoCursorStore(table)
        state.mark_server_denied("acme-health", "Observation")
        state.mark_server_denied("acme-health", "DiagnosticReport")
        probed = time.time() - 3600
        cursor = cursors.get("acme-health", "Observation")
        cursors.put(replace(cursor, denied_at=probed - 86_400, denied_probed_at=probed, denied_scopes="x"))
        expected = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(probed + DEFAULT_REPROBE_AFTER_S))

        shown = runner.invoke(app, ["tenants", "show", "acme-health"])
        assert shown.exit_code == 0, shown.output
        assert "recorded 403 denial: Observation (since " in shown.output
        assert f"re-probed at {expected}, or sooner when the granted scopes change" in shown.output
        assert "recorded 403 denial: DiagnosticReport (since unknown; re-probed at next dispatch" in shown.output

        monkeypatch.setenv(REPROBE_ENV, "7200")  # the deployment's interval is configurable
        checked = runner.invoke(app, ["tenants", "check", "acme-health", "--json"])
        assert checked.exit_code == 2, checked.output  # still degraded: the live probe gets 403 too
        report = json.loads(checked.stdout)
        assert report["denied_types"] == ["Observation"]
        by_type = {d["resource_type"]: d for d in report["recorded_denials"]}
        assert by_type["Observation"]["next_reprobe"] == time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                       time.gmtime(probed + 7200))
        # A check of a YAML file before go-live has nothing on record to show.
        assert json.loads(runner.invoke(app, ["tenants", "check", str(config), "--json"]).stdout)[
            "recorded_denials"] is None

        state.clear_server_denied("acme-health", "Observation")
        assert state.status("acme-health").server_denied_types == ["DiagnosticReport"]
        reloaded = cursors.get("acme-health", "Observation")
        assert reloaded.denied_probed_at == pytest.approx(probed) and reloaded.denied_scopes == "x"
