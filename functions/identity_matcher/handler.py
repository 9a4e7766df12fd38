"""identity_matcher Lambda: consumes identity, writes the FHIR lake.

Thin: Powertools wiring, then the stage from the library. Failures become partial batch responses.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from ehrbridge.observability import logger, metrics, tracer
from ehrbridge.pipeline.consumer import Consumer
from ehrbridge.pipeline.passthrough import build_sink_stage


@cache
def _consumer() -> Consumer:
    return build_sink_stage("identity_matcher", consumes="identity")


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return _consumer()(event, context)
