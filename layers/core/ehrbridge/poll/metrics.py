"""The poller's metrics: every FHIR call counted by outcome and timed, per tenant + endpoint + type.

Written as CloudWatch Embedded Metric Format lines with two dimension sets: the detailed one
(service, tenant, endpoint, resource_type) the per-tenant dashboard and the alarms' Metrics Insights
queries read, and a fleet-wide one (service) for percentile alarms, which Metrics Insights cannot
compute. ``PollCallFailed`` is 0 or 1 on every call, so its average *is* the failed-call rate.
Values are counts, seconds and milliseconds; never an id or a body (no PHI).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import TextIO

from ehrbridge.observability.names import NAMESPACE, POLL_DIMENSIONS, POLL_OUTCOMES

# Names and dimension sets are catalogued in ehrbridge.observability.names (alarms and dashboards are built
# from it; tests/unit/observability/test_metric_names.py checks this module writes exactly those).
DETAIL = POLL_DIMENSIONS
OUTCOMES = POLL_OUTCOMES


def outcome_for(status: int | None, *, timeout: bool = False) -> str:
    if status is None:
        return "timeout" if timeout else "network"
    if 200 <= status < 300:
        return "2xx"
    if status in (401, 403, 404, 429):
        return str(status)
    return "5xx" if status >= 500 else "4xx"


# Calls that ask the server a question, where a refusal is the answer and not a failed call: a re-probe
# of a type known to be denied expects its 403, the opt-in deletion count's type history may be refused,
# and so may the _lastUpdated probe (the answer is then "not supported").
_EXPECTED_OUTCOMES: dict[str, tuple[str, ...]] = {
    "reprobe": ("403",), "history": ("403", "404", "4xx"), "probe": ("404", "4xx")}


class PollMetrics:
    """Counts what a crawl did (for summaries) and writes EMF lines (for CloudWatch).

    ``stream=None`` keeps the counts only (the CLI); Lambda writes to stdout, where the log
    agent turns EMF lines into metrics.
    """

    def __init__(self, tenant_id: str, *, stream: TextIO | Callable[[], TextIO] | None = sys.stdout,
                 service: str | None = None) -> None:
        self.tenant_id = tenant_id
        self.service = service or os.environ.get("POWERTOOLS_SERVICE_NAME", "ehrbridge")
        self._stream = stream
        self.calls: Counter[str] = Counter()
        self.requests = 0
        self.retries = 0
        self.throttled = 0  # 429 answers
        self.throttle_wait_s = 0.0  # time spent waiting on our own bucket and on Retry-After
        self.resources: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()
        self.latencies_ms: list[float] = []

    # ---- recording ---------------------------------------------------------------------
    def call(self, endpoint: str, resource_type: str, status: int | None, latency_ms: float,
             *, timeout: bool = False) -> None:
        outcome = outcome_for(status, timeout=timeout)
        self.requests += 1
        self.calls[outcome] += 1
        self.latencies_ms.append(latency_ms)
        if outcome == "429":
            self.throttled += 1
        expected = outcome in _EXPECTED_OUTCOMES.get(endpoint, ())
        failed = 0.0 if outcome == "2xx" or expected else 1.0
        self._emit(endpoint, resource_type, {"PollCalls": (1.0, "Count"), f"PollCall{outcome}": (1.0, "Count"),
                                             "PollCallFailed": (failed, "Count"),
                                             "PollCallLatency": (latency_ms, "Milliseconds")},
                   fleet=("PollCallLatency",), high_resolution=True)

    def retry(self, endpoint: str, resource_type: str, wait_s: float) -> None:
        self.retries += 1
        self.throttle_wait_s += wait_s
        self._emit(endpoint, resource_type, {"PollRetries": (1.0, "Count"),
                                             "PollThrottleWaitMs": (wait_s * 1000, "Milliseconds")})

    def bucket_wait(self, endpoint: str, resource_type: str, wait_s: float) -> None:
        if wait_s > 0:
            self.throttle_wait_s += wait_s
            self._emit(endpoint, resource_type, {"PollThrottleWaitMs": (wait_s * 1000, "Milliseconds")})

    def received(self, resource_type: str, count: int, duplicates: int = 0) -> None:
        self.resources[resource_type] += count
        self.duplicates[resource_type] += duplicates
        self._emit("search", resource_type, {"PollResources": (float(count), "Count"),
                                             "PollDuplicates": (float(duplicates), "Count")})

    def freshness(self, resource_type: str, lag_s: float) -> None:
        self._emit("search", resource_type, {"PollFreshnessSeconds": (max(0.0, lag_s), "Seconds")})

    def denied(self, resource_type: str) -> None:
        self._emit("search", resource_type, {"PollTypeDenied": (1.0, "Count")})

    def reprobed(self, resource_type: str, *, reinstated: bool) -> None:
        """A 403-denied type asked again: reinstated (polled again) or still denied (not a new alarm)."""
        self._emit("search", resource_type, {"PollTypeReprobed": (1.0, "Count"),
                                             "PollTypeReinstated": (1.0 if reinstated else 0.0, "Count")})

    def deletions(self, resource_type: str, count: int) -> None:
        """Hard deletions the type's _history listed for a window: seen, not delivered (opt-in)."""
        self._emit("history", resource_type, {"PollDeletionsSeen": (float(count), "Count")})

    def roster(self, resolved: int, unresolved: int, *, stuck: int = 0) -> None:
        """ADT-fed roster identifiers resolved to a Patient id, those kept for a later retry, and (a gauge)
        the pending entries that keep failing: the unresolved-roster alarm reads ``PollRosterStuck``."""
        self._emit("roster", "Patient", {"PollRosterResolved": (float(resolved), "Count"),
                                         "PollRosterUnresolved": (float(unresolved), "Count"),
                                         "PollRosterStuck": (float(stuck), "Count")})

    def staleness(self, resource_type: str, ratio: float) -> None:
        self._emit("dispatch", resource_type, {"PollStalenessRatio": (ratio, "None")})

    # ---- output ------------------------------------------------------------------------
    def _emit(self, endpoint: str, resource_type: str, values: dict[str, tuple[float, str]], *,
              fleet: tuple[str, ...] = (), high_resolution: bool = False) -> None:
        stream = self._stream() if callable(self._stream) else self._stream
        if stream is None:
            return
        resolution = 1 if high_resolution else 60
        directives = [{"Namespace": NAMESPACE, "Dimensions": [list(DETAIL)],
                       "Metrics": [{"Name": n, "Unit": u, "StorageResolution": resolution}
                                   for n, (_, u) in values.items() if n not in fleet]}]
        if fleet:
            directives[0]["Metrics"].extend({"Name": n, "Unit": values[n][1], "StorageResolution": resolution}
                                            for n in fleet)
            # The same value under the fleet-wide set: percentiles across tenants for alarms.
            directives.append({"Namespace": NAMESPACE, "Dimensions": [["service"]],
                               "Metrics": [{"Name": n, "Unit": values[n][1], "StorageResolution": resolution}
                                           for n in fleet]})
        line = {"_aws": {"Timestamp": int(time.time() * 1000), "CloudWatchMetrics": directives},
                "service": self.service, "tenant": self.tenant_id, "endpoint": endpoint,
                "resource_type": resource_type, **{n: v for n, (v, _) in values.items()}}
        stream.write(json.dumps(line, separators=(",", ":")) + "\n")

    def p99_ms(self) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
