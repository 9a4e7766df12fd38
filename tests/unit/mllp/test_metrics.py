"""Aggregated EMF metrics: counters by tenant and code, latency as a Values/Counts distribution."""

from __future__ import annotations

import io
import json

from ehrbridge.mllp.metrics import ACK_LATENCY, ACKS, BridgeMetrics, Histogram


def test_flush_writes_emf_and_resets_interval_but_keeps_totals() -> None:
    out = io.StringIO()
    metrics = BridgeMetrics(interval=60, stream=out)
    for _ in range(3):
        metrics.count(ACKS, "alpha", "AA")
    metrics.count(ACKS, "alpha", "AE")
    for ms in (1.0, 2.0, 2.0, 50.0):
        metrics.observe(ACK_LATENCY, "alpha", ms)
    metrics.flush()
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    acks = {d["message_type"]: d[ACKS] for d in docs if ACKS in d}
    assert acks == {"AA": 3, "AE": 1}
    [lat] = [d for d in docs if ACK_LATENCY in d]
    assert sum(lat[ACK_LATENCY]["Counts"]) == 4 and len(lat[ACK_LATENCY]["Values"]) == 3
    assert lat["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"] == "Milliseconds"
    assert docs[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "ehrbridge"
    # Per tenant, and fleet-wide by code: the series the CDK alarms (and their Metrics Insights queries) read.
    assert docs[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service", "tenant", "message_type"],
                                                                      ["service", "message_type"]]
    out.truncate(0)
    out.seek(0)
    metrics.flush()
    assert out.getvalue() == ""  # nothing new in this interval
    snap = metrics.snapshot()
    assert metrics.total(ACKS) == 4 and snap["latency"][ACK_LATENCY]["count"] == 4  # type: ignore[index]


def test_histogram_quantiles_are_within_five_percent() -> None:
    hist = Histogram()
    for ms in range(1, 1001):
        hist.add(float(ms))
    assert abs(hist.quantile(0.5) - 500) / 500 < 0.05
    assert abs(hist.quantile(0.99) - 990) / 990 < 0.05


def test_gauges_are_resent_every_flush() -> None:
    out = io.StringIO()
    metrics = BridgeMetrics(interval=60, stream=out)
    metrics.gauges["MllpCertDaysToExpiry"] = 42.123
    metrics.flush()
    metrics.flush()
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [d["MllpCertDaysToExpiry"] for d in docs] == [42.12, 42.12]
    assert docs[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]
