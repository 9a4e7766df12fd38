"""Synthesize the CDK app once per test worker (offline, bundling skipped) with cdk-nag on."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "infra"))


@dataclass
class Synth:
    outdir: Path
    template_path: Path
    template: dict

    def resources(self, cfn_type: str) -> dict[str, dict]:
        return {k: v for k, v in self.template["Resources"].items() if v["Type"] == cfn_type}


def nag_findings(outdir: Path) -> list[str]:
    report = outdir / "validation-report.json"
    if not report.exists():
        return []
    data = json.loads(report.read_text())
    return [f"{v['ruleName']} at {c['constructPath']}" for p in data.get("pluginReports", [])
            for v in p.get("violations", []) for c in v.get("violatingConstructs", [])]


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    from ehrbridge_infra.app import build_app

    outdir = tmp_path_factory.mktemp("cdk") / "cdk.out"
    app = build_app(outdir, skip_bundling=True)
    try:
        app.synth()
    except RuntimeError as err:  # cdk-nag / validation findings fail synth
        findings = nag_findings(outdir)
        pytest.fail("synth failed validation:\n" + "\n".join(findings or [str(err)[:2000]]))
    templates = sorted(outdir.glob("assembly-*/*.template.json"))
    assert len(templates) == 1, templates
    return Synth(outdir=outdir, template_path=templates[0], template=json.loads(templates[0].read_text()))
