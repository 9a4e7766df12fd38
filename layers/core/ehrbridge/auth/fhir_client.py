"""The FHIR-call client other functions use: cached token, scope-aware, 401-safe, polite.

- Types the token was not granted (or that answered 403 before) are skipped without a call:
  a partial grant degrades coverage, it does not cause a retry loop.
- Tokens are refreshed on demand: every attempt (retries included) takes the token from the
  refresher, which refreshes it first when it is near expiry (single flight per tenant). A tenant
  whose tokens live 10-60 s is served this way, without waiting for the schedule or a 401.
- 401: count ``Unauthorized401`` (per tenant), refresh once through the same single-flight lock,
  retry once; a second 401 fails loudly (metric again, exception). 401 clusters alarm in CDK.
- 403: the type is recorded as denied for the tenant (state table), alerted, and not retried. A
  scheduled re-probe (the poller's, ``reload_coverage(probe=...)``) may ask once more; a 403 on it
  confirms the denial quietly (no second ``ResourceDenied``: the alarm fired when it was new).
- 429/5xx (per vendor profile) and network errors: bounded backoff honouring Retry-After.
- ``next`` links are followed as given, and only to the tenant's own FHIR origin (a token is
  never sent to another host). A link on another origin under the same base path is the classic
  server-behind-a-proxy mistake (the server names its internal address): it is re-based onto the
  tenant's base URL (``FhirLinkRebased``); any other foreign link is refused.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from ehrbridge.auth.refresher import TokenRefresher
from ehrbridge.auth.state import RefreshState
from ehrbridge.auth.token_endpoint import parse_retry_after
from ehrbridge.auth.tokens import CachedToken
from ehrbridge.contracts.envelope import ContractError
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.observability import emit_metric, logger, timed


class FhirCallError(RuntimeError):
    def __init__(self, message: str, *, status: int | None = None, resource_type: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.resource_type, self.code = status, resource_type, code


class ScopeNotGranted(FhirCallError):
    """The token does not cover this type (partial grant): skipped, no request made."""


class ResourceDenied(FhirCallError):
    """The server answered 403 for a type; recorded and skipped from now on."""


class UnauthorizedError(FhirCallError):
    """401 again after one refresh and one retry."""


def vendor_params(tenant: TenantConfig) -> dict[str, str]:
    """The profile's per-call query parameters, filled from the tenant's vendor_context."""
    out = {}
    for name, template in tenant.profile.extra_query_params.items():
        try:
            out[name] = template.format(**tenant.vendor_context)
        except KeyError as err:
            raise ContractError("tenant config", [f"vendor_context.{err.args[0]}: required by {tenant.vendor} "
                                                  f"for query parameter {name}"]) from None
    return out


def vendor_headers(tenant: TenantConfig) -> dict[str, str]:
    # Header values come from vendor_context, else the client id (Epic-Client-ID).
    return {name: tenant.vendor_context.get(name, tenant.client_id or "") for name in tenant.profile.extra_headers}


class FhirClient:
    def __init__(self, tenant: TenantConfig, refresher: TokenRefresher, *, state: RefreshState | None = None,
                 http: httpx.Client | None = None, sleep: Callable[[float], None] = time.sleep,
                 max_attempts: int = 3, max_retry_after_s: float = 30.0, timeout_s: float = 30.0) -> None:
        if tenant.fhir_base_url is None:
            raise ContractError("tenant config", ["fhir_base_url: required for FHIR calls"])
        self.tenant = tenant
        self.base_url = str(tenant.fhir_base_url).rstrip("/")
        self.refresher = refresher
        self.state = state if state is not None else refresher.state
        self.http = http or httpx.Client(timeout=httpx.Timeout(timeout_s, connect=5.0), follow_redirects=False)
        self.sleep = sleep
        self.max_attempts, self.max_retry_after_s = max_attempts, max_retry_after_s
        self._params = vendor_params(tenant)
        self._headers = {"Accept": "application/fhir+json", **vendor_headers(tenant)}
        self._server_denied: set[str] | None = None
        self._probing: set[str] = set()

    # ---- coverage -----------------------------------------------------------------
    def server_denied(self) -> set[str]:
        if self._server_denied is None:
            self._server_denied = set(self.state.status(self.tenant.tenant_id).server_denied_types)
        return self._server_denied

    def reload_coverage(self, probe: str | None = None) -> bool:
        """Read the server-denied types again (another process may have cleared or added one); ``probe``
        lets requests for that one denied type go out (a scheduled re-probe) until it is denied again.
        True if ``probe`` is recorded as denied (a re-probe is on)."""
        self._server_denied = None
        self._probing = set()
        if probe is None or probe not in self.server_denied():
            return False
        self.server_denied().discard(probe)
        self._probing.add(probe)
        return True

    def permitted(self, resource_type: str, needed: str = "rs", token: CachedToken | None = None) -> bool:
        token = token or self.refresher.get_token(self.tenant)
        return token.granted().allows(resource_type, needed) and resource_type not in self.server_denied()

    # ---- calls --------------------------------------------------------------------
    def search(self, resource_type: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        return self.request("GET", resource_type, params=params, resource_type=resource_type, needed="s").json()

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        return self.request("GET", f"{resource_type}/{resource_id}", resource_type=resource_type, needed="r").json()

    def pages(self, resource_type: str, params: dict[str, str] | None = None,
              max_pages: int = 1000) -> Iterator[dict[str, Any]]:
        """Search and follow ``next`` links opaquely (never rebuilt), bounded by ``max_pages``."""
        bundle = self.search(resource_type, params)
        for _ in range(max_pages):
            yield bundle
            next_url = next((link.get("url") for link in bundle.get("link", []) if link.get("relation") == "next"),
                            None)
            if not next_url:
                return
            bundle = self.request("GET", next_url, resource_type=resource_type, needed="s").json()
        raise FhirCallError(f"more than {max_pages} pages", resource_type=resource_type, code="too_many_pages")

    def request(self, method: str, path_or_url: str, *, params: dict[str, str] | None = None,
                resource_type: str | None = None, needed: str = "rs") -> httpx.Response:
        tenant_id = self.tenant.tenant_id
        token = self.refresher.get_token(self.tenant)
        if resource_type is not None and not self.permitted(resource_type, needed, token):
            emit_metric("ResourceSkipped", tenant=tenant_id, resource_type=resource_type)
            raise ScopeNotGranted(f"{resource_type} not granted to tenant {tenant_id}; skipped",
                                  resource_type=resource_type, code="not_granted")
        url, query = self._target(path_or_url, params)
        response, token = self._send(method, url, query, token, resource_type)
        if response.status_code == 401:
            emit_metric("Unauthorized401", tenant=tenant_id)
            logger.warning("401 from FHIR server; refreshing once", extra={"tenant_id": tenant_id,
                                                                           "resource_type": resource_type})
            token = self.refresher.refresh(self.tenant, force=True,
                                           stale_access_token=token.access_token.get_secret_value())
            response, token = self._send(method, url, query, token, resource_type)
            if response.status_code == 401:
                emit_metric("Unauthorized401", tenant=tenant_id)
                emit_metric("UnauthorizedAfterRefresh", tenant=tenant_id)
                logger.error("401 after refresh", extra={"tenant_id": tenant_id, "resource_type": resource_type})
                raise UnauthorizedError(f"401 after one refresh for tenant {tenant_id}", status=401,
                                        resource_type=resource_type, code="unauthorized")
        if response.status_code == 403 and resource_type is not None and resource_type in self._probing:
            self._probing.discard(resource_type)
            self.state.mark_server_denied(tenant_id, resource_type)  # normally still recorded: a no-op
            self.server_denied().add(resource_type)
            logger.info("403 again on re-probe: resource type stays denied",
                        extra={"tenant_id": tenant_id, "resource_type": resource_type})
            raise ResourceDenied(f"{resource_type} still denied (403) for tenant {tenant_id}", status=403,
                                 resource_type=resource_type, code="forbidden")
        if response.status_code == 403 and resource_type is not None:
            self.state.mark_server_denied(tenant_id, resource_type)
            self.server_denied().add(resource_type)
            emit_metric("ResourceDenied", tenant=tenant_id, resource_type=resource_type)
            logger.warning("403: resource type denied; skipped from now on",
                           extra={"tenant_id": tenant_id, "resource_type": resource_type})
            raise ResourceDenied(f"{resource_type} denied (403) for tenant {tenant_id}", status=403,
                                 resource_type=resource_type, code="forbidden")
        if response.status_code >= 400:
            raise FhirCallError(f"FHIR server answered {response.status_code}", status=response.status_code,
                                resource_type=resource_type, code=_outcome_code(response))
        return response

    # ---- internals ----------------------------------------------------------------
    def _target(self, path_or_url: str, params: dict[str, str] | None) -> tuple[str, dict[str, str] | None]:
        if path_or_url.startswith(("http://", "https://")):
            if _origin(path_or_url) != _origin(self.base_url):
                rebased = rebase_link(path_or_url, self.base_url)
                if rebased is None:
                    raise FhirCallError("next link points to another host and path; not sending the token there",
                                        code="foreign_link")
                emit_metric("FhirLinkRebased", tenant=self.tenant.tenant_id)
                return rebased, None
            return path_or_url, None  # opaque: as given, no parameters added
        return f"{self.base_url}/{path_or_url.lstrip('/')}", {**self._params, **(params or {})}

    def _send(self, method: str, url: str, query: dict[str, str] | None, token: CachedToken,
              resource_type: str | None) -> tuple[httpx.Response, CachedToken]:
        """Send with bounded retries; returns the response and the token that was sent with it."""
        retryable = self.tenant.profile.retryable_statuses
        dimension = {"resource_type": resource_type} if resource_type else {}
        for attempt in range(1, self.max_attempts + 1):
            retry_after: float | None = None
            if attempt > 1:
                # A backoff can outlast a short-lived token: take a current one (refreshed on demand).
                token = self.refresher.get_token(self.tenant)
            headers = {**self._headers, "Authorization": f"Bearer {token.access_token.get_secret_value()}"}
            try:
                with timed("FhirCallLatency", tenant=self.tenant.tenant_id, **dimension):
                    response = self.http.request(method, url, params=query, headers=headers)
            except httpx.HTTPError as err:
                emit_metric("FhirCallNetworkError", tenant=self.tenant.tenant_id, **dimension)
                if attempt == self.max_attempts:
                    raise FhirCallError(f"FHIR server unreachable ({type(err).__name__})",
                                        resource_type=resource_type, code="network") from None
            else:
                emit_metric(f"FhirCall{response.status_code // 100}xx", tenant=self.tenant.tenant_id, **dimension)
                if response.status_code not in retryable or attempt == self.max_attempts:
                    return response, token
                retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time(),
                                                self.max_retry_after_s)
            delay = retry_after if retry_after is not None else random.uniform(0, min(8.0, 0.5 * 2 ** attempt))
            logger.info("FHIR call retried", extra={"tenant_id": self.tenant.tenant_id, "attempt": attempt,
                                                    "resource_type": resource_type, "delay_s": round(delay, 2)})
            self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self.http.close()


def rebase_link(url: str, base_url: str) -> str | None:
    """``url`` moved onto ``base_url``'s origin when its path lies under the same base path, else None.

    A server behind a reverse proxy often builds links from its own address (``http://10.0.0.5:8080/fhir
    ?_getpages=...``) while clients reach it as ``https://ehr.example/fhir``. Sending the request to the
    configured origin keeps the token there; the path and the opaque query are kept as given.
    """
    link, base = urlsplit(url), urlsplit(base_url)
    base_path = base.path.rstrip("/")
    if link.path.rstrip("/") != base_path and not link.path.startswith(base_path + "/"):
        return None
    return urlunsplit((base.scheme, base.netloc, link.path, link.query, ""))


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _outcome_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
        return str(body["issue"][0].get("code"))[:64]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
