"""The sandbox EHR's own behaviour (real expiry, 403/404, paging styles, discovery, synthetic data)
and the DynamoDB refresh state (lease, budget) on the twin."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ehrbridge.auth.fhir_client import FhirClient
from ehrbridge.sandbox.data import MRN_SYSTEM, generate
from ehrbridge.sandbox.server import SandboxEHR
from tests.integration.auth.conftest import memory_refresher, register, tenant_for

pytestmark = pytest.mark.integration


def _token(sandbox: SandboxEHR, **tenant: Any) -> str:
    return memory_refresher().refresh(tenant_for(sandbox, **tenant)).access_token.get_secret_value()


def test_tokens_expire_for_real_after_their_lifetime(make_sandbox: Callable[..., SandboxEHR]) -> None:
    sandbox = make_sandbox(token_lifetime_s=1)
    register(sandbox)
    token = _token(sandbox)
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{sandbox.fhir_base_url}/Patient", headers=headers, timeout=10).status_code == 200
    time.sleep(1.2)
    expired = httpx.get(f"{sandbox.fhir_base_url}/Patient", headers=headers, timeout=10)
    assert expired.status_code == 401 and 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
    assert httpx.get(f"{sandbox.fhir_base_url}/Patient", timeout=10).status_code == 401  # no token at all


def test_ungranted_types_answer_403_and_unsupported_404(make_sandbox: Callable[..., SandboxEHR]) -> None:
    sandbox = make_sandbox(unsupported_types={"Encounter"})
    register(sandbox, grant_types={"Patient"})
    headers = {"Authorization": f"Bearer {_token(sandbox, workflows=['labs', 'encounters'])}"}
    forbidden = httpx.get(f"{sandbox.fhir_base_url}/Observation", headers=headers, timeout=10)
    assert forbidden.status_code == 403 and forbidden.json()["issue"][0]["code"] == "forbidden"
    assert httpx.get(f"{sandbox.fhir_base_url}/Encounter", headers=headers, timeout=10).status_code == 404
    read = httpx.get(f"{sandbox.fhir_base_url}/Patient/sbx-pat-0003", headers=headers, timeout=10)
    assert read.status_code == 200 and read.json()["id"] == "sbx-pat-0003"


@pytest.mark.parametrize("style", ["next_link", "offset", "page_token"])
def test_every_paging_style_returns_each_resource_once(make_sandbox: Callable[..., SandboxEHR], style: str) -> None:
    sandbox = make_sandbox(patients=7)
    sandbox.profile = sandbox.profile.model_copy(update={"paging_style": style})
    register(sandbox)
    fhir = FhirClient(tenant_for(sandbox), memory_refresher())
    pages = list(fhir.pages("Observation", {"_count": "4"}))
    ids = [e["resource"]["id"] for p in pages for e in p["entry"]]
    assert len(ids) == len(set(ids)) == len(sandbox.resources["Observation"])
    assert len(pages) == -(-len(ids) // 4)


def test_last_updated_filter_and_vendor_without_it(make_sandbox: Callable[..., SandboxEHR]) -> None:
    sandbox = make_sandbox()
    register(sandbox)
    fhir = FhirClient(tenant_for(sandbox), memory_refresher())
    stamps = sorted(p["meta"]["lastUpdated"] for p in sandbox.resources["Patient"])
    newer = fhir.search("Patient", {"_lastUpdated": f"gt{stamps[9]}"})
    assert newer["total"] == 10
    epic = make_sandbox("epic")
    register(epic)
    bundle = FhirClient(tenant_for(epic), memory_refresher()).search(
        "Observation", {"patient": "sbx-pat-0001", "_lastUpdated": "gt2000-01-01"})
    outcomes = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert outcomes and "not supported" in outcomes[0]["resource"]["issue"][0]["diagnostics"]


@pytest.mark.parametrize("vendor", ["generic", "epic", "oracle_health", "athena"])
def test_discovery_and_metadata_follow_the_vendor_profile(make_sandbox: Callable[..., SandboxEHR],
                                                          vendor: str) -> None:
    sandbox = make_sandbox(vendor)
    config = httpx.get(f"{sandbox.fhir_base_url}/.well-known/smart-configuration", timeout=10).json()
    assert config["token_endpoint"] == sandbox.token_url
    assert set(config["token_endpoint_auth_signing_alg_values_supported"]) >= {"RS384", "ES384"}
    assert f"permission-v{sandbox.profile.default_scope_version}" in config["capabilities"]
    metadata = httpx.get(f"{sandbox.fhir_base_url}/metadata", timeout=10).json()
    assert metadata["software"]["name"] == sandbox.profile.software_name and metadata["fhirVersion"] == "4.0.1"


def test_synthetic_data_is_deterministic_realistic_and_sandbox_only() -> None:
    first, again = generate(15, seed=3), generate(15, seed=3)
    assert [p["name"] for p in first["Patient"]] == [p["name"] for p in again["Patient"]]
    for patient in first["Patient"]:
        assert patient["identifier"][0]["system"] == MRN_SYSTEM and patient["identifier"][0]["value"].startswith("SBX")
        assert patient["address"][0]["city"] == "Sandboxville"
    codes = {o["code"]["coding"][0]["code"] for o in first["Observation"]}
    assert codes <= {"2345-7", "718-7", "2160-0", "2823-3", "2951-2", "4548-4", "8867-4", "8480-6", "8462-4",
                     "8310-5"} and len(codes) > 3
    assert all(o["valueQuantity"]["system"] == "http://unitsofmeasure.org" for o in first["Observation"])
    refs = {o["subject"]["reference"] for o in first["Observation"]}
    assert refs <= {f"Patient/{p['id']}" for p in first["Patient"]}


def test_sandbox_binds_to_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        SandboxEHR(host="0.0.0.0")


def test_dynamo_refresh_lock_lease_and_budget(twin: Any) -> None:
    from ehrbridge.auth.state import DynamoRefreshState

    now = [1_800_000_000.0]
    state = DynamoRefreshState(twin.tables["state"], clock=lambda: now[0])
    assert state.acquire("t1", "a", 30)
    assert not state.acquire("t1", "b", 30)  # held
    state.release("t1", "b")  # not b's to release
    assert not state.acquire("t1", "b", 30)
    now[0] += 31
    assert state.acquire("t1", "b", 30)  # a crashed: its lease ran out
    state.release("t1", "a")  # a's late release leaves b's lease alone
    assert not state.acquire("t1", "c", 30)
    state.release("t1", "b")
    assert state.acquire("t1", "c", 30)
    assert state.acquire("t2", "a", 30)  # other tenants are independent

    now[0] = 1_800_000_000.0 - 1_800_000_000.0 % 60
    assert [state.reserve_token_request("t1", 3) for _ in range(5)] == [True, True, True, False, False]
    now[0] += 60
    assert state.reserve_token_request("t1", 3)

    assert state.record_failure("t1", "invalid_client") == 1
    assert state.record_failure("t1", "throttled", not_before=now[0] + 30) == 2
    status = state.status("t1")
    assert status.not_before == pytest.approx(now[0] + 30) and status.last_failure_reason == "throttled"
    state.mark_server_denied("t1", "Observation")
    state.record_success("t1", requested=["system/Patient.rs"], granted=["system/Patient.rs"], denied=[])
    status = state.status("t1")
    assert status.consecutive_failures == 0 and status.not_before is None
    assert status.server_denied_types == ["Observation"]
