"""Token lifecycle per tenant: refresh before expiry, single flight, budgets and backoff.

- Due when ``remaining <= max(120 s, 10 % of lifetime) + jitter``: the server's ``expires_in``
  drives it (Epic ~3600 s, Oracle ~570 s, generic 300 s), never a vendor guess.
- One refresh per tenant at a time: a conditional-write lease in the state table. A caller that
  loses the race waits for the winner's token instead of asking the endpoint again.
- A 429's ``Retry-After`` becomes ``not_before`` in the state table, so the next scheduled run
  does not storm the endpoint; our own per-minute budget (athena: 50/min) is checked first.
- The schedule keeps long-lived tokens warm; a tenant whose tokens live shorter than the schedule
  can bridge (10-60 s are seen in the field) is left to on-demand refresh by the FHIR client
  (``get_token``: refreshed when near expiry, single flight per tenant). Token health is judged
  relative to each tenant's lifetime: ``TokenLifetimeRemainingRatio`` (remaining / lifetime, 0..1)
  per kept-warm tenant after each scheduled run; on-demand tenants count ``TokenOnDemand`` instead.
- Backend clients re-run client_credentials; where an app holds a refresh token (user-facing
  vendor apps) the refresh grant is used and the rotated refresh token stored.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pydantic import SecretStr

from ehrbridge.auth.credentials import CredentialsError, CredentialStore
from ehrbridge.auth.keys import KeyMaterialError
from ehrbridge.auth.scopes import ScopeError, resource_permissions, scopes_for
from ehrbridge.auth.state import RefreshState
from ehrbridge.auth.token_endpoint import TokenClient, TokenEndpointError, TokenEndpointThrottled
from ehrbridge.auth.tokens import REFRESH_SCHEDULE_S, CachedToken, TokenStore, kept_warm
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.observability import MetricUnit, emit_metric, logger

# Metric names the CDK alarms and dashboards read (infra/ uses the same strings).
REMAINING_RATIO_METRIC = "TokenLifetimeRemainingRatio"
ON_DEMAND_METRIC = "TokenOnDemand"


class RefreshFailed(RuntimeError):
    def __init__(self, tenant_id: str, reason: str, *, retry_after: float | None = None,
                 detail: str | None = None) -> None:
        super().__init__(f"token refresh failed for tenant {tenant_id}: {detail or reason}")
        self.tenant_id, self.reason, self.retry_after = tenant_id, reason, retry_after
        # For a person: the server's error_description and the URL called (reason is the short code).
        self.detail = detail or reason


class RefreshThrottled(RefreshFailed):
    pass


@dataclass
class RefreshSummary:
    refreshed: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    throttled: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    on_demand: list[str] = field(default_factory=list)  # lifetime shorter than the schedule can keep warm

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in vars(self).items()}


def stable_fraction(*parts: str) -> float:
    """A per-tenant number in [0, 1): spreads tenants deterministically (no thundering herd)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def smart_enabled(tenant: TenantConfig) -> bool:
    return bool(tenant.workflows and tenant.client_id and tenant.fhir_base_url)


