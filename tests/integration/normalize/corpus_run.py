"""Run every corpus message through normalize_hl7 (helper for tests and the agreement script)."""

from __future__ import annotations

import glob
from pathlib import Path

from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.hl7.message import split_messages
from ehrbridge.normalize.engine import NormalizeResult, normalize_hl7
from tests.conftest import CORPUS, REPO

DEMO_TENANT = REPO / "events" / "tenants" / "demo-health.yaml"


def corpus_files() -> list[Path]:
    return [Path(p) for p in sorted(glob.glob(str(CORPUS / "*" / "*.hl7")))]


def run_corpus(tenant: TenantConfig | None = None) -> list[tuple[Path, int, NormalizeResult]]:
    tenant = tenant or TenantConfig.from_yaml(DEMO_TENANT)
    out = []
    for path in corpus_files():
        for i, message in enumerate(split_messages(path.read_bytes())):
            out.append((path, i, normalize_hl7(message, tenant)))
    return out
