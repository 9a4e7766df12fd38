"""poll_dispatcher Lambda (EventBridge Scheduler, every minute, one schedule for all tenants):
enqueue a poll job for every (tenant, resource type) pair that is due.

Thin: wiring only; the plan and the due rule live in ehrbridge.poll.jobs.
"""

from __future__ import annotations

from typing import Any

from ehrbridge import lean_imports  # noqa: F401 - first: no httpx CLI in the cold start
from ehrbridge.observability import logger, metrics, tracer
from ehrbridge.poll.runtime import run_dispatcher


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, int]:
    summary = run_dispatcher()
    counts = summary.counts()
    logger.info("poll dispatch run", extra={"counts": counts})
    return counts
