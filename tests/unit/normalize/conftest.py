from __future__ import annotations

from pathlib import Path

import pytest

from ehrbridge.contracts.tenant import TenantConfig

REPO = Path(__file__).resolve().parents[3]
EVENTS = REPO / "events"


@pytest.fixture()
def tenant() -> TenantConfig:
    return TenantConfig.from_yaml(EVENTS / "tenants" / "demo-health.yaml")


def with_policy(tenant: TenantConfig, **changes: object) -> TenantConfig:
    return TenantConfig.parse_obj({**tenant.model_dump(), **changes})


@pytest.fixture()
def corpus() -> Path:
    from tests.conftest import CORPUS

    return CORPUS
