"""Synthesize the CDK app once per test session in each shape a user meets:

- ``synth``: environment-agnostic, bundling skipped (fast; most structural tests);
- ``synth_deployed``: a concrete account/region with bundling on, exactly as
  ``CDK_DEFAULT_ACCOUNT=... CDK_DEFAULT_REGION=... make synth`` does: the layer is built with pip for
  the Lambda runtime (registry access, ~1-2 min once per session), functions are bundled, cdk-nag runs.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "infra"))

CONCRETE_ACCOUNT = "123456789012"
CONCRETE_REGION = "us-east-1"


@dataclass
class Synth:
    outdir: Path
    template_path: Path
    template: dict

    def resources(self, cfn_type: str) -> dict[str, dict]:
        return {k: v for k, v in self.template["Resources"].items() if v["Type"] == cfn_type}

    def acknowledgements(self) -> dict[tuple[str, str], str]:
        """(construct path, rule) -> reason, from the cloud assembly metadata."""
        acknowledged: dict[tuple[str, str], str] = {}
        for metadata_file in self.outdir.glob("assembly-*/*.metadata.json"):
            for path, entries in json.loads(metadata_file.read_text()).items():
                for entry in entries:
                    if entry["type"] == "aws:cdk:acknowledged-rules":
                        acknowledged.update({(path, rule): reason for rule, reason in entry["data"].items()})
        return acknowledged

    def assets(self) -> dict[str, dict]:
        manifests = list(self.outdir.glob("assembly-*/*.assets.json"))
        return {key: value for m in manifests for key, value in json.loads(m.read_text()).get("files", {}).items()}


def nag_findings(outdir: Path) -> list[str]:
    report = outdir / "validation-report.json"
    if not report.exists():
        return []
    data = json.loads(report.read_text())
    return [f"{v['ruleName']} at {c['constructPath']}" for p in data.get("pluginReports", [])
            for v in p.get("violations", []) for c in v.get("violatingConstructs", [])]


def synthesize(outdir: Path, **kwargs: object) -> Synth:
    from ehrbridge_infra.app import build_app

    app = build_app(outdir, **kwargs)  # type: ignore[arg-type]
    try:
        app.synth()
    except RuntimeError as err:  # cdk-nag / validation findings fail synth
        findings = nag_findings(outdir)
        pytest.fail("synth failed validation:\n" + "\n".join(findings or [str(err)[:2000]]))
    templates = sorted(outdir.glob("assembly-*/*.template.json"))
    assert len(templates) == 1, templates
    return Synth(outdir=outdir, template_path=templates[0], template=json.loads(templates[0].read_text()))


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    # Environment-agnostic even when the shell running the tests has a deploy environment exported.
    saved = {k: os.environ.pop(k) for k in ("CDK_DEFAULT_ACCOUNT", "CDK_DEFAULT_REGION") if k in os.environ}
    try:
        return synthesize(tmp_path_factory.mktemp("cdk") / "cdk.out", skip_bundling=True, stage_name="dev")
    finally:
        os.environ.update(saved)


@pytest.fixture(scope="session")
def synth_deployed(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk-deployed") / "cdk.out", skip_bundling=False, stage_name="dev",
                      account=CONCRETE_ACCOUNT, region=CONCRETE_REGION)
