"""Fuzz: the normalizer, as the stage and the CLI call it. For any bytes: ``normalize_hl7`` returns (never
raises), never needs its last guard ("mapping failed"), and every ``ok`` bundle validates with the
fhir.resources R4B models. In the long form each message's peak memory (tracemalloc) and the output to
input size ratio are recorded.

The R4B check also holds the fast structural check (``normalize/validate.py``) to what the models
accept: a bundle the fast check passes but the models refuse is counted as ``invalid_ok_bundles``.

R4B validation costs ~10 ms a bundle, more than everything else per input, and mutated messages give
mostly the same resources again. So a bundle is validated as the R4B ``Bundle`` model does it, in two
parts: its envelope (Bundle with the entries' ``resource`` taken out) and each resource with its own
R4B model, remembering resources already validated (by their exact JSON). Every resource of every ok
bundle is validated; only repeats are not validated twice.
"""

from __future__ import annotations

import hashlib
import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

from hypothesis import given

from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.normalize.engine import normalize_hl7
from ehrbridge.normalize.validate import validate_with_models

from . import stats
from .conftest import LONG
from .strategies import hl7_inputs

TARGET = "normalizer"
TENANT = TenantConfig.from_yaml(Path(__file__).resolve().parents[2] / "events" / "tenants" / "demo-health.yaml")


_VALID: set[bytes] = set()  # digests of resources the R4B models accepted


def validate_r4b(bundle: dict[str, Any]) -> list[str]:
    """``validate_with_models`` (R4B Bundle), split into envelope + resources with a memo of valid resources."""
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    skeleton = {**bundle, "entry": [{k: v for k, v in e.items() if k != "resource"} for e in bundle.get("entry", [])]}
    problems = validate_with_models(skeleton)
    for index, entry in enumerate(bundle.get("entry", [])):
        resource = entry.get("resource", {})
        digest = hashlib.blake2b(json.dumps(resource, sort_keys=True).encode(), digest_size=16).digest()
        if digest in _VALID:
            stats.count(TARGET, "resources_validated_before")
            continue
        try:
            get_fhir_model_class(resource.get("resourceType", "Resource")).model_validate(resource)
        except (ValidationError, KeyError, ValueError) as err:
            detail = err.errors(include_input=False, include_url=False) if isinstance(err, ValidationError) else []
            problems += [f"entry.{index}.resource.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                         for e in detail] or [f"entry.{index}.resource: {type(err).__name__}"]
            continue
        stats.count(TARGET, "resources_validated")
        if len(_VALID) < 500_000:
            _VALID.add(digest)
    return problems


# tracemalloc slows normalization ~8x: the long form measures every 25th input and every input over 8 KB
# (the amplification candidates); the figure says how many were measured.
_MEASURE_EVERY = 25
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


@given(hl7_inputs())
def test_normalizer_never_raises_and_ok_bundles_are_valid_r4b(inputs: list[bytes]) -> None:
    for data in inputs:
        _one(data)


def _one(data: bytes) -> None:
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
    problems = validate_r4b(result.bundle or {})
    if problems:
        stats.count(TARGET, "invalid_ok_bundles")
    assert problems == [], problems


def test_split_validation_agrees_with_the_whole_bundle_model() -> None:
    """``validate_r4b`` (envelope + memoized resources) accepts and refuses what ``Bundle.model_validate`` does."""
    import copy

    from ehrbridge.hl7.wire import split_batch

    from .seeds import seed_messages

    results = [normalize_hl7(m, TENANT) for s in seed_messages() for m in split_batch(s)]
    for result in (r for r in results if r.ok):
        bundle = result.bundle or {}
        assert validate_r4b(bundle) == [] and validate_with_models(bundle) == []
        for element, value in (("birthDate", "0000"), ("status", {"x": 1}), ("code", {"x": 1}), ("bogus", 1)):
            broken = copy.deepcopy(bundle)
            for entry in broken["entry"]:
                entry["resource"][element] = value
            assert bool(validate_r4b(broken)) == bool(validate_with_models(broken))
        broken = copy.deepcopy(bundle)
        broken["entry"][0]["fullUrl"] = 3
        assert validate_r4b(broken) and validate_with_models(broken)
