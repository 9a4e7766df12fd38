"""hl7_ingest Lambda: consumes hl7-inbound, archives raw HL7, splits batches and routes each message to normalize.

Thin: Powertools wiring, then the stage from the library (ehrbridge.ingest.stage). Bad messages are
quarantined with the reason; transient failures become partial batch responses (then the DLQ).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from ehrbridge.ingest.stage import build_consumer
from ehrbridge.observability import logger, metrics, tracer
from ehrbridge.pipeline.consumer import Consumer


@cache
def _consumer() -> Consumer:
    return build_consumer()


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return _consumer()(event, context)
