"""Tenant lifecycle from an operator's terminal (issue 15, defect 6): add after remove, the access
token does not outlive its tenant, `tenants check` says what failed and where, `--json` always
prints one JSON object, and library metric/log lines stay off the terminal unless --verbose."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from ehrbridge.aws.clients import client
from ehrbridge.cli.main import app
from ehrbridge.sandbox.server import SandboxEHR
from tests.integration.auth.conftest import aws_refresher, pem, register

pytestmark = pytest.mark.integration

TOKEN_SECRET = "ehrbridge/tenants/acme-health/token"
CREDS_SECRET = "ehrbridge/tenants/acme-health/credentials"


def _yaml(tmp_path: Path, sandbox: SandboxEHR | None = None, *, alg: str = "RS384", name: str = "tenant.yaml",
          **extra: Any) -> Path:
    key_file = tmp_path / f"{alg}.pem"
    key_file.write_text(pem(alg))
    data = {"tenant_id": "acme-health", "vendor": "generic",
            "fhir_base_url": sandbox.fhir_base_url if sandbox else "http://127.0.0.1:9/fhir",
            "client_id": "client-1", "key_id": "k1", "algorithm": alg, "workflows": ["labs"],
            "private_key_file": str(key_file), **extra}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the with-block ends


def _secret_state(name: str) -> str:
    try:
        described = client("secretsmanager").describe_secret(SecretId=name)
    except ClientError as err:
        assert err.response["Error"]["Code"] == "ResourceNotFoundException"
        return "absent"
    return "scheduled for deletion" if described.get("DeletedDate") else "live"


def test_add_after_remove_asks_to_restore_or_replace_and_does_either_deliberately(
        tmp_path: Path, twin: Any, sandbox: SandboxEHR) -> None:
    register(sandbox)
    runner = CliRunner()
    path = _yaml(tmp_path, sandbox)
    assert runner.invoke(app, ["tenants", "add", str(path)]).exit_code == 0
    assert runner.invoke(app, ["tenants", "remove", "acme-health", "--yes"]).exit_code == 0
    assert _secret_state(CREDS_SECRET) == "scheduled for deletion"

    again = runner.invoke(app, ["tenants", "add", str(path)])
    assert again.exit_code == 1, again.output
    assert "Traceback" not in again.output and isinstance(again.exception, SystemExit)
    assert "scheduled for deletion" in again.stderr
    assert "--restore-credentials" in again.stderr and "--replace-credentials" in again.stderr
    assert _secret_state(CREDS_SECRET) == "scheduled for deletion"  # nothing was touched

    restored = runner.invoke(app, ["tenants", "add", str(path), "--restore-credentials", "--json"])
    assert restored.exit_code == 0, restored.output
    assert json.loads(restored.stdout)["credentials_action"] == "restored"
    assert _secret_state(CREDS_SECRET) == "live"
    assert runner.invoke(app, ["tenants", "show", "acme-health"]).exit_code == 0

    assert runner.invoke(app, ["tenants", "remove", "acme-health", "--yes"]).exit_code == 0
    other_key = _yaml(tmp_path, sandbox, alg="ES384", name="es.yaml", key_id="k2")
    replaced = runner.invoke(app, ["tenants", "add", str(other_key), "--replace-credentials", "--json"])
    assert replaced.exit_code == 0, replaced.output
    assert json.loads(replaced.stdout)["credentials_action"] == "replaced"
    secret = json.loads(client("secretsmanager").get_secret_value(SecretId=CREDS_SECRET)["SecretString"])
    assert [k["kid"] for k in secret["keys"]] == ["k2"]  # a new secret: the removed tenant's keys are gone


def test_remove_deletes_the_cached_access_token_now(tmp_path: Path, twin: Any, sandbox: SandboxEHR) -> None:
    register(sandbox)
    runner = CliRunner()
    assert runner.invoke(app, ["tenants", "add", str(_yaml(tmp_path, sandbox))]).exit_code == 0
    from ehrbridge.contracts.tenant_store import DynamoTenantStore

    aws_refresher(twin).refresh(DynamoTenantStore(twin.tables["state"]).get("acme-health"))
    assert _secret_state(TOKEN_SECRET) == "live"
    removed = runner.invoke(app, ["tenants", "remove", "acme-health", "--yes", "--json"])
    assert removed.exit_code == 0, removed.output
    out = json.loads(removed.stdout)
    assert out["token_deleted"] is True and out["token"] == "not_supported"  # the sandbox has no revocation
    assert _secret_state(TOKEN_SECRET) == "absent"  # not merely scheduled: a token must not outlive its tenant
    assert _secret_state(CREDS_SECRET) == "scheduled for deletion"  # credentials stay recoverable


def test_check_keeps_the_servers_error_description(tmp_path: Path, sandbox: SandboxEHR) -> None:
    register(sandbox, kid="k1")
    runner = CliRunner()
    unknown = runner.invoke(app, ["tenants", "check", str(_yaml(tmp_path, sandbox, client_id="nobody"))])
    assert unknown.exit_code == 1
    assert "token: FAILED (invalid_client: unknown client (http://127.0.0.1:" in unknown.stdout
    sandbox.register_client("client-1", jwks={"keys": []})  # registered, but not with our key
    bad_key = runner.invoke(app, ["tenants", "check", str(_yaml(tmp_path, sandbox)), "--json"])
    report = json.loads(bad_key.stdout)
    assert report["ok"] is False and report["error"].startswith("invalid_client: 0 keys match kid")


def test_check_names_the_url_on_network_errors_and_keeps_the_requested_scopes(tmp_path: Path) -> None:
    runner = CliRunner()
    base = f"http://127.0.0.1:{_closed_port()}/fhir"
    discovery = runner.invoke(app, ["tenants", "check", str(_yaml(tmp_path, fhir_base_url=base)), "--json"])
    report = json.loads(discovery.stdout)
    assert discovery.exit_code == 1 and report["token_obtained"] is False
    assert f"{base}/.well-known/smart-configuration" in report["error"] and report["error"].startswith("network")
    assert report["requested_scopes"] == ["system/DiagnosticReport.rs", "system/Observation.rs", "system/Patient.rs"]
    token_url = f"http://127.0.0.1:{_closed_port()}/token"
    token = runner.invoke(app, ["tenants", "check", str(_yaml(tmp_path, fhir_base_url=base, token_url=token_url))])
    assert token.exit_code == 1 and token_url in token.stdout
    assert "requested: system/DiagnosticReport.rs" in token.stdout and "requested: \n" not in token.stdout


def test_check_json_prints_one_object_even_for_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenant_id: Bad Id\nvendor: nope\n")
    for target in (str(bad), "no-such-tenant-and-no-table"):
        result = CliRunner().invoke(app, ["tenants", "check", target, "--json"])
        assert result.exit_code == 1
        out = json.loads(result.stdout)  # exactly one JSON document
        assert out["ok"] is False and out["error"]["message"]
    insecure = _yaml(tmp_path, fhir_base_url="http://ehr.example.org/fhir")
    out = json.loads(CliRunner().invoke(app, ["tenants", "check", str(insecure), "--json"]).stdout)
    assert out["ok"] is False and "https" in out["error"]["message"]


def test_interactive_commands_keep_metric_and_log_lines_off_the_terminal(tmp_path: Path,
                                                                         sandbox: SandboxEHR) -> None:
    register(sandbox)
    path = str(_yaml(tmp_path, sandbox))
    quiet = CliRunner().invoke(app, ["tenants", "check", path])
    assert quiet.exit_code == 0, quiet.output
    assert "_aws" not in quiet.stderr and '"level"' not in quiet.stderr and "_aws" not in quiet.stdout
    loud = CliRunner().invoke(app, ["--verbose", "tenants", "check", path, "--json"])
    assert loud.exit_code == 0
    assert '"_aws"' in loud.stderr  # the EMF lines are still there for those who ask
    json.loads(loud.stdout)  # and stdout stays one JSON object


def test_check_warns_when_the_token_lifetime_is_below_the_refresh_schedule(tmp_path: Path, make_sandbox: Any) -> None:
    short = make_sandbox(token_lifetime_s=30)
    register(short)
    result = CliRunner().invoke(app, ["tenants", "check", str(_yaml(tmp_path, short)), "--json"])
    report = json.loads(result.stdout)
    assert report["token_obtained"] and report["expires_in"] == 30
    assert any("30 s is too short for the 60 s refresh schedule" in w for w in report["warnings"])
    normal = make_sandbox()
    register(normal)
    assert json.loads(CliRunner().invoke(app, ["tenants", "check", str(_yaml(tmp_path, normal)),
                                               "--json"]).stdout)["warnings"] == []
