"""`ehrbridge poll TENANT.yaml --out DIR` as a user runs it (a subprocess) against the sandbox over HTTP."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ehrbridge.auth.keys import jwks, public_jwk_from_pem
from ehrbridge.sandbox.faults import Faults
from ehrbridge.sandbox.server import SandboxEHR
from tests.conftest import REPO
from tests.integration.poll.conftest import pem

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-c", "from ehrbridge.cli.main import main; main()"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "poll", *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def _ids(path: Path) -> set[tuple[str, str]]:
    return {(r["id"], r["meta"]["versionId"]) for r in map(json.loads, path.read_text().splitlines())}


def test_cli_polls_twice_without_missing_or_refetching(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text(pem())
    faults = Faults(throttle_rate=0.15, throttle_pages_every=4, retry_after_s=0, retry_after_forms=("delta",),
                    error_rate=0.05, truncate_rate=0.05, seed=4)
    with SandboxEHR("generic", patients=12, faults=faults, paging_style="offset") as sandbox:
        sandbox.register_client("cli-client", jwks=jwks([public_jwk_from_pem(pem(), "ES384", "k1")]))
        tenant = tmp_path / "tenant.yaml"
        tenant.write_text(yaml.safe_dump({
            "tenant_id": "cli-health", "vendor": "generic", "fhir_base_url": sandbox.fhir_base_url,
            "client_id": "cli-client", "key_id": "k1", "algorithm": "ES384", "workflows": ["labs"],
            "private_key_file": str(key), "rate_limits": {"requests_per_second": 200}}))
        out = tmp_path / "out"
        first = _run(str(tenant), "--out", str(out), "--resources", "Patient,Observation", "--count", "5",
                     "--json")
        assert first.returncode == 0, first.stderr
        summary = json.loads(first.stdout.strip().splitlines()[-1])
        for field in ("resources", "requests", "retries", "throttled", "denied", "watermark"):
            assert field in summary
        assert summary["resources"]["Patient"] == 12
        assert _ids(out / "Patient.ndjson") == {(rid, v) for _, rid, v in sandbox.current_versions(["Patient"])}
        assert _ids(out / "Observation.ndjson") == {(rid, v) for _, rid, v in
                                                    sandbox.current_versions(["Observation"])}
        assert summary["requests"] >= 2 and summary["throttled"] >= 1
        # Second run from the watermark it printed: nothing new written, nothing missed.
        watermark = summary["watermark"]["Patient"]
        second = _run(str(tenant), "--out", str(out), "--resources", "Patient", "--since", watermark, "--json")
        assert second.returncode == 0, second.stderr
        again = json.loads(second.stdout.strip().splitlines()[-1])
        assert again["new"]["Patient"] == 0
        # Then a change at the server: the saved cursors pick up exactly that.
        changed = sandbox.mutate("Patient", 3, random.Random(2))
        third = _run(str(tenant), "--out", str(out), "--resources", "Patient", "--json")
        assert third.returncode == 0, third.stderr
        assert json.loads(third.stdout.strip().splitlines()[-1])["new"]["Patient"] == 3
        assert {rid for rid, v in _ids(out / "Patient.ndjson") if v == "2"} == set(changed)


def test_cli_rejects_bad_options_without_traceback(tmp_path: Path) -> None:
    bad = _run(str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o"))
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    tenant = tmp_path / "t.yaml"
    tenant.write_text("tenant_id: x1\nvendor: generic\n")
    since = _run(str(tenant), "--out", str(tmp_path / "o"), "--since", "yesterday")
    assert since.returncode != 0 and "Traceback" not in since.stderr and "--since" in since.stderr
