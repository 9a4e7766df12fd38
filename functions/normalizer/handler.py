"""normalizer Lambda: consumes normalize, hands canonical bundles to identity.

Thin: Powertools wiring, then the stage from the library. Failures become partial batch responses.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from ehrbridge.normalize.stage import build_normalizer_stage
from ehrbridge.observability import logger, metrics, tracer
from ehrbridge.pipeline.consumer import Consumer


@cache
def _consumer() -> Consumer:
    return build_normalizer_stage()


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return _consumer()(event, context)
