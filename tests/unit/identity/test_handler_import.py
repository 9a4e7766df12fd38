"""The identity_matcher handler's cold start stays light (subprocess check on sys.modules)."""

from __future__ import annotations

from tests.support import handler_import_modules, heavy_modules

FORBIDDEN = ("fhir.resources", "fhir_core", "pandas", "numpy", "recordlinkage", "typer", "rich", "nicknames", "hl7",
             "aws_xray_sdk")


def test_identity_handler_imports_nothing_heavy() -> None:
    modules = handler_import_modules("identity_matcher")
    assert heavy_modules(modules, FORBIDDEN) == []
    # Not vacuous: the matcher itself is imported.
    assert "ehrbridge.identity.stage" in modules and "rapidfuzz" in modules
