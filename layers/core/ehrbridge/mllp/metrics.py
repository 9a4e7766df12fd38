"""The bridge's PHI-free metrics: aggregated in process, flushed as CloudWatch EMF.

Emitting one EMF line per message would cost more CPU than the message itself at thousands of
messages/s, so counters and the ACK-latency distribution are aggregated and flushed every
``interval`` seconds. Latency goes out as EMF ``Values``/``Counts`` so CloudWatch can compute p99
(the alarm in the CDK construct uses it). The same numbers are served as JSON on ``/metrics``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from typing import IO

from ehrbridge.observability import NAMESPACE, SERVICE

# Counter names (CloudWatch metric names).
CONNECTIONS_OPENED = "MllpConnectionsOpened"
CONNECTIONS_REFUSED = "MllpConnectionsRefused"
TLS_HANDSHAKE_FAILED = "MllpTlsHandshakeFailed"
PLAINTEXT_REFUSED = "MllpPlaintextRefused"
FRAMING_ERRORS = "MllpFramingErrors"
MESSAGES = "MllpMessages"
ACKS = "MllpAcks"
DUPLICATES = "MllpDuplicates"
COMMIT_FAILED = "MllpCommitFailed"
QUARANTINED = "MllpQuarantined"
ACK_LATENCY = "MllpAckLatency"
SQS_BATCH_LATENCY = "MllpSqsBatchLatency"
ACK_STORE_FAILED = "MllpAckStoreFailed"  # durable ACK store lookups/writes that failed (read_*/write_* codes)
ACK_STORE_LATENCY = "MllpAckStoreLatency"
CERT_DAYS_LEFT = "MllpCertDaysToExpiry"
# Connections the bridge closed on purpose with a frame read but not (fully) answered, by reason:
# too_large (after its AR), unanswered_deadline (safety net), internal_error (a bug in reading).
DELIBERATE_CLOSES = "MllpDeliberateCloses"


def _bucket(ms: float) -> float:
    """Log-spaced buckets (~5 % wide) keep the distribution small with p99 error under 5 %."""
    if ms <= 0.05:
        return 0.05
    return _BUCKET_VALUES.get(int(math.log(ms) * 20)) or _bucket_value(int(math.log(ms) * 20))


_BUCKET_VALUES: dict[int, float] = {}


def _bucket_value(index: int) -> float:
    value = _BUCKET_VALUES[index] = round(math.exp((index + 0.5) / 20), 3)
    return value


class Histogram:
    def __init__(self) -> None:
        self.buckets: Counter[float] = Counter()

    @property
    def count(self) -> int:
        return sum(self.buckets.values())

    def add(self, ms: float) -> None:
        self.buckets[_bucket(ms)] += 1

    def merge(self, other: Histogram) -> None:
        self.buckets.update(other.buckets)

    def quantile(self, q: float) -> float:
        count = self.count
        if not count:
            return 0.0
        rank = q * count
        seen = 0
        for value in sorted(self.buckets):
            seen += self.buckets[value]
            if seen >= rank:
                return value
        return max(self.buckets)


class BridgeMetrics:
    """Counters by (name, tenant, dimension value) and latency histograms by tenant."""

    def __init__(self, *, interval: float = 60.0, stream: IO[str] | None = None) -> None:
        self.interval = interval
        self.stream = stream
        self.counters: Counter[tuple[str, str, str]] = Counter()  # this interval (the next flush)
        self._flushed: Counter[tuple[str, str, str]] = Counter()  # earlier intervals; + counters = since start
        self.latency: dict[tuple[str, str], Histogram] = {}
        self.latency_all: dict[str, Histogram] = {}  # flushed intervals, since start
        self.open_connections = 0
        self.gauges: dict[str, float] = {}  # fleet-wide values re-sent every flush (e.g. certificate days left)
        self._last_flush = time.monotonic()

    def count(self, name: str, tenant: str = "none", detail: str = "", value: int = 1) -> None:
        # Several calls per message: one counter update here; totals are folded in at flush time.
        self.counters[(name, tenant, detail)] += value

    @property
    def totals(self) -> Counter[tuple[str, str, str]]:
        """Counters since start (for /metrics and tests)."""
        totals = self._flushed.copy()
        totals.update(self.counters)
        return totals

    def observe(self, name: str, tenant: str, ms: float) -> None:
        hist = self.latency.get((name, tenant))
        if hist is None:
            hist = self.latency[(name, tenant)] = Histogram()
        hist.add(ms)

    def total(self, name: str, detail: str | None = None) -> int:
        return sum(v for (n, _t, d), v in self.totals.items() if n == name and (detail is None or d == detail))

    def snapshot(self) -> dict[str, object]:
        counters: dict[str, dict[str, int]] = {}
        for (name, tenant, detail), value in sorted(self.totals.items()):
            counters.setdefault(name, {})[f"{tenant}/{detail}" if detail else tenant] = value
        merged: dict[str, Histogram] = {}
        for name, hist in self.latency_all.items():
            merged.setdefault(name, Histogram()).merge(hist)
        for (name, _tenant), hist in self.latency.items():
            merged.setdefault(name, Histogram()).merge(hist)
        lat = {name: {"count": h.count, "p50_ms": h.quantile(0.5), "p99_ms": h.quantile(0.99)}
               for name, h in merged.items()}
        return {"open_connections": self.open_connections, "counters": counters, "latency": lat,
                "gauges": dict(self.gauges)}

    def maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Write the interval's counters and distributions as EMF lines, then reset them."""
        self._last_flush = time.monotonic()
        out = self.stream or sys.stdout
        stamp = int(time.time() * 1000)
        for (name, tenant, detail), value in sorted(self.counters.items()):
            dims = ["service", "tenant"] + (["message_type"] if detail else [])
            # A second, tenant-free dimension set: the fleet-wide series the CDK alarms watch.
            fleet = ["service"] + (["message_type"] if detail else [])
            doc: dict[str, object] = {
                "_aws": {"Timestamp": stamp, "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE, "Dimensions": [dims, fleet],
                    "Metrics": [{"Name": name, "Unit": "Count"}]}]},
                "service": SERVICE, "tenant": tenant, name: value}
            if detail:
                # The ACK code / failure kind rides in the one allowed secondary dimension.
                doc["message_type"] = detail
            out.write(json.dumps(doc, separators=(",", ":")) + "\n")
        for name, gauge in sorted(self.gauges.items()):
            doc = {"_aws": {"Timestamp": stamp, "CloudWatchMetrics": [{
                "Namespace": NAMESPACE, "Dimensions": [["service"]], "Metrics": [{"Name": name, "Unit": "None"}]}]},
                "service": SERVICE, name: round(gauge, 2)}
            out.write(json.dumps(doc, separators=(",", ":")) + "\n")
        for (name, tenant), hist in sorted(self.latency.items()):
            values = sorted(hist.buckets)[:100]
            doc = {"_aws": {"Timestamp": stamp, "CloudWatchMetrics": [{
                "Namespace": NAMESPACE, "Dimensions": [["service", "tenant"], ["service"]],
                "Metrics": [{"Name": name, "Unit": "Milliseconds"}]}]},
                "service": SERVICE, "tenant": tenant,
                name: {"Values": values, "Counts": [hist.buckets[v] for v in values]}}
            out.write(json.dumps(doc, separators=(",", ":")) + "\n")
        out.flush()
        self._flushed.update(self.counters)
        self.counters.clear()
        for (name, _tenant), hist in self.latency.items():
            self.latency_all.setdefault(name, Histogram()).merge(hist)
        self.latency.clear()
