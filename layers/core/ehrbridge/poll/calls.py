"""One FHIR page, politely: token bucket, bounded retries inside a deadline, strict body checks.

Built on the SMART client (``ehrbridge.auth.fhir_client.FhirClient``), which keeps owning tokens,
scope checks, 401 -> one refresh -> one retry (not counted as a retry here) and 403 -> the type is
denied for the tenant. The client is run with ``max_attempts=1``; retries live here because only
here is the deadline known. Per-call metrics come from httpx event hooks, so every request the
client makes (including its 401 retry) is counted.

Retried: 408, 429, 500, 502, 503, 504 (plus the vendor profile's), network errors and timeouts,
a 200 whose body is not valid JSON (truncated) and a 200 carrying an OperationOutcome instead of a
Bundle. ``Retry-After`` (delta-seconds, HTTP-date or epoch) is honoured, capped; otherwise full
jitter. When the next wait would not fit before the deadline, ``OutOfTime`` tells the caller to save
its cursor and come back later instead of sleeping through the Lambda timeout.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from ehrbridge.auth.fhir_client import FhirCallError, FhirClient
from ehrbridge.auth.refresher import TokenRefresher
from ehrbridge.auth.token_endpoint import parse_retry_after
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.poll.limits import Deadline, SharedRateLimiter, TokenBucket, full_jitter
from ehrbridge.poll.metrics import PollMetrics

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
SESSION_EXPIRED_STATUSES = frozenset({410})


class OutOfTime(Exception):
    """The next attempt (or wait) would not finish before the deadline."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"out of time; retry in {wait_s:.1f} s")
        self.wait_s = wait_s


class PageFailed(FhirCallError):
    """Retries exhausted (or a non-retryable answer); the window stays open, nothing half-ingested."""


class SessionExpired(FhirCallError):
    """The server's paging session is gone (Epic 4113, HTTP 410): restart the window."""


@dataclass(frozen=True)
class Page:
    bundle: dict[str, Any]
    server_time: str | None  # Bundle meta.lastUpdated, else the Date header (ISO, UTC)


def effective_rate(tenant: TenantConfig) -> float:
    """Requests per second: the tenant's own setting if given, else the vendor profile's default."""
    if "requests_per_second" in tenant.rate_limits.model_fields_set:
        return tenant.rate_limits.requests_per_second
    return tenant.profile.requests_per_second


