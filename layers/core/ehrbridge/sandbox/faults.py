"""Fault injection for the sandbox EHR: what real FHIR servers do to a poller, each switchable.

- 429 bursts, with ``Retry-After`` as delta-seconds, an HTTP-date or an absolute epoch (rotating);
- 5xx answers (500 included: Oracle's can be transient), slow responses;
- a 200 whose JSON is cut short, and a 200 that carries an OperationOutcome instead of the Bundle;
- records updated while a crawl pages through them (drift under offset ``next`` links);
- tokens that expire mid-crawl (every N requests, on top of short ``token_lifetime_s``).

Randomness comes from one seeded generator, so a failing test run can be replayed.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ehrbridge.sandbox.server import SandboxEHR

RETRY_AFTER_FORMS = ("delta", "date", "epoch")


@dataclass
class Faults:
    seed: int = 11
    throttle_rate: float = 0.0  # chance that a FHIR request starts a burst of 429s
    throttle_burst: int = 1  # 429s in a row per burst
    throttle_every: int = 0  # deterministic: every Nth FHIR request answers 429 (0: off)
    # deterministic, per page: every Nth request that is not the retry of a 429 answers 429, so 1/N of
    # the pages a crawl needs are refused once (0: off)
    throttle_pages_every: int = 0
    retry_after_s: int = 1
    retry_after_forms: tuple[str, ...] = RETRY_AFTER_FORMS
    error_rate: float = 0.0  # chance of a 5xx
    error_statuses: tuple[int, ...] = (500, 502, 503, 504)
    slow_rate: float = 0.0
    slow_s: float = 0.3
    truncate_rate: float = 0.0  # chance a 200 search page is cut short
    outcome_rate: float = 0.0  # chance a 200 carries an OperationOutcome instead of the Bundle
    mutate_per_page: int = 0  # resources of the searched type updated after each page served
    expire_tokens_every: int = 0  # every Nth FHIR request, all issued tokens expire (401 mid-crawl)

    @classmethod
    def everything(cls, *, seed: int = 11, rate: float = 0.08) -> Faults:
        return cls(seed=seed, throttle_rate=rate, throttle_burst=2, error_rate=rate, slow_rate=rate / 2,
                   slow_s=0.05, truncate_rate=rate, outcome_rate=rate, mutate_per_page=1, expire_tokens_every=13)


def parse_faults(settings: list[str]) -> Faults:
    """``NAME=VALUE`` pairs (the CLI's ``--fault``) -> Faults; ``all`` switches every fault on."""
    from dataclasses import fields

    faults = Faults.everything() if "all" in settings else Faults()
    types = {f.name: f.type for f in fields(Faults)}
    for item in settings:
        if item == "all":
            continue
        name, _, value = item.partition("=")
        kind = str(types.get(name.strip(), ""))
        if not kind or kind.startswith("tuple"):
            known = ", ".join(n for n, t in types.items() if "tuple" not in str(t))
            raise ValueError(f"unknown fault {name!r}; one of {known}")
        try:
            setattr(faults, name.strip(), int(value) if kind == "int" else float(value))
        except ValueError:
            raise ValueError(f"fault {name}: {value!r} is not a number") from None
    return faults


@dataclass
class Injected:
    status: int
    body: bytes
    headers: dict[str, str]


class FaultInjector:
    def __init__(self, sandbox: SandboxEHR) -> None:
        self.sandbox = sandbox
        self._lock = threading.Lock()
        self._rng = random.Random(sandbox.faults.seed)
        self._burst_left = 0
        self._count = 0
        self._first_tries = 0  # requests that did not follow a 429 (throttle_pages_every counts these)
        self._last_throttled = False
        self._form = 0
        self.injected: dict[str, int] = {}

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    def _note(self, kind: str) -> None:
        self.injected[kind] = self.injected.get(kind, 0) + 1

    def before_auth(self) -> None:
        """Counts FHIR requests; every Nth makes every issued token expire now."""
        faults = self.sandbox.faults
        with self._lock:
            self._count += 1
            expire = faults.expire_tokens_every and self._count % faults.expire_tokens_every == 0
        if expire:
            self.sandbox.expire_tokens()
            with self._lock:
                self._note("token_expired")

    def before_answer(self) -> Injected | None:
        """An authorised FHIR request: maybe slow, maybe refused with a 429 or a 5xx."""
        faults = self.sandbox.faults
        with self._lock:
            slow = self._chance(faults.slow_rate)
            throttle = False
            if self._burst_left > 0:
                self._burst_left -= 1
                throttle = True
            else:
                if not self._last_throttled:
                    self._first_tries += 1
                if (faults.throttle_every and self._count % faults.throttle_every == 0) or (
                        faults.throttle_pages_every and not self._last_throttled
                        and self._first_tries % faults.throttle_pages_every == 0) or \
                        self._chance(faults.throttle_rate):
                    self._burst_left = max(0, faults.throttle_burst - 1)
                    throttle = True
            self._last_throttled = throttle
            error = None if throttle or not self._chance(faults.error_rate) else \
                self._rng.choice(faults.error_statuses)
            form = faults.retry_after_forms[self._form % len(faults.retry_after_forms)] if throttle else ""
            if throttle:
                self._form += 1
                self._note(f"429_{form}")
            elif error:
                self._note(str(error))
            if slow:
                self._note("slow")
        if slow:
            time.sleep(faults.slow_s)
        if throttle:
            return Injected(429, _outcome("throttled", "too many requests"),
                            {"Retry-After": retry_after(form, faults.retry_after_s, time.time())})
        if error:
            return Injected(error, _outcome("transient", "temporary server problem"), {})
        return None

    def after_search(self, body: dict[str, Any]) -> Injected | None:
        """A 200 search page about to go out: maybe broken; and records change under the crawl."""
        faults = self.sandbox.faults
        with self._lock:
            outcome = self._chance(faults.outcome_rate)
            truncate = not outcome and self._chance(faults.truncate_rate)
            if outcome:
                self._note("outcome_in_200")
            if truncate:
                self._note("truncated")
        if outcome:
            return Injected(200, _outcome("exception", "search could not be completed"), {})
        if truncate:
            data = json.dumps(body).encode()
            return Injected(200, data[: max(1, len(data) // 2)], {})
        return None

    def after_page(self, resource_type: str) -> None:
        count = self.sandbox.faults.mutate_per_page
        if count:
            with self._lock:
                self._note("mutated")
            self.sandbox.mutate(resource_type, count, self._rng_for_mutation())

    def _rng_for_mutation(self) -> random.Random:
        with self._lock:
            return random.Random(self._rng.random())


def retry_after(form: str, seconds: int, now: float) -> str:
    """Retry-After in the three forms servers use: delta-seconds, HTTP-date, absolute epoch."""
    if form == "date":
        # HTTP-dates have whole seconds: round up so the wait is never shorter than asked.
        return formatdate(int(now) + seconds + 1, usegmt=True)
    if form == "epoch":
        return str(int(now) + seconds + 1)
    return str(seconds)


def _outcome(code: str, text: str) -> bytes:
    return json.dumps({"resourceType": "OperationOutcome",
                       "issue": [{"severity": "error", "code": code, "diagnostics": text}]}).encode()
