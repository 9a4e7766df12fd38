"""Politeness and time: a token bucket per tenant, exponential backoff with full jitter, deadlines.

Full jitter (delay = uniform(0, min(cap, base * 2**attempt))) spreads retries of many pollers hit by
the same outage instead of synchronising them (AWS Architecture Blog, "Exponential Backoff And Jitter").
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` requests per second on average, bursts of up to ``burst``. Thread-safe."""

    def __init__(self, rate: float, burst: float | None = None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = max(1.0, burst if burst is not None else rate)
        self.clock, self.sleep = clock, sleep
        self._tokens = self.capacity
        self._updated = clock()
        self._lock = threading.Lock()

    def wait_time(self) -> float:
        """Seconds until one token is available (0 if one is there now); takes nothing."""
        with self._lock:
            self._refill()
            return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    def acquire(self) -> float:
        """Take one token, sleeping until there is one. Returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                self._refill()
                if self._tokens >= 1:
                    self._tokens -= 1
                    return waited
                delay = (1 - self._tokens) / self.rate
            self.sleep(delay)
            waited += delay

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now


def full_jitter(attempt: int, *, base_s: float = 0.5, cap_s: float = 30.0,
                rng: random.Random | None = None) -> float:
    """Backoff before retry number ``attempt`` (1-based): uniform over [0, min(cap, base * 2**attempt)]."""
    ceiling = min(cap_s, base_s * (2 ** max(0, attempt)))
    return (rng or random).uniform(0, ceiling)


class Deadline:
    """A point on the monotonic clock the work must end before (the Lambda timeout minus a margin)."""

    def __init__(self, seconds: float | None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.at = None if seconds is None else clock() + seconds

    def remaining(self) -> float:
        return float("inf") if self.at is None else self.at - self.clock()

    def allows(self, seconds: float) -> bool:
        return self.remaining() > seconds


class SharedRateLimiter:
    """One tenant's request rate shared by every poller instance: a counter per one-second slot in the
    state table (``pk=tenant#<id>``, ``sk=poll#rate#<slot>``), taken with a conditional ADD.

    Lambda runs one crawl per (tenant, type) at a time, so a tenant's types crawl in parallel in separate
    execution environments; an in-process bucket cannot keep their sum under the vendor's limit, this can.
    Cost: one conditional write per request. Same interface as TokenBucket.
    """

    def __init__(self, table_name: str, tenant_id: str, rate: float, *, ddb: object = None,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.table_name, self.tenant_id = table_name, tenant_id
        self.per_slot = max(1, int(rate))  # whole requests per second; rates below 1/s round up to 1
        self._ddb, self.clock, self.sleep = ddb, clock, sleep
        self._full_until = 0.0

    @property
    def ddb(self) -> object:
        from ehrbridge.aws.clients import client

        return self._ddb or client("dynamodb")

    def wait_time(self) -> float:
        return max(0.0, self._full_until - self.clock())

    def acquire(self) -> float:
        waited = 0.0
        while True:
            now = self.clock()
            slot = int(now)
            if self._take(slot):
                return waited
            self._full_until = slot + 1.0
            delay = max(0.001, slot + 1.0 - now)
            self.sleep(delay)
            waited += delay

    def _take(self, slot: int) -> bool:
        ddb = self.ddb
        try:
            ddb.update_item(  # type: ignore[attr-defined]
                TableName=self.table_name,
                Key={"pk": {"S": f"tenant#{self.tenant_id}"}, "sk": {"S": f"poll#rate#{slot}"}},
                UpdateExpression="ADD #c :one SET expires_at = :ttl",
                ConditionExpression="attribute_not_exists(#c) OR #c < :limit",
                ExpressionAttributeNames={"#c": "count"},
                ExpressionAttributeValues={":one": {"N": "1"}, ":limit": {"N": str(self.per_slot)},
                                           ":ttl": {"N": str(slot + 3600)}})
            return True
        except ddb.exceptions.ConditionalCheckFailedException:  # type: ignore[attr-defined]
            return False
