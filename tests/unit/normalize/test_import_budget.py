"""The normalizer handler must import fast: forbid heavy modules (checked in a clean subprocess, not timed)."""

from __future__ import annotations

from tests.support import handler_import_modules, heavy_modules

FORBIDDEN = ("fhir", "fhir.resources", "hl7apy", "pandas", "numpy", "recordlinkage", "ucumvert", "pint", "lark",
             "aws_cdk", "moto", "httpx", "authlib", "cryptography", "rapidfuzz", "jellyfish", "rich", "typer",
             "aws_xray_sdk")


def test_normalizer_handler_imports_no_heavy_modules() -> None:
    loaded = handler_import_modules("normalizer")
    assert "ehrbridge.normalize.engine" in loaded  # the stage really is imported ...
    assert heavy_modules(loaded, FORBIDDEN) == []  # ... without anything heavy
