"""The token_refresh Lambda's cold start stays light: no FHIR models, no authlib (subprocess check)."""

from __future__ import annotations

from tests.support import handler_import_modules, heavy_modules

FORBIDDEN = ("fhir.resources", "fhir_core", "authlib", "hl7", "recordlinkage", "pandas", "rapidfuzz", "typer",
             "aws_xray_sdk")


def test_token_refresh_handler_imports_nothing_heavy() -> None:
    modules = handler_import_modules("token_refresh")
    assert heavy_modules(modules, FORBIDDEN) == []
    # The check itself is not vacuous (joserfc now loads when the first assertion is signed, not at import).
    assert "ehrbridge.auth.refresher" in modules and "httpx" in modules
