"""hl7_ingest Lambda: consumes hl7-inbound, archives raw HL7 and routes it to normalize.

Thin: Powertools wiring, then the stage from the library. Failures become partial batch responses.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from ehrbridge.observability import logger, metrics, tracer
from ehrbridge.pipeline.consumer import Consumer
from ehrbridge.pipeline.passthrough import build_forward_stage


@cache
def _consumer() -> Consumer:
    return build_forward_stage("hl7_ingest", consumes="hl7-inbound", produces="normalize")


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return _consumer()(event, context)
