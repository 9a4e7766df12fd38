"""token_refresh Lambda (EventBridge Scheduler, every minute): refresh each SMART tenant's token
that is due, one tenant at a time with jitter, within the invocation's remaining time.

Thin: wiring only; the lifecycle lives in ehrbridge.auth.refresher. Imports nothing heavy
(no fhir.resources, no authlib): a test checks sys.modules.
"""

from __future__ import annotations

import os
import time
from functools import cache
from typing import Any

from ehrbridge.auth.runtime import refresher
from ehrbridge.aws.settings import table_name
from ehrbridge.contracts.tenant_store import DynamoTenantStore
from ehrbridge.observability import logger, metrics, tracer

SPREAD_ENV = "EHRBRIDGE_REFRESH_SPREAD_S"


@cache
def _tenants() -> DynamoTenantStore:
    return DynamoTenantStore(table_name("state"), max_age_s=60)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, int]:
    remaining_s = context.get_remaining_time_in_millis() / 1000 if context is not None else 55.0
    summary = refresher().refresh_due(_tenants().list(), deadline=time.time() + remaining_s,
                                       spread_s=float(os.environ.get(SPREAD_ENV, "20")))
    counts = summary.counts()
    logger.info("token refresh run", extra={"counts": counts, "failed": summary.failed})
    return counts
