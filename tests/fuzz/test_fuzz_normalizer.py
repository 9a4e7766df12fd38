"""Fuzz: the normalizer, as the stage and the CLI call it. For any bytes: ``normalize_hl7`` returns (never
raises), never needs its last guard ("mapping failed"), and every ``ok`` bundle validates with the
fhir.resources R4B models. In the long form each message's peak memory (tracemalloc) and the output to
input size ratio are recorded.

The R4B check also holds the fast structural check (``normalize/validate.py``) to what the models
accept: a bundle the fast check passes but the models refuse is counted as ``invalid_ok_bundles``.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

from hypothesis import given

from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.normalize.engine import normalize_hl7
from ehrbridge.normalize.validate import validate_with_models

from . import stats
from .conftest import LONG
from .strategies import hl7_bytes

TARGET = "normalizer"
TENANT = TenantConfig.from_yaml(Path(__file__).resolve().parents[2] / "events" / "tenants" / "demo-health.yaml")


# tracemalloc slows normalization ~8x: the long form measures every 10th input and every input over 8 KB
# (the amplification candidates); the figure says how many were measured.
_MEASURE_EVERY = 10
_MEASURE_ABOVE = 8 * 1024
_seen = [0]


def _normalize(data: bytes):  # type: ignore[no-untyped-def]
    _seen[0] += 1
    if not LONG or (_seen[0] % _MEASURE_EVERY and len(data) <= _MEASURE_ABOVE):
        return normalize_hl7(data, TENANT)
    stats.count(TARGET, "memory_measured")
    if not tracemalloc.is_tracing():
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    result = normalize_hl7(data, TENANT)
    elapsed_ms = (time.perf_counter() - started) * 1000
    peak = tracemalloc.get_traced_memory()[1] - base
    stats.maximum(TARGET, "peak_memory_bytes_per_message", peak, input_bytes=len(data), status=result.status)
    stats.maximum(TARGET, "slowest_message_ms", round(elapsed_ms, 1), input_bytes=len(data), status=result.status)
    if result.ok and data:
        stats.maximum(TARGET, "max_output_to_input_ratio", round(len(result.bundle_json) / len(data), 2),
                      input_bytes=len(data))
    return result


@given(hl7_bytes())
def test_normalizer_never_raises_and_ok_bundles_are_valid_r4b(data: bytes) -> None:
    stats.count(TARGET, "inputs")
    try:
        result = _normalize(data)
    except Exception:
        stats.count(TARGET, "uncaught_exceptions")
        raise
    if any(reason.startswith("mapping failed") for reason in result.reasons):
        stats.count(TARGET, "last_guard_catches")
    assert not any(reason.startswith("mapping failed") for reason in result.reasons), result.reasons
    if any(reason.startswith("limit exceeded") for reason in result.reasons):
        stats.count(TARGET, "limit_quarantines")
    if not result.ok:
        stats.count(TARGET, "quarantined")
        assert result.reasons and all(isinstance(r, str) and r for r in result.reasons)
        return
    stats.count(TARGET, "ok")
    problems = validate_with_models(result.bundle or {})
    if problems:
        stats.count(TARGET, "invalid_ok_bundles")
    assert problems == [], problems
