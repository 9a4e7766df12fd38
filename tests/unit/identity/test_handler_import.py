"""The identity_matcher handler's cold start stays light (subprocess check on sys.modules)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

FORBIDDEN = ("fhir.resources", "fhir_core", "pandas", "numpy", "recordlinkage", "typer", "rich", "nicknames", "hl7")


def test_identity_handler_imports_nothing_heavy() -> None:
    handler = str(REPO / "functions" / "identity_matcher" / "handler.py")
    code = (
        "import importlib.util, json, sys, time\n"
        "t = time.perf_counter()\n"
        f"spec = importlib.util.spec_from_file_location('handler', {handler!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "assert callable(module.lambda_handler)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "POWERTOOLS_TRACE_DISABLED": "1", "AWS_DEFAULT_REGION": "us-east-1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
                         cwd=REPO, check=True)
    modules = json.loads(out.stdout.strip().splitlines()[-1])
    heavy = sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
    assert heavy == []
    # Not vacuous: the matcher itself is imported.
    assert "ehrbridge.identity.stage" in modules and "rapidfuzz" in modules
