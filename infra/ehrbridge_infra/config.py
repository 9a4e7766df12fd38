"""Per-environment deploy settings: ``infra/stages/<stage>.yaml`` (validated here, never secrets).

Tenant configuration is an input of the stage: ``tenants_dir`` names the directory of tenant YAML
files (the same files ``ehrbridge tenants add`` takes). The stack uses only their ``tenant_id`` (the
tenant dashboard's choices); the tenants themselves are data in the state table and Secrets Manager,
added after the deploy, so onboarding a tenant never needs a deploy.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ehrbridge_infra.constants import REPO_ROOT

STAGES_DIR = REPO_ROOT / "infra" / "stages"


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,15}$")
    account: str | None = Field(default=None, pattern=r"^\d{12}$")
    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    # Two AZs for the VPC; default "<region>a", "<region>b" (no account lookup at synth).
    availability_zones: tuple[str, ...] = ()
    alarm_emails: tuple[str, ...] = ()
    tenants_dir: str | None = None  # relative to the repository root
    mllp_allowed_cidrs: tuple[str, ...] = ()
    mllp_internet_facing: bool = False
    bridge_image: str | None = None  # a pre-built image URI instead of building bridge/Dockerfile
    bridge_desired_count: int = Field(default=2, ge=1, le=50)
    # Per-patient crawl rosters: entries with no ADT/Patient/record activity for this long expire. One value
    # for the normalizer (writes them from ADT) and the poller (reads and refreshes them).
    roster_expiry_days: int = Field(default=90, ge=1, le=3650)
    # A resource type a server answered 403 for is asked again after this long (and when the grant changes).
    poll_reprobe_denied_s: int = Field(default=86_400, ge=300, le=30 * 86_400)

    @field_validator("mllp_allowed_cidrs")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            network = ipaddress.ip_network(cidr, strict=True)
            if network.prefixlen == 0:
                raise ValueError("mllp_allowed_cidrs must name sender networks, not the whole internet")
        return value

    @field_validator("availability_zones")
    @classmethod
    def _zones(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if value and len(value) < 2:
            raise ValueError("availability_zones: name at least two (the NLB and the functions span them)")
        return value

    @field_validator("alarm_emails")
    @classmethod
    def _emails(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [v for v in value if "@" not in v or " " in v]
        if bad:
            raise ValueError(f"not e-mail addresses: {bad}")
        return value

    def tenant_ids(self) -> list[str]:
        """Tenant ids from the stage's tenant YAML files (sorted; empty without ``tenants_dir``)."""
        if not self.tenants_dir:
            return []
        directory = REPO_ROOT / self.tenants_dir
        if not directory.is_dir():
            raise ValueError(f"tenants_dir {self.tenants_dir!r} is not a directory")
        ids = []
        for path in sorted(directory.glob("*.y*ml")):
            document = yaml.safe_load(path.read_text()) or {}
            if not isinstance(document, dict) or not document.get("tenant_id"):
                raise ValueError(f"{path.name}: no tenant_id")
            ids.append(str(document["tenant_id"]))
        return sorted(set(ids))

    def context(self) -> dict[str, str]:
        """The CDK context keys the constructs read (see constructs/mllp_bridge.py)."""
        context = {"ehrbridge:mllpInternetFacing": str(self.mllp_internet_facing).lower()}
        if self.mllp_allowed_cidrs:
            context["ehrbridge:mllpAllowedCidrs"] = ",".join(self.mllp_allowed_cidrs)
        if self.bridge_image:
            context["ehrbridge:bridgeImage"] = self.bridge_image
        return context


def load_stage(name: str, directory: Path = STAGES_DIR) -> StageConfig:
    """``<directory>/<name>.yaml``; a stage without a file gets the defaults (env-agnostic, no tenants)."""
    path = directory / f"{name}.yaml"
    if not path.exists():
        return StageConfig(name=name)
    document = yaml.safe_load(path.read_text()) or {}
    return StageConfig(name=name, **document)
