"""Stage settings (infra/stages/<stage>.yaml): validated, never secrets, tenant config as input."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ehrbridge_infra.config import STAGES_DIR, StageConfig, load_stage

pytestmark = [pytest.mark.infra]


def test_shipped_stages_load() -> None:
    dev, prod = load_stage("dev"), load_stage("prod")
    assert dev.name == "dev" and "demo-health" in dev.tenant_ids()
    assert prod.name == "prod" and prod.tenant_ids() == [] and not prod.mllp_internet_facing
    assert {p.stem for p in STAGES_DIR.glob("*.yaml")} >= {"dev", "prod"}


def test_a_stage_without_a_file_gets_safe_defaults(tmp_path: Path) -> None:
    config = load_stage("qa", tmp_path)
    assert config.account is None and config.alarm_emails == () and config.context() == {
        "ehrbridge:mllpInternetFacing": "false"}


@pytest.mark.parametrize("document", [
    {"mllp_allowed_cidrs": ["0.0.0.0/0"]},       # the whole internet
    {"mllp_allowed_cidrs": ["10.0.0.1/24"]},     # host bits set: a typo, not a network
    {"alarm_emails": ["not-an-address"]},
    {"account": "12345"},
    {"availability_zones": ["us-east-1a"]},      # one AZ
    {"client_secret": "x"},                      # unknown keys (and secrets) are refused
    {"roster_expiry_days": 0},                   # every roster entry would expire on write
    {"poll_reprobe_denied_s": 10},               # a denied type hammered every dispatcher run
])
def test_bad_stage_settings_are_refused(tmp_path: Path, document: dict) -> None:
    import yaml

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(document))
    with pytest.raises(ValidationError):
        load_stage("bad", tmp_path)


def test_context_carries_bridge_settings() -> None:
    config = StageConfig(name="x", mllp_allowed_cidrs=("10.20.0.0/24", "10.30.0.0/24"), mllp_internet_facing=True,
                         bridge_image="123456789012.dkr.ecr.us-east-1.amazonaws.com/bridge:abc123")
    assert config.context() == {"ehrbridge:mllpInternetFacing": "true",
                                "ehrbridge:mllpAllowedCidrs": "10.20.0.0/24,10.30.0.0/24",
                                "ehrbridge:bridgeImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/bridge:abc123"}
