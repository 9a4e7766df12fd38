"""fhir_poller Lambda: consumes poll-jobs (batch size 1), crawls one (tenant, type) window onto normalize.

Thin: Powertools wiring, then ehrbridge.poll. A job that runs out of time saves its cursor and
re-enqueues itself; a failure leaves the cursor at the last delivered page and the message returns.
"""

from __future__ import annotations

from typing import Any

from ehrbridge import lean_imports  # noqa: F401 - first: no httpx CLI in the cold start
from ehrbridge.observability import logger, metrics, tracer
from ehrbridge.poll.runtime import process_poll_event


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(capture_cold_start_metric=False)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    remaining_ms = context.get_remaining_time_in_millis() if context is not None else 140_000
    return process_poll_event(event, remaining_ms)
