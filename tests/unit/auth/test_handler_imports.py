"""The token_refresh Lambda's cold start stays light: no FHIR models, no authlib (subprocess check)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

FORBIDDEN = ("fhir.resources", "fhir_core", "authlib", "hl7", "recordlinkage", "pandas", "rapidfuzz", "typer")


def test_token_refresh_handler_imports_nothing_heavy() -> None:
    handler = str(REPO / "functions" / "token_refresh" / "handler.py")
    code = (
        "import importlib.util, json, sys\n"
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
    assert "ehrbridge.auth.refresher" in modules and "joserfc" in modules  # the check itself is not vacuous
