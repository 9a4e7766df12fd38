from __future__ import annotations

from pathlib import Path

import pytest

from ehrbridge.contracts.envelope import ContractError
from ehrbridge.contracts.tenant import TenantConfig, credentials_secret_name, token_secret_name
from ehrbridge.contracts.tenant_store import InMemoryTenantStore, TenantNotFound
from ehrbridge.contracts.vendors import VENDOR_PROFILES, profile_for
from tests.conftest import REPO


def test_demo_tenant_loads() -> None:
    config = TenantConfig.from_yaml(REPO / "events" / "tenants" / "demo-health.yaml")
    assert config.tenant_id == "demo-health" and config.profile.vendor == "generic"
    assert config.credentials_secret == "ehrbridge/tenants/demo-health/credentials"


def test_vendor_profiles_are_one_table_covering_every_vendor() -> None:
    assert set(VENDOR_PROFILES) == {"epic", "oracle_health", "athena", "generic"}
    assert profile_for("oracle_health").token_lifetime_s == 570
    assert profile_for("athena").token_endpoint_limit_per_min == 50
    assert profile_for("epic").token_lifetime_s == 3600
    assert 500 in profile_for("oracle_health").retryable_statuses


def test_secret_names() -> None:
    assert credentials_secret_name("t1x") == "ehrbridge/tenants/t1x/credentials"
    assert token_secret_name("t1x") == "ehrbridge/tenants/t1x/token"


@pytest.mark.parametrize(("patch", "field"), [
    ({"vendor": "meditech"}, "vendor"),
    ({"tenant_id": "Bad Tenant!"}, "tenant_id"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"algorithm": "HS256"}, "algorithm"),
    ({"workflows": ["labs"]}, "workflows need fhir_base_url"),
    ({"surprise": 1}, "surprise"),
])
def test_invalid_config_names_the_field(patch: dict, field: str) -> None:
    base = {"tenant_id": "acme-health", "vendor": "epic"}
    with pytest.raises(ContractError) as info:
        TenantConfig.parse_obj({**base, **patch})
    assert field in str(info.value)


def test_yaml_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenant_id: [unclosed\n")
    with pytest.raises(ContractError, match="not valid YAML at line"):
        TenantConfig.from_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ContractError, match="mapping"):
        TenantConfig.from_yaml(listy)


def test_private_key_path_is_resolved_relative_to_the_yaml(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("tenant_id: acme-health\nvendor: epic\nprivate_key_file: keys/k.pem\n")
    config = TenantConfig.from_yaml(tmp_path / "t.yaml")
    assert config.private_key_file == (tmp_path / "keys" / "k.pem").resolve()


def test_in_memory_store() -> None:
    store = InMemoryTenantStore()
    config = TenantConfig.parse_obj({"tenant_id": "acme-health", "vendor": "athena"})
    store.put(config)
    assert store.get("acme-health") == config and store.list() == [config]
    store.delete("acme-health")
    with pytest.raises(TenantNotFound):
        store.get("acme-health")
