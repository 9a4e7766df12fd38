"""The polling handlers stay thin and import nothing heavy (cold start is set by imports, not timed here)."""

from __future__ import annotations

import pytest

from tests.conftest import REPO
from tests.support import handler_import_modules, heavy_modules

FORBIDDEN = ("fhir.resources", "fhir_core", "authlib", "hl7", "recordlinkage", "pandas", "rapidfuzz", "typer",
             "aws_xray_sdk", "moto", "ehrbridge.normalize", "ehrbridge.identity", "ehrbridge.sandbox",
             # httpx's own CLI (ehrbridge.lean_imports keeps it out: ~70 ms of CPU per cold start)
             "click", "rich", "pygments",
             # signing (joserfc, cryptography) loads only when a token is requested; YAML only in the CLI
             "joserfc", "cryptography", "yaml")


@pytest.mark.parametrize("function", ["poll_dispatcher", "fhir_poller"])
def test_handler_is_thin_and_light(function: str) -> None:
    source = (REPO / "functions" / function / "handler.py").read_text()
    assert len(source.splitlines()) <= 60
    modules = handler_import_modules(function)
    assert heavy_modules(modules, FORBIDDEN) == []
    assert "ehrbridge.poll.runtime" in modules and "httpx" in modules  # the check is not vacuous