class PollCalls:
    def __init__(self, tenant: TenantConfig, refresher: TokenRefresher, metrics: PollMetrics, *,
                 bucket: TokenBucket | SharedRateLimiter | None = None, http: httpx.Client | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, max_attempts: int = 6, base_delay_s: float = 0.5,
                 max_delay_s: float = 30.0, max_retry_after_s: float = 120.0, timeout_s: float = 30.0,
                 call_budget_s: float | None = None) -> None:
        self.tenant, self.metrics = tenant, metrics
        self.sleep, self.clock, self.rng = sleep, clock, rng or random.Random()
        self.max_attempts, self.base_delay_s, self.max_delay_s = max_attempts, base_delay_s, max_delay_s
        self.max_retry_after_s, self.timeout_s = max_retry_after_s, timeout_s
        # Time one call may take (start it only if it fits before the deadline): the HTTP timeout.
        self.call_budget_s = timeout_s if call_budget_s is None else call_budget_s
        self.bucket = bucket or TokenBucket(effective_rate(tenant), sleep=sleep)
        self.retryable = RETRYABLE_STATUSES | tenant.profile.retryable_statuses
        self._label = ("search", "-")
        self._last: httpx.Response | None = None
        self._metadata: dict[str, Any] | None = None
        # Per type: does the server apply _lastUpdated (asked once when the statement does not say)?
        self.last_updated_probes: dict[str, bool] = {}
        self.sort_refused: set[str] = set()  # types whose searches the server refused to sort (400)
        self.http = http or httpx.Client(timeout=httpx.Timeout(timeout_s, connect=5.0), follow_redirects=False)
        self.http.event_hooks["request"].append(self._on_request)
        self.http.event_hooks["response"].append(self._on_response)
        self.client = FhirClient(tenant, refresher, http=self.http, max_attempts=1, timeout_s=timeout_s)
        self.base_url = self.client.base_url

    # ---- httpx hooks: every request the SMART client sends is counted and timed ---------------
    def _on_request(self, request: httpx.Request) -> None:
        request.extensions["ehrbridge_started"] = time.perf_counter()

    def _on_response(self, response: httpx.Response) -> None:
        started = response.request.extensions.get("ehrbridge_started", time.perf_counter())
        self._last = response
        self.metrics.call(*self._label, response.status_code, (time.perf_counter() - started) * 1000)

    def label(self, endpoint: str, resource_type: str) -> None:
        """Metric dimensions for calls made through ``self.http`` by someone else (the bulk exporter)."""
        self._label = (endpoint, resource_type)

    # ---- the one operation --------------------------------------------------------------
    def get_page(self, path_or_url: str, params: dict[str, str] | None, resource_type: str, *,
                 endpoint: str = "search", deadline: Deadline | None = None, coverage: bool = True) -> Page:
        """``coverage=False``: an auxiliary call (type history) whose 403 must not mark the type denied."""
        deadline = deadline or Deadline(None)
        self._label = (endpoint, resource_type)
        attempt = 0
        while True:
            wait = self.bucket.wait_time()
            if not deadline.allows(wait + self.call_budget_s):
                raise OutOfTime(wait)
            self.metrics.bucket_wait(endpoint, resource_type, self.bucket.acquire())
            attempt += 1
            self._last = None
            started = time.perf_counter()
            try:
                response = self.client.request("GET", path_or_url, params=params,
                                               resource_type=resource_type if coverage else None, needed="s")
                return self._page(response, resource_type)
            except FhirCallError as err:
                if err.code == "network":
                    timeout = isinstance(err.__context__, httpx.TimeoutException)
                    self.metrics.call(endpoint, resource_type, None, (time.perf_counter() - started) * 1000,
                                      timeout=timeout)
                    reason = "timeout" if timeout else "network"
                elif err.status in SESSION_EXPIRED_STATUSES or err.code == "expired":
                    raise SessionExpired("paging session expired", status=err.status, resource_type=resource_type,
                                         code="session_expired") from None
                elif err.status in self.retryable or err.code in ("invalid_json", "outcome_in_200"):
                    reason = err.code or str(err.status)
                else:
                    raise
            retry_after = self._retry_after()
            delay = retry_after if retry_after is not None else full_jitter(
                attempt, base_s=self.base_delay_s, cap_s=self.max_delay_s, rng=self.rng)
            if attempt >= self.max_attempts:
                raise PageFailed(f"{resource_type} page failed after {attempt} attempts ({reason})",
                                 status=self._last.status_code if self._last is not None else None,
                                 resource_type=resource_type, code=reason)
            if not deadline.allows(delay + self.call_budget_s):
                raise OutOfTime(delay)
            self.metrics.retry(endpoint, resource_type, delay)
            self.sleep(delay)

    def _retry_after(self) -> float | None:
        if self._last is None:
            return None
        return parse_retry_after(self._last.headers.get("Retry-After"), self.clock(), self.max_retry_after_s)

    def _page(self, response: httpx.Response, resource_type: str) -> Page:
        try:
            body = json.loads(response.content)
        except (ValueError, UnicodeDecodeError):
            raise FhirCallError("page is not valid JSON (truncated?)", status=response.status_code,
                                resource_type=resource_type, code="invalid_json") from None
        if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
            kind = body.get("resourceType") if isinstance(body, dict) else type(body).__name__
            code = "outcome_in_200" if kind == "OperationOutcome" else "invalid_json"
            raise FhirCallError(f"200 without a Bundle ({kind})", status=response.status_code,
                                resource_type=resource_type, code=code)
        for entry in body.get("entry") or []:
            if not isinstance(entry, dict):
                raise FhirCallError("malformed Bundle entry", status=response.status_code,
                                    resource_type=resource_type, code="invalid_json")
            resource = entry.get("resource") or {}
            if (resource.get("resourceType") == "OperationOutcome" and (entry.get("search") or {}).get("mode")
                    != "outcome" and _has_error(resource)):
                raise FhirCallError("OperationOutcome error inside a 200 Bundle", status=response.status_code,
                                    resource_type=resource_type, code="outcome_in_200")
        return Page(body, _server_time(body, response))

    def metadata(self) -> dict[str, Any] | None:
        """The CapabilityStatement (no auth needed by spec), or None if the server will not say.

        Fetched once per client (the client lives as long as the execution environment and the tenant's
        config), not once per job.
        """
        if self._metadata is None:
            self._label = ("metadata", "-")
            try:
                response = self.http.get(f"{self.base_url}/metadata", headers={"Accept": "application/fhir+json"})
                body = response.json() if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                body = None
            self._metadata = body if isinstance(body, dict) else {}
        return self._metadata or None

    def close(self) -> None:
        self.http.close()


def _has_error(outcome: dict[str, Any]) -> bool:
    return any(issue.get("severity") in ("error", "fatal") for issue in outcome.get("issue") or []
               if isinstance(issue, dict))


def _server_time(bundle: dict[str, Any], response: httpx.Response) -> str | None:
    stamp = (bundle.get("meta") or {}).get("lastUpdated")
    if isinstance(stamp, str) and stamp:
        return stamp
    date = response.headers.get("Date")
    if date:
        try:
            return parsedate_to_datetime(date).astimezone().isoformat()
        except (TypeError, ValueError, IndexError):
            return None
    return None
