"""The token-endpoint client: discovery, client_credentials (or refresh_token) with a fresh
assertion per attempt, and polite bounded retries.

Retries: the vendor profile's retryable statuses (429, 5xx, Epic's flaky bare 400) with
exponential backoff and full jitter; ``Retry-After`` parsed as delta-seconds or HTTP-date and
capped. If the server asks us to wait longer than the remaining budget we stop and report the
wait (the refresher persists it so the next scheduled run does not hammer the endpoint either).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import httpx
from pydantic import SecretStr

from ehrbridge.auth.assertion import ASSERTION_TYPE, build_client_assertion
from ehrbridge.auth.credentials import CredentialsError, TenantCredentials
from ehrbridge.auth.keys import load_private_key
from ehrbridge.auth.scopes import ScopeVersion
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.observability import emit_metric, logger

# OAuth errors that no retry can fix.
_DEFINITIVE_ERRORS = frozenset({"invalid_client", "invalid_grant", "unauthorized_client", "invalid_scope",
                                "unsupported_grant_type"})
DISCOVERY_TTL_S = 3600.0


class TokenEndpointError(RuntimeError):
    def __init__(self, message: str, *, status: int | None = None, error: str | None = None,
                 retry_after: float | None = None, description: str | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.retry_after = retry_after
        self.description = description  # the server's error_description: tells invalid_client cases apart
        self.url = url  # which endpoint (discovery or token) failed

    @property
    def reason(self) -> str:
        """Short PHI/secret-free reason for logs and the status record."""
        return self.error or (f"http_{self.status}" if self.status else "network")

    @property
    def detail(self) -> str:
        """For a person: the reason, the server's description and the URL that was called."""
        text = self.reason
        if self.description:
            text += f": {self.description}"
        elif not self.error:
            text += f": {self}"
        if self.url and self.url not in text:
            text += f" ({self.url})"
        return text


class TokenEndpointThrottled(TokenEndpointError):
    """The token endpoint (or our own budget for it) says wait ``retry_after`` seconds."""


@dataclass(frozen=True)
class SmartConfiguration:
    token_endpoint: str
    auth_methods: tuple[str, ...] = ()
    signing_algs: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    scopes_supported: tuple[str, ...] = ()
    revocation_endpoint: str | None = None  # RFC 7009, where the vendor offers one

    def scope_version(self) -> ScopeVersion | None:
        if "permission-v2" in self.capabilities:
            return 2
        if "permission-v1" in self.capabilities:
            return 1
        return None


@dataclass
class TokenResponse:
    access_token: SecretStr
    token_type: str
    expires_in: float
    scope: str
    issued_at: float
    refresh_token: SecretStr | None = None
    notes: list[str] = field(default_factory=list)  # e.g. "expires_in missing"


