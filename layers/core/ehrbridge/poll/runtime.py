"""AWS wiring for the two polling functions: the state table, the poll-jobs queue, normalize.

The handlers call ``run_dispatcher`` and ``process_poll_event``; everything else (what is due,
how a window is crawled) is in jobs.py and poller.py and knows nothing about Lambda.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from ehrbridge.auth.runtime import refresher
from ehrbridge.auth.state import DynamoRefreshState
from ehrbridge.aws import settings
from ehrbridge.aws.clients import client
from ehrbridge.contracts.envelope import ContractError
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.contracts.tenant_store import DynamoTenantStore, TenantNotFound
from ehrbridge.observability import logger
from ehrbridge.poll.calls import PollCalls, effective_rate
from ehrbridge.poll.cursor import DynamoCursorStore
from ehrbridge.poll.jobs import DispatchSummary, PollJob, dispatch, reprobe_after_s
from ehrbridge.poll.limits import Deadline, SharedRateLimiter
from ehrbridge.poll.metrics import PollMetrics
from ehrbridge.poll.poller import Poller
from ehrbridge.poll.sink import QueueSink

# Time kept back from the Lambda deadline to save the cursor and re-enqueue.
DEADLINE_MARGIN_S = 10.0


class SqsJobQueue:
    """Poll jobs onto the FIFO poll-jobs queue: group = tenant + type, dedup = tenant + job + continuation."""

    def __init__(self, queue_url: str, sqs: Any = None) -> None:
        self.queue_url, self._sqs = queue_url, sqs

    @property
    def sqs(self) -> Any:
        return self._sqs or client("sqs")

    def send(self, jobs: Sequence[PollJob]) -> None:
        for start in range(0, len(jobs), 10):
            chunk = jobs[start:start + 10]
            response = self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(i), "MessageBody": job.model_dump_json(), "MessageGroupId": job.group_id,
                 "MessageDeduplicationId": job.dedup_id} for i, job in enumerate(chunk)])
            if response.get("Failed"):
                raise RuntimeError(f"{len(response['Failed'])} poll job(s) not accepted by the queue")


@cache
def _stores() -> tuple[DynamoTenantStore, DynamoCursorStore, DynamoRefreshState]:
    table = settings.table_name("state")
    return DynamoTenantStore(table, max_age_s=60), DynamoCursorStore(table), DynamoRefreshState(table)


@cache
def _jobs() -> SqsJobQueue:
    return SqsJobQueue(settings.queue_url("poll-jobs"))


def run_dispatcher() -> DispatchSummary:
    tenants, cursors, state = _stores()
    return dispatch(tenants.list(), cursors, _jobs().send,
                    coverage_for=lambda tenant: state.status(tenant.tenant_id),
                    metrics_for=lambda tenant_id: PollMetrics(tenant_id), reprobe_after_s=reprobe_after_s())


@dataclass
class _Wired:
    tenant: TenantConfig
    calls: PollCalls


_wired: dict[str, _Wired] = {}


def _calls_for(tenant: TenantConfig) -> PollCalls:
    """One HTTP client per tenant per execution environment (connections stay pooled); the tenant's
    rate is one budget in the state table, shared by the environments crawling its types in parallel."""
    cached = _wired.get(tenant.tenant_id)
    if cached is not None and cached.tenant == tenant:
        cached.calls.metrics = PollMetrics(tenant.tenant_id)
        return cached.calls
    if cached is not None:
        cached.calls.close()
    limiter = SharedRateLimiter(settings.table_name("state"), tenant.tenant_id, effective_rate(tenant))
    calls = PollCalls(tenant, refresher(), PollMetrics(tenant.tenant_id), bucket=limiter)
    _wired[tenant.tenant_id] = _Wired(tenant, calls)
    return calls


def poll_one(body: str, remaining_s: float) -> str:
    """Run one job; returns what happened ('done', 'continue', 'denied', ..., or 'wait:<seconds>')."""
    job = PollJob.parse_json(body)
    now = time.time()
    if job.not_before is not None and job.not_before > now:
        return f"wait:{job.not_before - now:.0f}"
    tenants, cursors, _ = _stores()
    tenant = tenants.get(job.tenant_id)
    from ehrbridge.pipeline.wiring import stage_io

    io = stage_io()
    sink = QueueSink(io.publisher("normalize"))
    calls = _calls_for(tenant)
    poller = Poller(tenant, calls, cursors, sink)
    outcome = poller.run(job, Deadline(remaining_s - DEADLINE_MARGIN_S))
    if outcome.status == "continue":
        # Saved cursor + a fresh message: the next invocation resumes where this one stopped.
        _jobs().send([job.next(not_before=time.time() + outcome.delay_s if outcome.delay_s else None)])
    return outcome.status


def process_poll_event(event: dict[str, Any], remaining_ms: int) -> dict[str, Any]:
    """SQS batch (size 1 by config) -> partial batch response. A job that must wait is handed back
    with its visibility timeout set to the wait (FIFO queues have no per-message delay)."""
    failures = []
    for record in event.get("Records", []):
        message_id = record["messageId"]
        try:
            result = poll_one(record["body"], remaining_ms / 1000)
        except ContractError as err:
            # Retrying cannot fix a malformed job: straight to the DLQ with the reason, as the consumers do.
            reason = str(err)[:250]
            logger.error("invalid poll job; sent to the DLQ", extra={"reason": reason})
            client("sqs").send_message(
                QueueUrl=settings.dlq_url("poll-jobs"), MessageBody=record["body"], MessageGroupId="invalid",
                MessageDeduplicationId=message_id[:128],
                MessageAttributes={"reason": {"DataType": "String", "StringValue": reason}})
            continue
        except TenantNotFound:
            logger.warning("poll job for a removed tenant; dropped", extra={"reason": "tenant is not configured"})
            continue
        if result.startswith("wait:"):
            wait = min(43_200, max(1, int(float(result[5:]))))
            client("sqs").change_message_visibility(QueueUrl=settings.queue_url("poll-jobs"),
                                                    ReceiptHandle=record["receiptHandle"], VisibilityTimeout=wait)
            failures.append({"itemIdentifier": message_id})
    return {"batchItemFailures": failures}
