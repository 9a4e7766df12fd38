"""The scheduled token_refresh handler on the twin, and the demo's token flow."""

from __future__ import annotations

from typing import Any

import pytest

from ehrbridge.auth.credentials import SecretsManagerCredentialStore
from ehrbridge.contracts.tenant_store import DynamoTenantStore
from ehrbridge.local.runner import load_handler
from ehrbridge.sandbox.server import SandboxEHR
from tests.conftest import REPO
from tests.integration.auth.conftest import creds_for, register, tenant_for

pytestmark = pytest.mark.integration


class _Context:
    function_name = "token_refresh"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:token_refresh"
    aws_request_id = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def test_scheduled_handler_refreshes_due_tenants_once(twin: Any, sandbox: SandboxEHR,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EHRBRIDGE_REFRESH_SPREAD_S", "0")
    register(sandbox)
    store = DynamoTenantStore(twin.tables["state"])
    store.put(tenant_for(sandbox))
    store.put(tenant_for(sandbox, "hl7-only", workflows=[], client_id=None, fhir_base_url=None))
    SecretsManagerCredentialStore().put("acme-health", creds_for())
    handler = load_handler(REPO / "functions" / "token_refresh" / "handler.py")
    event = {"source": "aws.scheduler", "detail-type": "Scheduled Event"}
    first = handler(event, _Context())
    assert first == {"refreshed": 1, "fresh": 0, "throttled": 0, "failed": 0, "skipped": 0, "on_demand": 0}
    second = handler(event, _Context())  # a minute later in real life: the token is still fresh
    assert second["fresh"] == 1 and second["refreshed"] == 0
    assert sandbox.token_requests() == 1


def test_handler_counts_failures_without_crashing_the_run(twin: Any, sandbox: SandboxEHR,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EHRBRIDGE_REFRESH_SPREAD_S", "0")
    register(sandbox)
    store = DynamoTenantStore(twin.tables["state"])
    store.put(tenant_for(sandbox))
    store.put(tenant_for(sandbox, "no-creds"))  # onboarded without credentials
    SecretsManagerCredentialStore().put("acme-health", creds_for())
    handler = load_handler(REPO / "functions" / "token_refresh" / "handler.py")
    result = handler({}, _Context())
    assert result["refreshed"] == 1 and result["failed"] == 1
    from ehrbridge.auth.state import DynamoRefreshState

    assert DynamoRefreshState(twin.tables["state"]).status("no-creds").consecutive_failures == 1


def test_demo_token_flow_returns_phi_free_figures(twin: Any) -> None:
    from ehrbridge.sandbox.demo import run_token_flow

    store = DynamoTenantStore(twin.tables["state"])
    from ehrbridge.contracts.tenant import TenantConfig

    original = TenantConfig.from_yaml(REPO / "events" / "tenants" / "demo-health.yaml")
    store.put(original)  # as the pipeline demo does before
    result = run_token_flow(twin.env)
    assert DynamoTenantStore(twin.tables["state"]).get("demo-health") == original  # restored
    assert result["token_obtained"] is True and result["token_lifetime_s"] == 300
    assert result["refresh"]["refreshed"] == 1 and result["token_requests"] == 1
    assert result["requested_scopes"] == ["system/DiagnosticReport.rs", "system/Observation.rs", "system/Patient.rs"]
    assert result["granted_scopes"] == ["system/Observation.rs", "system/Patient.rs"]
    assert result["denied_types"] == ["DiagnosticReport"]
    assert result["probes"] == {"Patient": "ok", "Observation": "ok", "DiagnosticReport": "denied"}
    assert "access_token" not in str(result) and "PRIVATE" not in str(result)


def test_runtime_fhir_client_is_reused_per_tenant_config(twin: Any, sandbox: SandboxEHR) -> None:
    from ehrbridge.auth import runtime

    register(sandbox)
    SecretsManagerCredentialStore().put("acme-health", creds_for())
    runtime.refresher.cache_clear()
    tenant = tenant_for(sandbox)
    first = runtime.fhir_client(tenant)
    assert runtime.fhir_client(tenant_for(sandbox)) is first  # equal config: same pooled client
    assert first.search("Patient", {"_count": "2"})["resourceType"] == "Bundle"
    changed = runtime.fhir_client(tenant_for(sandbox, workflows=["labs", "demographics"]))
    assert changed is not first
    runtime.refresher.cache_clear()
