"""One-shot polling for the CLI: the same Poller the function runs, with cursors in a local file.

``run_once`` crawls each type's window to the end (sleeping through Retry-After waits instead of
re-enqueueing, since there is no queue) and returns a PHI-free summary.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ehrbridge.auth.refresher import TokenRefresher
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.poll.calls import PollCalls
from ehrbridge.poll.cursor import InMemoryCursorStore
from ehrbridge.poll.jobs import PollJob, poll_plan
from ehrbridge.poll.metrics import PollMetrics
from ehrbridge.poll.poller import Poller, PollSettings
from ehrbridge.poll.sink import NdjsonSink

STATE_FILE = ".ehrbridge-poll-state.json"


@dataclass
class OneShotSummary:
    tenant_id: str
    resources: dict[str, int] = field(default_factory=dict)  # received per type (after in-run dedupe)
    new: dict[str, int] = field(default_factory=dict)  # written to DIR (not already there)
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    denied: list[str] = field(default_factory=list)
    not_granted: list[str] = field(default_factory=list)
    watermark: dict[str, str | None] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)
    p99_latency_ms: float | None = None
    bulk: dict[str, Any] | None = None
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def run_once(tenant: TenantConfig, refresher: TokenRefresher, out_dir: Path, *,
             resource_types: Iterable[str] | None = None, since: str | None = None,
             progress: Callable[[str, int, int], None] | None = None, settings: PollSettings | None = None,
             calls_options: dict[str, Any] | None = None, bulk: bool = False,
             group_id: str | None = None) -> OneShotSummary:
    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    cursors = InMemoryCursorStore()
    state_path = out_dir / STATE_FILE
    if state_path.exists() and since is None:
        cursors.load(json.loads(state_path.read_text(encoding="utf-8")))
    metrics = PollMetrics(tenant.tenant_id, stream=None)
    sink = NdjsonSink(out_dir)
    calls = PollCalls(tenant, refresher, metrics, **(calls_options or {}))
    poller = Poller(tenant, calls, cursors, sink, settings=settings)
    types = list(resource_types) if resource_types else [e.resource_type for e in poll_plan(tenant)]
    overlaps = {e.resource_type: e.overlap_s for e in poll_plan(tenant)}
    summary = OneShotSummary(tenant.tenant_id)
    if bulk:
        summary.bulk = _backfill(tenant, refresher, sink, cursors, types, since, group_id)
        _save(state_path, cursors)
        since = None  # the incremental pass below continues from the export's transactionTime
    try:
        for resource_type in types:
            job = PollJob(tenant_id=tenant.tenant_id, resource_type=resource_type, job_id=f"cli-{resource_type}",
                          overlap_s=overlaps.get(resource_type, 300))
            received = 0
            while True:
                outcome = poller.run(job, since=since)
                received += outcome.resources
                if progress is not None:
                    progress(resource_type, received, metrics.requests)
                if outcome.status != "continue":
                    break
                time.sleep(outcome.delay_s)  # one-shot: no queue to come back on, so wait here
                job = job.next(not_before=None)
            summary.resources[resource_type] = received
            summary.modes[resource_type] = outcome.mode
            summary.watermark[resource_type] = outcome.watermark
            if outcome.status == "denied":
                summary.denied.append(resource_type)
            elif outcome.status == "not_granted":
                summary.not_granted.append(resource_type)
            _save(state_path, cursors)
    finally:
        calls.close()
    summary.new = {rt: sink.written.get(rt, 0) for rt in types}
    summary.requests, summary.retries, summary.throttled = metrics.requests, metrics.retries, metrics.throttled
    summary.p99_latency_ms = round(metrics.p99_ms(), 1) if metrics.p99_ms() is not None else None
    summary.elapsed_s = round(time.monotonic() - started, 3)
    return summary


def _backfill(tenant: TenantConfig, refresher: TokenRefresher, sink: NdjsonSink, cursors: InMemoryCursorStore,
              types: list[str], since: str | None, group_id: str | None) -> dict[str, Any]:
    """Bulk $export first; each exported type's watermark becomes the manifest's transactionTime."""
    from dataclasses import replace

    from ehrbridge.poll.bulk import BulkExporter
    from ehrbridge.poll.calls import effective_rate
    from ehrbridge.poll.limits import TokenBucket

    if since is None:
        marks = [cursors.get(tenant.tenant_id, rt).watermark for rt in types]
        since = min(marks) if marks and all(marks) else None  # type: ignore[type-var]
    exporter = BulkExporter(tenant, refresher, sink, limiter=TokenBucket(effective_rate(tenant)))
    try:
        result = exporter.export(types, since=since, group_id=group_id)
    finally:
        exporter.close()
    for resource_type in types:
        cursor = cursors.get(tenant.tenant_id, resource_type)
        if cursor.window is None:
            cursors.put(replace(cursor, watermark=result.transaction_time))
    return {"transaction_time": result.transaction_time, "resources": result.resources, "errors": result.errors,
            "requests": result.requests, "since": since}


def _save(path: Path, cursors: InMemoryCursorStore) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cursors.dump(), indent=1), encoding="utf-8")
    os.replace(tmp, path)
