"""The normalizer handler must import fast: forbid heavy modules (checked in a clean subprocess, not timed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
FORBIDDEN = ("fhir", "fhir.resources", "hl7apy", "pandas", "numpy", "recordlinkage", "ucumvert", "pint", "lark",
             "aws_cdk", "moto", "httpx", "authlib", "cryptography", "rapidfuzz", "jellyfish", "rich", "typer")


def test_normalizer_handler_imports_no_heavy_modules() -> None:
    handler = str(REPO / "functions" / "normalizer" / "handler.py")
    code = ("import importlib.util, json, sys\n"
            f"spec = importlib.util.spec_from_file_location('handler', {handler!r})\n"
            "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, check=True)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "ehrbridge.normalize.engine" in loaded  # the stage really is imported ...
    heavy = sorted(m for m in loaded if m in FORBIDDEN or any(m.startswith(f + ".") for f in FORBIDDEN))
    assert heavy == []  # ... without anything heavy