class TokenRefresher:
    def __init__(self, *, credentials: CredentialStore, tokens: TokenStore, state: RefreshState,
                 token_client: TokenClient | None = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, lease_s: float = 90.0, peer_wait_s: float = 15.0,
                 owner: str | None = None, schedule_s: float = REFRESH_SCHEDULE_S) -> None:
        self.credentials, self.tokens, self.state = credentials, tokens, state
        self.schedule_s = schedule_s  # period of the scheduled refresh run
        self.token_client = token_client or TokenClient(clock=clock, sleep=sleep)
        self.clock, self.sleep = clock, sleep
        # The lease outlives a whole token request with its retries (budget 20 s + 4 x 10 s timeouts),
        # so a slow holder is never overtaken by a second request.
        self.lease_s, self.peer_wait_s = lease_s, peer_wait_s
        self.owner = owner or uuid.uuid4().hex
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # ---- public API ---------------------------------------------------------------
    def requested_scopes(self, tenant: TenantConfig) -> list[str]:
        return scopes_for(tenant.workflows, self.token_client.scope_version(tenant))

    def jitter_s(self, tenant_id: str, lifetime_s: float) -> float:
        return stable_fraction(tenant_id, "refresh") * min(60.0, 0.05 * lifetime_s)

    def get_token(self, tenant: TenantConfig) -> CachedToken:
        """A valid token for a FHIR call: the cached one, refreshed first if it is due."""
        current = self.tokens.get(tenant.tenant_id)
        now = self.clock()
        if current is not None and current.is_valid(now) and not current.refresh_due(now):
            return current
        try:
            return self.refresh(tenant)
        except RefreshFailed:
            if current is not None and current.is_valid(self.clock()):
                return current  # still usable; the scheduled refresher keeps trying
            raise

    def refresh(self, tenant: TenantConfig, *, force: bool = False, stale_access_token: str | None = None,
                jitter_s: float = 0.0) -> CachedToken:
        """Refresh unless someone already did. ``force`` (after a 401) ignores due-ness, but a token
        that differs from ``stale_access_token`` counts as already refreshed."""
        tenant_id = tenant.tenant_id
        with self._local_lock(tenant_id):
            current = self.tokens.get(tenant_id, fresh=True)
            if self._usable(current, force, stale_access_token, jitter_s):
                return current  # type: ignore[return-value]
            status = self.state.status(tenant_id)
            now = self.clock()
            if status.not_before is not None and now < status.not_before:
                raise RefreshThrottled(tenant_id, "token endpoint backoff", retry_after=status.not_before - now)
            if not self.state.acquire(tenant_id, self.owner, self.lease_s):
                return self._wait_for_peer(tenant, current, force, stale_access_token)
            try:
                current = self.tokens.get(tenant_id, fresh=True)  # the lock holder before us may have refreshed
                if self._usable(current, force, stale_access_token, jitter_s):
                    return current  # type: ignore[return-value]
                return self._refresh_locked(tenant)
            finally:
                self.state.release(tenant_id, self.owner)

    def refresh_due(self, tenants: Iterable[TenantConfig], *, deadline: float | None = None,
                    spread_s: float = 20.0) -> RefreshSummary:
        """The scheduled run: refresh every SMART tenant whose token is due, spread over ``spread_s``."""
        summary = RefreshSummary()
        start = self.clock()
        deadline = deadline if deadline is not None else start + 50.0
        enabled = [t for t in tenants if smart_enabled(t)]
        # Jitter across tenants: a stable offset each, so tenants sharing a vendor endpoint do not
        # all hit it in the same second of the minute.
        ordered = sorted(enabled, key=lambda t: stable_fraction(t.tenant_id, "spread"))
        for tenant in ordered:
            tenant_id = tenant.tenant_id
            current = self.tokens.get(tenant_id, fresh=True)
            lifetime = current.lifetime_s if current is not None else float(tenant.profile.token_lifetime_s)
            if not kept_warm(lifetime, self.schedule_s):
                # A token refreshed now would lapse before the next run: leave it to the FHIR client,
                # which refreshes on demand, instead of spending the vendor's token budget every minute.
                summary.on_demand.append(tenant_id)
                emit_metric(ON_DEMAND_METRIC, tenant=tenant_id)
                continue
            wait = start + stable_fraction(tenant_id, "spread") * spread_s - self.clock()
            if wait > 0 and self.clock() + wait < deadline - 5:
                self.sleep(wait)
            if self.clock() > deadline - 5:
                summary.skipped.append(tenant_id)
                continue
            current = self.tokens.get(tenant_id, fresh=True)
            now = self.clock()
            jitter = self.jitter_s(tenant_id, current.lifetime_s) if current is not None else 0.0
            if current is not None and current.is_valid(now) and not current.refresh_due(now, jitter):
                summary.fresh.append(tenant_id)
            else:
                try:
                    current = self.refresh(tenant, jitter_s=jitter)
                    summary.refreshed.append(tenant_id)
                except RefreshThrottled:
                    summary.throttled.append(tenant_id)
                except RefreshFailed:
                    summary.failed.append(tenant_id)
            self._emit_age(tenant_id, current)
        return summary

    # ---- internals ----------------------------------------------------------------
    def _usable(self, current: CachedToken | None, force: bool, stale: str | None, jitter_s: float = 0.0) -> bool:
        if current is None or not current.is_valid(self.clock()):
            return False
        if force:
            return stale is not None and not current.same_token(stale)
        return not current.refresh_due(self.clock(), jitter_s)

    def _refresh_locked(self, tenant: TenantConfig) -> CachedToken:
        tenant_id = tenant.tenant_id
        try:
            limit = _token_budget(tenant)
            if limit is not None and not self.state.reserve_token_request(tenant_id, limit):
                now = self.clock()
                raise TokenEndpointThrottled("own token-endpoint budget used up",
                                             retry_after=60 - now % 60)
            credentials = self.credentials.get(tenant_id)
            scopes = self.requested_scopes(tenant)
            response = self.token_client.request_token(tenant, credentials, scopes)
        except TokenEndpointThrottled as err:
            retry_after = err.retry_after or 60.0
            self._failed(tenant_id, "throttled", not_before=self.clock() + retry_after)
            raise RefreshThrottled(tenant_id, "throttled", retry_after=retry_after, detail=err.detail) from None
        except TokenEndpointError as err:
            self._failed(tenant_id, err.detail)
            raise RefreshFailed(tenant_id, err.reason, detail=err.detail) from None
        except (CredentialsError, KeyMaterialError, ScopeError) as err:
            self._failed(tenant_id, type(err).__name__)
            raise RefreshFailed(tenant_id, str(err)) from None

        if response.refresh_token is not None and credentials.refresh_token is not None and \
                response.refresh_token.get_secret_value() != credentials.refresh_token.get_secret_value():
            # Rotating refresh tokens: the old one is dead once the new one is issued.
            self.credentials.put(tenant_id, credentials.model_copy(update={"refresh_token": response.refresh_token}))
        key = credentials.active_key()
        token = CachedToken(access_token=SecretStr(response.access_token.get_secret_value()),
                            token_type=response.token_type, issued_at=response.issued_at,
                            expires_at=response.issued_at + response.expires_in, expires_in=response.expires_in,
                            requested_scopes=scopes, granted_scope=response.scope,
                            kid=key.kid if key else None)
        self.tokens.put(tenant_id, token)
        granted = token.granted()
        denied = granted.denied(resource_permissions(tenant.workflows))
        self.state.record_success(tenant_id, requested=scopes, granted=granted.normalized(), denied=denied)
        emit_metric("TokenRefreshed", tenant=tenant_id)
        emit_metric("TokenLifetimeSeconds", tenant=tenant_id, value=response.expires_in, unit=MetricUnit.Seconds)
        emit_metric("TokenRefreshConsecutiveFailures", tenant=tenant_id, value=0)
        if denied:
            emit_metric("ScopeDeniedResourceTypes", tenant=tenant_id, value=len(denied))
        logger.info("token refreshed", extra={"tenant_id": tenant_id, "expires_in": response.expires_in,
                                              "scopes": scopes, "granted_scopes": granted.normalized(),
                                              "denied": denied, "reasons": response.notes})
        return token

    def _failed(self, tenant_id: str, reason: str, *, not_before: float | None = None) -> None:
        failures = self.state.record_failure(tenant_id, reason, not_before=not_before)
        emit_metric("TokenRefreshFailed", tenant=tenant_id)
        emit_metric("TokenRefreshConsecutiveFailures", tenant=tenant_id, value=failures)
        logger.warning("token refresh failed", extra={"tenant_id": tenant_id, "reason": reason,
                                                      "count": failures})

    def _wait_for_peer(self, tenant: TenantConfig, seen: CachedToken | None, force: bool,
                       stale: str | None) -> CachedToken:
        """Another process holds the lease: wait for its token rather than asking the endpoint too."""
        tenant_id = tenant.tenant_id
        before = seen.access_token.get_secret_value() if seen is not None else None
        give_up = self.clock() + self.peer_wait_s
        while self.clock() < give_up:
            self.sleep(0.2)
            current = self.tokens.get(tenant_id, fresh=True)
            if current is None or not current.is_valid(self.clock()):
                continue
            if not current.same_token(before) and not current.same_token(stale):
                return current
            if not force and not current.refresh_due(self.clock()):
                return current
        raise RefreshFailed(tenant_id, "another refresh is in progress")

    def _local_lock(self, tenant_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(tenant_id, threading.Lock())

    def _emit_age(self, tenant_id: str, token: CachedToken | None) -> None:
        now = self.clock()
        remaining = max(0.0, token.remaining(now)) if token is not None else 0.0
        emit_metric("TokenSecondsRemaining", tenant=tenant_id, value=remaining, unit=MetricUnit.Seconds)
        # Health relative to the tenant's own lifetime: a 300 s and a 3600 s token both read ~0.4-1.0
        # after a run, and 0 means the refresher failed to keep a kept-warm tenant's token alive.
        emit_metric(REMAINING_RATIO_METRIC, tenant=tenant_id,
                    value=round(token.remaining_ratio(now), 4) if token is not None else 0.0,
                    unit=MetricUnit.NoUnit)
        if token is not None:
            emit_metric("TokenAgeSeconds", tenant=tenant_id, value=max(0.0, now - token.issued_at),
                        unit=MetricUnit.Seconds)


def _token_budget(tenant: TenantConfig) -> int | None:
    limits = [x for x in (tenant.profile.token_endpoint_limit_per_min, tenant.rate_limits.token_requests_per_minute)
              if x is not None]
    return min(limits) if limits else None

