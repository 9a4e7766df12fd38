"""identity_matcher Lambda: consumes identity, resolves each Patient to its enterprise patient,
rewrites references, writes the FHIR lake and one EventBridge event per link change.

Thin: Powertools wiring, then the stage from the library (ehrbridge.identity.stage). Failures
become partial batch responses; unresolvable bundles are quarantined with their reason.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from ehrbridge.identity.stage import IdentityStage, build_identity_consumer
from ehrbridge.observability import logger, metrics, tracer
from ehrbridge.pipeline.consumer import Consumer


@cache
def _consumer() -> tuple[Consumer, IdentityStage]:
    return build_identity_consumer("identity_matcher")


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    consumer, stage = _consumer()
    try:
        return consumer(event, context)
    finally:
        stage.flush_backlog_metrics()
