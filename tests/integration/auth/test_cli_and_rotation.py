"""`ehrbridge tenants|keys` against the sandbox (HTTP on 127.0.0.1) and the moto twin; key rotation
through a published JWKS URL; and no secret or token in any log line or environment variable."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from ehrbridge.aws.clients import client
from ehrbridge.cli.main import app
from ehrbridge.sandbox.server import SandboxEHR
from tests.integration.auth.conftest import pem, register

pytestmark = pytest.mark.integration


def _yaml(tmp_path: Path, sandbox: SandboxEHR, alg: str = "RS384", **extra: Any) -> Path:
    key_file = tmp_path / f"{alg}.pem"
    key_file.write_text(pem(alg))
    data = {"tenant_id": "acme-health", "vendor": sandbox.profile.vendor, "fhir_base_url": sandbox.fhir_base_url,
            "client_id": "client-1", "key_id": "k1", "algorithm": alg, "workflows": ["labs", "demographics"],
            "private_key_file": str(key_file), **extra}
    path = tmp_path / "tenant.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_tenants_check_prints_denied_resource_types(tmp_path: Path, sandbox: SandboxEHR) -> None:
    register(sandbox, grant_types={"Patient", "Observation"})
    result = CliRunner().invoke(app, ["tenants", "check", str(_yaml(tmp_path, sandbox))])
    assert result.exit_code == 2, result.output  # degraded
    assert "requested: system/DiagnosticReport.rs system/Observation.rs system/Patient.rs" in result.output
    assert "granted:   system/Observation.rs system/Patient.rs" in result.output
    assert "denied resource types: DiagnosticReport" in result.output
    assert "result: DEGRADED" in result.output


def test_tenants_check_json_reports_ok_denied_and_unsupported(tmp_path: Path,
                                                              make_sandbox: Callable[..., SandboxEHR]) -> None:
    sandbox = make_sandbox(unsupported_types={"DiagnosticReport"})
    register(sandbox, policy_denied_types={"Observation"})
    result = CliRunner().invoke(app, ["tenants", "check", str(_yaml(tmp_path, sandbox)), "--json"])
    assert result.exit_code == 2, result.output
    report = json.loads(result.stdout)
    assert {p["resource_type"]: p["status"] for p in report["probes"]} == {
        "Patient": "ok", "Observation": "denied", "DiagnosticReport": "unsupported"}
    assert report["denied_types"] == ["Observation"] and report["unsupported_types"] == ["DiagnosticReport"]


def test_tenants_check_passes_with_a_full_grant_and_fails_clearly_without_a_token(
        tmp_path: Path, sandbox: SandboxEHR) -> None:
    register(sandbox)
    ok = CliRunner().invoke(app, ["tenants", "check", str(_yaml(tmp_path, sandbox))])
    assert ok.exit_code == 0 and "result: ok" in ok.output
    bad = CliRunner().invoke(app, ["tenants", "check", str(_yaml(tmp_path, sandbox, client_id="not-registered"))])
    assert bad.exit_code == 1 and "token: FAILED (invalid_client: unknown client (" in bad.output


def test_tenants_add_list_show_remove_on_the_twin(tmp_path: Path, twin: Any, sandbox: SandboxEHR) -> None:
    register(sandbox, grant_types={"Patient"})
    runner = CliRunner()
    added = runner.invoke(app, ["tenants", "add", str(_yaml(tmp_path, sandbox)), "--json"])
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["credentials_secret"] == "ehrbridge/tenants/acme-health/credentials"
    secret = json.loads(client("secretsmanager").get_secret_value(
        SecretId="ehrbridge/tenants/acme-health/credentials")["SecretString"])
    assert secret["keys"][0]["kid"] == "k1" and "PRIVATE KEY" in secret["keys"][0]["private_key_pem"]
    listed = runner.invoke(app, ["tenants", "list"])
    assert "acme-health" in listed.output and "labs,demographics" in listed.output
    check = runner.invoke(app, ["tenants", "check", "acme-health"])  # by id: credentials from Secrets Manager
    assert check.exit_code == 2 and "denied resource types: DiagnosticReport, Observation" in check.output
    shown = runner.invoke(app, ["tenants", "show", "acme-health", "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert "private_key_file" not in data["config"] and data["credentials"]["keys"][0]["kid"] == "k1"
    assert "PRIVATE" not in shown.output
    removed = runner.invoke(app, ["tenants", "remove", "acme-health", "--yes"])
    assert removed.exit_code == 0 and "removed" in removed.output
    assert runner.invoke(app, ["tenants", "show", "acme-health"]).exit_code == 1


def test_cli_errors_are_one_line_not_a_trace(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenant_id: Bad Id\nvendor: nope\n")
    result = CliRunner().invoke(app, ["tenants", "check", str(bad)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "tenant_id" in result.output and "vendor" in result.output


def test_keys_generate_writes_a_private_pem_and_prints_only_the_public_jwks(tmp_path: Path) -> None:
    out = tmp_path / "new.pem"
    result = CliRunner().invoke(app, ["keys", "generate", "--alg", "ES384", "--out", str(out), "--kid", "n1"])
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o600 and "PRIVATE KEY" in out.read_text()
    printed = json.loads(result.stdout)
    assert printed["keys"][0]["kid"] == "n1" and "d" not in printed["keys"][0]
    again = CliRunner().invoke(app, ["keys", "generate", "--alg", "ES384", "--out", str(out)])
    assert again.exit_code == 1 and "exists" in again.output


def test_key_rotation_through_a_published_jwks_url(tmp_path: Path, twin: Any,
                                                   make_sandbox: Callable[..., SandboxEHR]) -> None:
    """Epic takes EC keys only from a JWKS URL: publish to S3 (moto), let the sandbox fetch it."""
    from ehrbridge.auth.credentials import SecretsManagerCredentialStore
    from ehrbridge.auth.refresher import TokenRefresher
    from ehrbridge.auth.state import InMemoryRefreshState
    from ehrbridge.auth.tokens import InMemoryTokenStore
    from ehrbridge.contracts.tenant import TenantConfig
    from ehrbridge.contracts.tenant_store import DynamoTenantStore
    from ehrbridge.tenants.keys import S3JwksPublisher, jwks_document, jwks_key
    from ehrbridge.tenants.onboarding import onboard

    bucket = "ehrbridge-jwks-test"
    client("s3").create_bucket(Bucket=bucket)
    sandbox = make_sandbox("epic")
    # Deployed, CloudFront serves the object; moto wants a signed GET, which a presigned URL gives.
    jwks_url = client("s3").generate_presigned_url("get_object", ExpiresIn=3600, Params={
        "Bucket": bucket, "Key": jwks_key("acme-health")})
    sandbox.register_client("client-1", jwks_url=jwks_url)
    config = TenantConfig.from_yaml(_yaml(tmp_path, sandbox, alg="ES384"))
    tenants = DynamoTenantStore(twin.tables["state"])
    creds = SecretsManagerCredentialStore()
    onboard(config, tenants=tenants, credentials=creds)
    S3JwksPublisher(bucket).publish("acme-health", jwks_document(creds.get("acme-health")))
    obj = client("s3").get_object(Bucket=bucket, Key=jwks_key("acme-health"))
    assert obj["CacheControl"] == "public, max-age=300" and obj["ContentType"] == "application/json"

    def token_kid() -> str:
        refresher = TokenRefresher(credentials=creds, tokens=InMemoryTokenStore(), state=InMemoryRefreshState())
        refresher.refresh(tenants.get("acme-health"))
        return sandbox.assertions[-1].kid

    assert token_kid() == "k1"
    runner = CliRunner()
    env = {"EHRBRIDGE_JWKS_BUCKET": bucket}
    added = runner.invoke(app, ["keys", "rotate", "acme-health"], env=env)
    assert added.exit_code == 0, added.output
    new_kid = json.loads(added.stdout)["published_kids"][1]
    assert token_kid() == "k1"  # step 1: published, old key still signs
    cut = runner.invoke(app, ["keys", "rotate", "acme-health", "--cutover"], env=env)
    assert cut.exit_code == 0, cut.output
    assert token_kid() == new_kid  # step 2: new key signs; the old stays in the JWKS
    published = json.loads(client("s3").get_object(Bucket=bucket, Key=jwks_key("acme-health"))["Body"].read())
    assert {k["kid"] for k in published["keys"]} == {"k1", new_kid}
    assert runner.invoke(app, ["keys", "rotate", "acme-health", "--retire"], env=env).exit_code == 0
    published = json.loads(client("s3").get_object(Bucket=bucket, Key=jwks_key("acme-health"))["Body"].read())
    assert [k["kid"] for k in published["keys"]] == [new_kid]
    assert token_kid() == new_kid
    assert DynamoTenantStore(twin.tables["state"]).get("acme-health").key_id == new_kid  # fresh: no cache


def test_no_secret_or_token_in_any_log_line_or_environment_variable(
        tmp_path: Path, twin: Any, sandbox: SandboxEHR, capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    from pydantic import SecretStr

    from ehrbridge.auth.credentials import SecretsManagerCredentialStore
    from ehrbridge.auth.fhir_client import FhirClient, ScopeNotGranted
    from tests.integration.auth.conftest import aws_refresher, tenant_for

    caplog.set_level("DEBUG")
    register(sandbox, grant_types={"Patient", "Observation"}, refresh_token="rt-canary-0001")
    os.environ["CANARY_SECRET"] = "client-secret-canary-0001"
    try:
        runner = CliRunner()
        path = _yaml(tmp_path, sandbox)
        added = runner.invoke(app, ["tenants", "add", str(path), "--client-secret-env", "CANARY_SECRET"])
        assert added.exit_code == 0, added.output
    finally:
        os.environ.pop("CANARY_SECRET")
    store = SecretsManagerCredentialStore()
    creds = store.get("acme-health")
    store.put("acme-health", creds.model_copy(update={"refresh_token": SecretStr("rt-canary-0001")}))
    tenant = tenant_for(sandbox, workflows=["labs", "demographics"])
    refresher = aws_refresher(twin)
    fhir = FhirClient(tenant, refresher)
    fhir.search("Patient", {})
    sandbox.expire_tokens()
    fhir.search("Observation", {"patient": "sbx-pat-0002"})  # 401 -> refresh -> retry
    with pytest.raises(ScopeNotGranted):
        fhir.search("DiagnosticReport", {"patient": "sbx-pat-0002"})
    outputs = [added.output, runner.invoke(app, ["tenants", "show", "acme-health"]).output,
               runner.invoke(app, ["tenants", "check", "acme-health", "--json"]).output]
    captured = capfd.readouterr()
    text = "\n".join([captured.out, captured.err, caplog.text, *outputs])
    assert "token refreshed" in text and "Unauthorized401" in text  # the logs we checked are really there

    secrets = [*sandbox.tokens, "client-secret-canary-0001", "rt-canary-0001",
               store.get("acme-health").refresh_token.get_secret_value()]  # type: ignore[union-attr]
    secrets += [line for line in pem("RS384").splitlines() if "-----" not in line][:5]
    assert len(sandbox.tokens) >= 3
    for secret in secrets:
        assert secret not in text
        assert not any(secret in value for value in os.environ.values())
    assert "eyJ" not in text  # no JWT (client assertion) either
