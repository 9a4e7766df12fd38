"""Bulk Data backfill: ``$export`` (system or Group) with ``_since`` and ``_type``.

Kick-off -> status polling that honours ``Retry-After`` (capped) -> NDJSON downloads streamed line by
line into the sink in small batches (memory stays bounded by one batch, whatever the file size).
The manifest's ``transactionTime`` is the next ``_since`` and becomes the types' poll watermark: the
Bulk Data IG says files SHALL include every matching resource modified up to that instant.

Tokens outlive nothing here: every request takes the current token from the refresher; a 401 forces
one refresh and one retry (a download restarts its file; the lines sent again carry the same
envelope ids, which downstream absorbs). A file URL that redirects (Oracle Health's 307 to storage)
is followed *without* the Authorization header, and a token is never sent to another origin.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from ehrbridge.auth.fhir_client import vendor_headers
from ehrbridge.auth.refresher import TokenRefresher
from ehrbridge.auth.token_endpoint import parse_retry_after
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.poll.calls import RETRYABLE_STATUSES
from ehrbridge.poll.limits import Deadline, full_jitter
from ehrbridge.poll.sink import ResourceSink

BATCH = 200


class BulkExportError(RuntimeError):
    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class BulkResult:
    transaction_time: str
    resources: dict[str, int] = field(default_factory=dict)
    errors: int = 0  # OperationOutcome lines in the manifest's error files
    requests: int = 0
    status_polls: int = 0


class BulkExporter:
    def __init__(self, tenant: TenantConfig, refresher: TokenRefresher, sink: ResourceSink, *,
                 http: httpx.Client | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time, max_retry_after_s: float = 120.0, max_attempts: int = 6,
                 timeout_s: float = 60.0, limiter: Any = None) -> None:
        if tenant.fhir_base_url is None:
            raise ValueError("tenant has no fhir_base_url")
        self.tenant, self.refresher, self.sink = tenant, refresher, sink
        self.base_url = str(tenant.fhir_base_url).rstrip("/")
        self.http = http or httpx.Client(timeout=httpx.Timeout(timeout_s, connect=5.0), follow_redirects=False)
        self.sleep, self.clock = sleep, clock
        self.max_retry_after_s, self.max_attempts = max_retry_after_s, max_attempts
        self._requests = 0
        # The tenant's rate limiter (TokenBucket / SharedRateLimiter): exports count against the same budget.
        self.limiter = limiter

    # ---- the three phases -----------------------------------------------------------------
    def export(self, types: Iterable[str], *, since: str | None = None, group_id: str | None = None,
               deadline: Deadline | None = None) -> BulkResult:
        """The whole export in one call, waiting through the status polls (the CLI)."""
        deadline = deadline or Deadline(None)
        status_url = self.kickoff(types, since=since, group_id=group_id, deadline=deadline)
        polls = 0
        while True:
            manifest, wait = self.check(status_url, deadline=deadline)
            polls += 1
            if manifest is not None:
                break
            if not deadline.allows(wait):
                raise BulkExportError("export not ready before the deadline")
            self.sleep(wait)
        result = BulkResult(transaction_time_of(manifest), status_polls=polls)
        for index in range(len(manifest.get("output") or [])):
            resource_type, count = self.download_output(manifest, index, deadline=deadline)
            result.resources[resource_type] = result.resources.get(resource_type, 0) + count
        token_needed = bool(manifest.get("requiresAccessToken", True))
        for item in manifest.get("error") or []:
            result.errors += self._count_lines(str(item["url"]), token_needed, deadline)
        result.requests = self._requests
        return result

    # ---- step by step (the poller spreads these over invocations) ------------------------------
    def kickoff(self, types: Iterable[str], *, since: str | None = None, group_id: str | None = None,
                deadline: Deadline | None = None) -> str:
        """Start an export; returns the status URL (Content-Location)."""
        params = {"_type": ",".join(types), "_outputFormat": "application/fhir+ndjson"}
        if since:
            params["_since"] = since
        path = f"Group/{group_id}/$export" if group_id else "$export"
        response = self._call(f"{self.base_url}/{path}", params=params, headers={"Prefer": "respond-async"},
                              ok=(202,), deadline=deadline or Deadline(None))
        location = response.headers.get("Content-Location")
        if not location:
            raise BulkExportError("kick-off answered 202 without Content-Location", status=202)
        return urljoin(self.base_url + "/", location)

    def check(self, status_url: str, *, deadline: Deadline | None = None) -> tuple[dict[str, Any] | None, float]:
        """(manifest, 0) when complete, else (None, seconds to wait: Retry-After, capped)."""
        response = self._call(status_url, ok=(200, 202), deadline=deadline or Deadline(None))
        if response.status_code == 200:
            try:
                manifest = response.json()
            except ValueError:
                raise BulkExportError("manifest is not JSON", status=200) from None
            transaction_time_of(manifest)
            return manifest, 0.0
        wait = parse_retry_after(response.headers.get("Retry-After"), self.clock(), self.max_retry_after_s)
        return None, wait if wait is not None else 10.0

    def download_output(self, manifest: dict[str, Any], index: int, *, deadline: Deadline | None = None
                        ) -> tuple[str, int]:
        item = (manifest.get("output") or [])[index]
        token_needed = bool(manifest.get("requiresAccessToken", True))
        return str(item.get("type")), self._download(str(item["url"]), token_needed, deadline or Deadline(None))

    def _download(self, url: str, token_needed: bool, deadline: Deadline) -> int:
        """Stream one NDJSON file into the sink, BATCH resources at a time."""
        delivered = 0
        with self._stream(url, token_needed, deadline) as response:
            batch: list[dict[str, Any]] = []
            for line in response.iter_lines():
                if not line.strip():
                    continue
                try:
                    batch.append(json.loads(line))
                except ValueError:
                    raise BulkExportError("bulk file has a line that is not JSON (truncated?)") from None
                if len(batch) >= BATCH:
                    self.sink.deliver(self.tenant, batch)
                    delivered += len(batch)
                    batch = []
            if batch:
                self.sink.deliver(self.tenant, batch)
                delivered += len(batch)
        return delivered

    def _count_lines(self, url: str, token_needed: bool, deadline: Deadline) -> int:
        with self._stream(url, token_needed, deadline) as response:
            return sum(1 for line in response.iter_lines() if line.strip())

    # ---- HTTP -----------------------------------------------------------------------------
    def _headers(self, *, token: bool, force_refresh: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/fhir+json", **vendor_headers(self.tenant)}
        if token:
            current = self.refresher.refresh(self.tenant, force=True, stale_access_token=force_refresh) \
                if force_refresh else self.refresher.get_token(self.tenant)
            headers["Authorization"] = f"Bearer {current.access_token.get_secret_value()}"
        return headers

    def _call(self, url: str, *, params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
              ok: tuple[int, ...], deadline: Deadline) -> httpx.Response:
        stale: str | None = None
        refreshed = False
        for attempt in range(1, self.max_attempts + 1):
            sent = {**self._headers(token=True, force_refresh=stale), **(headers or {})}
            stale = None
            try:
                self._take()
                response = self.http.get(url, params=params, headers=sent)
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code in ok:
                return response
            if response is not None and response.status_code == 401 and not refreshed:
                refreshed, stale = True, sent["Authorization"][7:]
                continue  # one refresh, one retry; not counted against the retry budget
            if response is not None and response.status_code not in RETRYABLE_STATUSES:
                raise BulkExportError(f"bulk request answered {response.status_code}", status=response.status_code)
            wait = parse_retry_after(response.headers.get("Retry-After"), self.clock(), self.max_retry_after_s) \
                if response is not None else None
            wait = wait if wait is not None else full_jitter(attempt)
            if attempt == self.max_attempts or not deadline.allows(wait):
                break
            self.sleep(wait)
        raise BulkExportError("bulk request failed after retries")

    def _stream(self, url: str, token_needed: bool, deadline: Deadline) -> Any:
        """GET a file as a stream; a redirect is followed once, without the Authorization header."""
        same_origin = _origin(url) == _origin(self.base_url)
        response = self._call_stream(url, token=token_needed and same_origin)
        if response.status_code in (301, 302, 303, 307, 308):
            location = urljoin(url, response.headers.get("Location", ""))
            response.close()
            response = self._call_stream(location, token=False)
        if response.status_code != 200:
            response.close()
            raise BulkExportError(f"bulk file answered {response.status_code}", status=response.status_code)
        return contextlib.closing(response)

    def _take(self) -> None:
        self._requests += 1
        if self.limiter is not None:
            self.limiter.acquire()

    def _call_stream(self, url: str, *, token: bool) -> httpx.Response:
        self._take()
        request = self.http.build_request("GET", url, headers={**self._headers(token=token),
                                                               "Accept": "application/fhir+ndjson"})
        response = self.http.send(request, stream=True)
        if response.status_code == 401 and token:
            stale = request.headers["Authorization"][7:]
            response.close()
            self._take()
            request = self.http.build_request("GET", url, headers={
                **self._headers(token=True, force_refresh=stale), "Accept": "application/fhir+ndjson"})
            response = self.http.send(request, stream=True)
        return response

    def close(self) -> None:
        self.http.close()


def transaction_time_of(manifest: dict[str, Any]) -> str:
    value = manifest.get("transactionTime")
    if not isinstance(value, str) or not value:
        raise BulkExportError("manifest has no transactionTime")
    return value


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc
