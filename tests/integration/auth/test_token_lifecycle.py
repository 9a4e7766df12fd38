"""Token lifecycle against the sandbox over real HTTP, with Secrets Manager and DynamoDB on the twin."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import SecretStr

from ehrbridge.auth.credentials import SecretsManagerCredentialStore
from ehrbridge.auth.fhir_client import FhirClient, ResourceDenied, ScopeNotGranted, UnauthorizedError
from ehrbridge.auth.refresher import RefreshThrottled, TokenRefresher
from ehrbridge.auth.state import DynamoRefreshState
from ehrbridge.auth.token_endpoint import TokenClient
from ehrbridge.aws.clients import client
from ehrbridge.sandbox.server import SandboxEHR
from tests.integration.auth.conftest import (
    aws_refresher,
    creds_for,
    fast_token_client,
    memory_refresher,
    register,
    tenant_for,
)

pytestmark = pytest.mark.integration


def _metrics(out: str, name: str) -> int:
    count = 0
    for line in out.splitlines():
        if line.startswith('{"_aws"') and name in json.loads(line):
            count += 1
    return count


def test_token_is_cached_in_secrets_manager_with_expiry_and_granted_scopes(twin: Any, sandbox: SandboxEHR) -> None:
    register(sandbox, grant_types={"Patient", "Observation"})
    SecretsManagerCredentialStore().put("acme-health", creds_for())
    refresher = aws_refresher(twin)
    token = refresher.refresh(tenant_for(sandbox))
    stored = json.loads(client("secretsmanager").get_secret_value(
        SecretId="ehrbridge/tenants/acme-health/token")["SecretString"])
    assert stored["expires_at"] == pytest.approx(stored["issued_at"] + 300)
    assert stored["granted_scope"] == "system/Observation.rs system/Patient.rs"
    assert stored["requested_scopes"] == ["system/DiagnosticReport.rs", "system/Observation.rs", "system/Patient.rs"]
    assert stored["access_token"] == token.access_token.get_secret_value()
    described = client("secretsmanager").describe_secret(SecretId="ehrbridge/tenants/acme-health/token")
    assert described["KmsKeyId"]  # our KMS key, not the AWS-managed default
    status = DynamoRefreshState(twin.tables["state"]).status("acme-health")
    assert status.denied_types == ["DiagnosticReport"] and status.granted_scopes == [
        "system/Observation.rs", "system/Patient.rs"]


def test_token_is_refreshed_before_it_expires(twin: Any, sandbox: SandboxEHR) -> None:
    register(sandbox)
    SecretsManagerCredentialStore().put("acme-health", creds_for())
    tenant = tenant_for(sandbox)
    now = [time.time()]
    refresher = aws_refresher(twin, clock=lambda: now[0], token_client=TokenClient())
    assert refresher.refresh_due([tenant], spread_s=0).refreshed == ["acme-health"]
    first = refresher.tokens.get("acme-health", fresh=True)
    assert first is not None
    assert refresher.refresh_due([tenant], spread_s=0).fresh == ["acme-health"]  # not due yet: no request
    assert sandbox.token_requests() == 1
    now[0] += 190  # 300 s token, 120 s margin (+ up to 15 s jitter): due, yet still valid at the server
    assert refresher.refresh_due([tenant], spread_s=0).refreshed == ["acme-health"]
    second = refresher.tokens.get("acme-health", fresh=True)
    assert second is not None and not second.same_token(first.access_token.get_secret_value())
    assert sandbox.authorize(f"Bearer {first.access_token.get_secret_value()}")[0] is not None  # old still valid
    assert sandbox.token_requests() == 2


def test_a_401_triggers_exactly_one_refresh_and_one_retry(twin: Any, sandbox: SandboxEHR,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    register(sandbox)
    SecretsManagerCredentialStore().put("acme-health", creds_for())
    tenant = tenant_for(sandbox)
    fhir = FhirClient(tenant, aws_refresher(twin))
    fhir.search("Patient", {"_count": "1"})
    assert sandbox.token_requests() == 1
    sandbox.expire_tokens()  # token expiry mid-run
    bundle = fhir.search("Patient", {"_count": "1"})
    assert bundle["resourceType"] == "Bundle"
    statuses = [r.status for r in sandbox.fhir_requests("Patient")]
    assert statuses == [200, 401, 200]  # one 401, one retry
    assert sandbox.token_requests() == 2  # one refresh
    assert _metrics(capsys.readouterr().out, "Unauthorized401") == 1


def test_a_second_401_fails_loudly_without_looping(twin: Any, sandbox: SandboxEHR,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    register(sandbox, tokens_rejected=True)  # e.g. the app was disabled at the site
    SecretsManagerCredentialStore().put("acme-health", creds_for())
    fhir = FhirClient(tenant_for(sandbox), aws_refresher(twin))
    with pytest.raises(UnauthorizedError):
        fhir.search("Observation", {"patient": "sbx-pat-0001"})
    assert [r.status for r in sandbox.fhir_requests()] == [401, 401]
    assert sandbox.token_requests() == 2
    out = capsys.readouterr().out
    assert _metrics(out, "Unauthorized401") == 2 and _metrics(out, "UnauthorizedAfterRefresh") == 1


def test_partial_grant_is_recorded_and_denied_types_are_skipped_not_retried(twin: Any, sandbox: SandboxEHR) -> None:
    register(sandbox, grant_types={"Patient", "Observation"}, policy_denied_types={"Observation"})
    SecretsManagerCredentialStore().put("acme-health", creds_for())
    tenant = tenant_for(sandbox)
    fhir = FhirClient(tenant, aws_refresher(twin))
    fhir.search("Patient", {})
    for _ in range(3):  # not granted: never requested
        with pytest.raises(ScopeNotGranted):
            fhir.search("DiagnosticReport", {"patient": "sbx-pat-0001"})
    assert sandbox.fhir_requests("DiagnosticReport") == []
    with pytest.raises(ResourceDenied):  # granted, but the site answers 403: recorded ...
        fhir.search("Observation", {"patient": "sbx-pat-0001"})
    for _ in range(3):  # ... and skipped from then on, also by a new process
        with pytest.raises(ScopeNotGranted):
            fhir.search("Observation", {"patient": "sbx-pat-0001"})
    with pytest.raises(ScopeNotGranted):
        FhirClient(tenant, aws_refresher(twin)).search("Observation", {"patient": "sbx-pat-0001"})
    assert [r.status for r in sandbox.fhir_requests("Observation")] == [403]
    status = DynamoRefreshState(twin.tables["state"]).status("acme-health")
    assert status.denied_types == ["DiagnosticReport"] and status.server_denied_types == ["Observation"]
    assert sandbox.token_requests() == 1  # a denial never triggers a refresh


def test_token_endpoint_429_backs_off_instead_of_storming(make_sandbox: Callable[..., SandboxEHR]) -> None:
    sandbox = make_sandbox("athena", token_limit_per_min=1)
    register(sandbox)
    tenant = tenant_for(sandbox)
    refresher = memory_refresher(token_client=fast_token_client())
    refresher.token_client.scope_version(tenant)
    deadline = time.monotonic() + 12
    while time.time() % 60 > 50 and time.monotonic() < deadline:  # all requests inside one minute window
        time.sleep(0.1)
    token = refresher.refresh(tenant)
    throttled = 0
    for _ in range(10):  # ten forced refreshes inside the minute: one 429, then local backoff
        try:
            refresher.refresh(tenant, force=True, stale_access_token=token.access_token.get_secret_value())
        except RefreshThrottled as err:
            throttled += 1
            assert err.retry_after is not None and 0 < err.retry_after <= 60
    assert throttled == 10
    assert sandbox.token_requests(status=200) == 1 and sandbox.token_requests(status=429) == 1
    assert refresher.state.status("acme-health").not_before is not None


def test_short_retry_after_is_waited_out_then_succeeds(make_sandbox: Callable[..., SandboxEHR]) -> None:
    sandbox = make_sandbox("athena", token_limit_per_min=1, rate_window_s=1.0)
    register(sandbox)
    tenant = tenant_for(sandbox)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    refresher = memory_refresher(token_client=fast_token_client(sleep=sleep))
    refresher.token_client.scope_version(tenant)  # discovery first, then start early in a 1 s window
    deadline = time.monotonic() + 5
    while time.time() % 1 > 0.3 and time.monotonic() < deadline:
        time.sleep(0.02)
    token = refresher.refresh(tenant)
    again = refresher.refresh(tenant, force=True, stale_access_token=token.access_token.get_secret_value())
    assert not again.same_token(token.access_token.get_secret_value())
    assert sleeps == [1.0]  # Retry-After honoured once
    assert sandbox.token_requests(status=429) == 1 and sandbox.token_requests(status=200) == 2


def test_two_concurrent_refreshes_of_one_tenant_make_one_token_request(twin: Any,
                                                                       make_sandbox: Callable[..., SandboxEHR]) -> None:
    sandbox = make_sandbox(token_delay_s=0.5)  # a slow endpoint widens the race
    register(sandbox)
    SecretsManagerCredentialStore().put("acme-health", creds_for())
    tenant = tenant_for(sandbox)
    # Two "Lambda instances": separate refreshers, separate caches, same AWS state.
    refreshers = [aws_refresher(twin), aws_refresher(twin)]
    for r in refreshers:
        r.token_client.scope_version(tenant)  # discovery outside the race
    barrier = threading.Barrier(2)
    tokens: list[str] = []
    errors: list[BaseException] = []

    def run(r: TokenRefresher) -> None:
        try:
            barrier.wait(timeout=5)
            tokens.append(r.refresh(tenant).access_token.get_secret_value())
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(r,)) for r in refreshers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert sandbox.token_requests() == 1
    assert len(tokens) == 2 and tokens[0] == tokens[1]


def test_refresh_token_flow_rotates_the_stored_refresh_token(twin: Any,
                                                             make_sandbox: Callable[..., SandboxEHR]) -> None:
    sandbox = make_sandbox("epic")
    register(sandbox, refresh_token="rt-initial")
    store = SecretsManagerCredentialStore()
    store.put("acme-health", creds_for(refresh_token=SecretStr("rt-initial")))
    refresher = aws_refresher(twin)
    tenant = tenant_for(sandbox)
    first = refresher.refresh(tenant)
    rotated = store.get("acme-health").refresh_token
    assert rotated is not None and rotated.get_secret_value() != "rt-initial"
    refresher.refresh(tenant, force=True, stale_access_token=first.access_token.get_secret_value())
    assert store.get("acme-health").refresh_token.get_secret_value() != rotated.get_secret_value()  # type: ignore[union-attr]
    assert sandbox.token_requests(status=200) == 2


def test_oracle_system_account_uses_client_secret_basic(make_sandbox: Callable[..., SandboxEHR]) -> None:
    from ehrbridge.auth.credentials import TenantCredentials

    sandbox = make_sandbox("oracle_health")
    sandbox.register_client("client-1", client_secret="s3cr3t-value")
    refresher = memory_refresher(creds=TenantCredentials(client_secret=SecretStr("s3cr3t-value")))
    token = refresher.refresh(tenant_for(sandbox))
    assert token.expires_in == 570 and token.granted_scope.startswith("system/")
    assert token.granted().allows("Observation")  # v1 ".read" counts as ".rs"


@pytest.mark.parametrize("vendor", ["generic", "epic", "oracle_health", "athena"])
def test_vendor_profiles_page_and_require_their_params(make_sandbox: Callable[..., SandboxEHR], vendor: str) -> None:
    sandbox = make_sandbox(vendor, patients=12)
    register(sandbox)
    tenant = tenant_for(sandbox)
    fhir = FhirClient(tenant, memory_refresher())
    pages = list(fhir.pages("Patient", {"_count": "5"}))
    ids = [e["resource"]["id"] for p in pages for e in p["entry"]]
    assert len(pages) == 3 and len(ids) == len(set(ids)) == 12
    observation_params = {"_count": "50"}
    if "patient" in sandbox.profile.required_search_params.get("Observation", ()):
        from ehrbridge.auth.fhir_client import FhirCallError

        with pytest.raises(FhirCallError) as err:
            fhir.search("Observation", observation_params)
        assert err.value.status == 400
        observation_params["patient"] = ids[0]
    assert fhir.search("Observation", observation_params)["resourceType"] == "Bundle"


def test_athena_calls_carry_the_practice_context(make_sandbox: Callable[..., SandboxEHR]) -> None:
    sandbox = make_sandbox("athena")
    register(sandbox)
    import httpx

    token = memory_refresher().refresh(tenant_for(sandbox)).access_token.get_secret_value()
    bare = httpx.get(f"{sandbox.fhir_base_url}/Patient", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert bare.status_code == 400 and "ah-practice" in bare.text
    fhir = FhirClient(tenant_for(sandbox), memory_refresher())
    assert fhir.search("Patient", {})["total"] == 20