def parse_retry_after(value: str | None, now: float, cap_s: float) -> float | None:
    """Delta-seconds or HTTP-date; epoch timestamps (bulk-data-server) too. Always capped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
        if seconds > 10 * 365 * 86400:  # an absolute epoch, not a delta
            seconds -= now
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError):
            return None
    return min(max(seconds, 0.0), cap_s)


class TokenClient:
    def __init__(self, http: httpx.Client | None = None, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time, max_attempts: int = 4, base_delay_s: float = 0.5,
                 max_delay_s: float = 8.0, budget_s: float = 20.0, max_retry_after_s: float = 120.0,
                 timeout_s: float = 10.0) -> None:
        self.http = http or httpx.Client(timeout=httpx.Timeout(timeout_s, connect=5.0), follow_redirects=False)
        self.sleep, self.clock = sleep, clock
        self.max_attempts, self.base_delay_s, self.max_delay_s = max_attempts, base_delay_s, max_delay_s
        self.budget_s, self.max_retry_after_s = budget_s, max_retry_after_s
        self._discovery: dict[str, tuple[float, SmartConfiguration]] = {}
        self._lock = threading.Lock()

    # ---- discovery ----------------------------------------------------------------
    def discover(self, fhir_base_url: str) -> SmartConfiguration:
        base = fhir_base_url.rstrip("/")
        with self._lock:
            cached = self._discovery.get(base)
        if cached and time.monotonic() - cached[0] < DISCOVERY_TTL_S:
            return cached[1]
        url = f"{base}/.well-known/smart-configuration"
        try:
            response = self.http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as err:
            raise TokenEndpointError(f"smart-configuration unreachable ({type(err).__name__})", url=url) from None
        if response.status_code != 200:
            raise TokenEndpointError(f"smart-configuration answered {response.status_code}",
                                     status=response.status_code, url=url)
        try:
            data = response.json()
            config = SmartConfiguration(
                token_endpoint=str(data["token_endpoint"]),
                auth_methods=tuple(data.get("token_endpoint_auth_methods_supported", ())),
                signing_algs=tuple(data.get("token_endpoint_auth_signing_alg_values_supported", ())),
                capabilities=tuple(data.get("capabilities", ())),
                scopes_supported=tuple(data.get("scopes_supported", ())),
                revocation_endpoint=str(data["revocation_endpoint"]) if data.get("revocation_endpoint") else None)
        except (ValueError, KeyError, TypeError):
            raise TokenEndpointError("smart-configuration has no token_endpoint", url=url) from None
        with self._lock:
            self._discovery[base] = (time.monotonic(), config)
        return config

    def token_url(self, tenant: TenantConfig) -> str:
        if tenant.token_url is not None:
            return str(tenant.token_url)
        if tenant.fhir_base_url is None:
            raise TokenEndpointError(f"tenant {tenant.tenant_id} has neither token_url nor fhir_base_url")
        return self.discover(str(tenant.fhir_base_url)).token_endpoint

    def scope_version(self, tenant: TenantConfig) -> ScopeVersion:
        """What the server advertises (permission-v1/-v2), else the vendor's documented default."""
        if tenant.fhir_base_url is not None:
            try:
                advertised = self.discover(str(tenant.fhir_base_url)).scope_version()
            except TokenEndpointError:
                advertised = None
            if advertised is not None:
                return advertised
        return tenant.profile.default_scope_version

    # ---- token request ------------------------------------------------------------
    def request_token(self, tenant: TenantConfig, credentials: TenantCredentials, scopes: list[str], *,
                      token_url: str | None = None) -> TokenResponse:
        url = token_url or self.token_url(tenant)
        profile = tenant.profile
        started = self.clock()
        deadline = started + self.budget_s
        attempt = 0
        while True:
            attempt += 1
            form, auth, _kid = self._form(tenant, credentials, scopes, url)
            issued_at = self.clock()
            try:
                response = self.http.post(url, data=form, auth=auth, headers={"Accept": "application/json"})
            except httpx.HTTPError as err:
                failure = TokenEndpointError(f"token endpoint unreachable ({type(err).__name__})", url=url)
                retry_after = None
            else:
                emit_metric("TokenEndpointResponse", tenant=tenant.tenant_id, endpoint=f"token_{response.status_code}")
                if response.status_code == 200:
                    return self._parse(tenant, response, scopes, issued_at)
                failure, retry_after = self._failure(response, url)
                if response.status_code not in profile.token_retryable_statuses or failure.error in _DEFINITIVE_ERRORS:
                    raise failure
            now = self.clock()
            delay = retry_after if retry_after is not None else self._backoff(attempt)
            logger.warning("token request failed", extra={"tenant_id": tenant.tenant_id, "attempt": attempt,
                                                          "status_code": failure.status, "code": failure.reason,
                                                          "delay_s": round(delay, 2)})
            if attempt >= self.max_attempts or now + delay > deadline:
                if retry_after is not None or failure.status == 429:
                    raise TokenEndpointThrottled(str(failure), status=failure.status, error=failure.error,
                                                 retry_after=retry_after if retry_after is not None else delay,
                                                 description=failure.description, url=url)
                raise failure
            self.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        # Full jitter: spreads tenants that failed together instead of retrying in lock-step.
        return random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)))

    def _form(self, tenant: TenantConfig, credentials: TenantCredentials, scopes: list[str],
              url: str) -> tuple[dict[str, str], tuple[str, str] | None, str | None]:
        if not tenant.client_id:
            raise CredentialsError(f"tenant {tenant.tenant_id} has no client_id")
        form: dict[str, str] = {"scope": " ".join(scopes)}
        if credentials.refresh_token is not None:
            form.update(grant_type="refresh_token", refresh_token=credentials.refresh_token.get_secret_value())
        else:
            form["grant_type"] = "client_credentials"
        key = credentials.active_key()
        methods = tenant.profile.token_auth_methods
        if key is not None and "private_key_jwt" in methods:
            signing_key = load_private_key(key.private_key_pem.get_secret_value(), key.algorithm)
            # A new assertion per attempt: fresh jti and exp, so a retry is never a replay.
            # aud is the token URL; a site behind a proxy may have allow-listed another (Epic).
            audience = tenant.vendor_context.get("assertion_audience", url)
            form.update(client_assertion_type=ASSERTION_TYPE, client_assertion=build_client_assertion(
                key=signing_key, kid=key.kid, client_id=tenant.client_id, audience=audience,
                algorithm=key.algorithm, now=self.clock()))
            return form, None, key.kid
        if credentials.client_secret is not None and "client_secret_basic" in methods:
            return form, (tenant.client_id, credentials.client_secret.get_secret_value()), None
        raise CredentialsError(f"tenant {tenant.tenant_id}: no usable credentials for {tenant.vendor} "
                               f"(supported: {', '.join(methods)})")

    def _failure(self, response: httpx.Response, url: str) -> tuple[TokenEndpointError, float | None]:
        error = description = None
        try:
            body = response.json()
            if isinstance(body, dict) and isinstance(body.get("error"), str):
                error = body["error"][:64]
            if isinstance(body, dict) and isinstance(body.get("error_description"), str):
                # Server text about our request (never about a patient); bounded and one line.
                description = " ".join(body["error_description"].split())[:200] or None
        except ValueError:
            pass
        retry_after = parse_retry_after(response.headers.get("Retry-After"), self.clock(), self.max_retry_after_s)
        kind = TokenEndpointThrottled if response.status_code == 429 else TokenEndpointError
        return kind(f"token endpoint answered {response.status_code}" + (f" ({error})" if error else ""),
                    status=response.status_code, error=error, retry_after=retry_after, description=description,
                    url=url), retry_after

    # ---- revocation (RFC 7009) ------------------------------------------------------
    def revoke(self, tenant: TenantConfig, credentials: TenantCredentials, access_token: str) -> str:
        """Revoke an access token where the server advertises ``revocation_endpoint``.

        Returns ``revoked`` or ``not_supported``; raises TokenEndpointError when the server refused.
        Backend-services tokens are short-lived, so a vendor without revocation is not an error:
        the token dies at its expiry.
        """
        if tenant.fhir_base_url is None:
            return "not_supported"
        endpoint = self.discover(str(tenant.fhir_base_url)).revocation_endpoint
        if not endpoint:
            return "not_supported"
        form, auth, _kid = self._form(tenant, credentials, [], self.token_url(tenant))
        data = {k: v for k, v in form.items() if k.startswith("client_assertion")}
        data.update(token=access_token, token_type_hint="access_token")  # noqa: S106 - RFC 7009 hint, not a secret
        try:
            response = self.http.post(endpoint, data=data, auth=auth, headers={"Accept": "application/json"})
        except httpx.HTTPError as err:
            raise TokenEndpointError(f"revocation endpoint unreachable ({type(err).__name__})",
                                     url=endpoint) from None
        if response.status_code == 200:  # RFC 7009: 200 also for an unknown or expired token
            return "revoked"
        raise self._failure(response, endpoint)[0]

    def _parse(self, tenant: TenantConfig, response: httpx.Response, scopes: list[str],
               issued_at: float) -> TokenResponse:
        try:
            body = response.json()
            access_token = body["access_token"]
            if not isinstance(access_token, str) or not access_token:
                raise KeyError("access_token")
        except (ValueError, KeyError, TypeError):
            raise TokenEndpointError("token response has no access_token", status=200) from None
        notes: list[str] = []
        token_type = str(body.get("token_type", "bearer"))
        if token_type.lower() != "bearer":
            raise TokenEndpointError(f"unsupported token_type {token_type[:20]}", status=200)
        try:
            expires_in = float(body["expires_in"])
        except (KeyError, TypeError, ValueError):
            # Required by the spec; without it a client would treat the token as eternal.
            expires_in = float(min(tenant.profile.token_lifetime_s, 300))
            notes.append("expires_in missing")
        scope = body.get("scope")
        if not isinstance(scope, str):
            scope = " ".join(scopes)  # RFC 6749 §5.1: omitted means as requested
            notes.append("scope missing")
        refresh = body.get("refresh_token")
        return TokenResponse(access_token=SecretStr(access_token), token_type=token_type, expires_in=expires_in,
                             scope=scope, issued_at=issued_at,
                             refresh_token=SecretStr(refresh) if isinstance(refresh, str) and refresh else None,
                             notes=notes)

    def close(self) -> None:
        self.http.close()

