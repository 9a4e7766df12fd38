from __future__ import annotations

import itertools

import pytest
from pydantic import SecretStr

from ehrbridge.auth.refresher import RefreshFailed, RefreshThrottled, stable_fraction
from ehrbridge.auth.tokens import CachedToken, refresh_margin_s
from tests.unit.auth.helpers import FakeClock, ScriptedEndpoint, credentials, refresher, tenant


def _ok(lifetime: int, scope: str = "system/Patient.rs system/Observation.rs system/DiagnosticReport.rs"):  # type: ignore[no-untyped-def]
    return lambda n: (200, {"access_token": f"at-{n}", "token_type": "bearer", "expires_in": lifetime,
                            "scope": scope}, {})


@pytest.mark.parametrize(("lifetime", "margin"), [(60, 30), (180, 90), (300, 120), (570, 120), (3600, 360),
                                                (7200, 720)])
def test_refresh_margin_follows_the_servers_lifetime(lifetime: int, margin: int) -> None:
    assert refresh_margin_s(lifetime) == margin


@pytest.mark.parametrize("lifetime", [300, 570, 3600])
def test_scheduled_runs_refresh_before_expiry_and_not_earlier_than_needed(lifetime: int) -> None:
    clock = FakeClock()
    endpoint = ScriptedEndpoint(default=_ok(lifetime))
    r = refresher(endpoint, clock)
    t = tenant()
    first = r.refresh_due([t], spread_s=0)
    assert first.refreshed == ["acme-health"] and len(endpoint.requests) == 1
    token = r.tokens.get("acme-health")
    assert token is not None
    # Every minute, like the schedule: each token is replaced while still valid, never used stale.
    refreshes_at = []
    for _ in range(int(lifetime * 3 / 60)):
        clock.now += 60
        before = r.tokens.get("acme-health")
        summary = r.refresh_due([t], spread_s=0)
        if summary.refreshed:
            assert before is not None and before.remaining(clock.now) > 0  # refreshed before expiry
            refreshes_at.append(clock.now)
        assert r.tokens.get("acme-health").is_valid(clock.now)  # type: ignore[union-attr]
    assert refreshes_at, "never refreshed"
    # ... and not far too early: at least half of each lifetime is used.
    gaps = [b - a for a, b in itertools.pairwise(refreshes_at)]
    assert all(g >= lifetime / 2 for g in gaps)


def test_a_valid_token_is_served_from_cache_without_a_request() -> None:
    clock = FakeClock()
    endpoint = ScriptedEndpoint(default=_ok(300))
    r = refresher(endpoint, clock)
    a = r.get_token(tenant())
    clock.now += 100
    b = r.get_token(tenant())
    assert a.access_token.get_secret_value() == b.access_token.get_secret_value() == "at-1"
    assert len(endpoint.requests) == 1


def test_forced_refresh_is_skipped_when_someone_already_replaced_the_stale_token() -> None:
    clock = FakeClock()
    endpoint = ScriptedEndpoint(default=_ok(300))
    r = refresher(endpoint, clock)
    r.get_token(tenant())
    fresh = r.refresh(tenant(), force=True, stale_access_token="at-1")
    assert fresh.access_token.get_secret_value() == "at-2"
    again = r.refresh(tenant(), force=True, stale_access_token="at-1")  # a second 401 of the old token
    assert again.access_token.get_secret_value() == "at-2" and len(endpoint.requests) == 2


def test_partial_grant_is_recorded_with_denied_types() -> None:
    clock = FakeClock()
    r = refresher(ScriptedEndpoint(default=_ok(300, "system/Patient.read")), clock)
    token = r.refresh(tenant())
    status = r.state.status("acme-health")
    assert token.granted_scope == "system/Patient.read"
    assert status.granted_scopes == ["system/Patient.rs"]
    assert status.denied_types == ["DiagnosticReport", "Observation"]
    assert status.requested_scopes == ["system/DiagnosticReport.rs", "system/Observation.rs", "system/Patient.rs"]


def test_429_sets_not_before_so_later_runs_do_not_storm() -> None:
    clock = FakeClock()
    endpoint = ScriptedEndpoint(default=lambda n: (429, {}, {"Retry-After": "45"}))
    r = refresher(endpoint, clock)
    with pytest.raises(RefreshThrottled):
        r.refresh(tenant())
    assert len(endpoint.requests) == 1
    for _ in range(10):  # ten more attempts inside the window: none reaches the endpoint
        clock.now += 4
        with pytest.raises(RefreshThrottled):
            r.refresh(tenant())
    assert len(endpoint.requests) == 1
    clock.now += 10
    endpoint.default = _ok(300)
    r.refresh(tenant())
    assert len(endpoint.requests) == 2
    assert r.state.status("acme-health").consecutive_failures == 0


def test_own_token_budget_caps_requests_per_minute() -> None:
    clock = FakeClock(start=1_800_000_000.0 - 1_800_000_000.0 % 60)
    endpoint = ScriptedEndpoint(default=_ok(300))
    r = refresher(endpoint, clock)
    t = tenant(rate_limits={"token_requests_per_minute": 2})
    stale = None
    throttled = 0
    for _ in range(6):
        try:
            stale = r.refresh(t, force=True, stale_access_token=stale).access_token.get_secret_value()
        except RefreshThrottled:
            throttled += 1
        clock.now += 1
    assert len(endpoint.requests) == 2 and throttled == 4


def test_athena_profile_budget_applies_without_tenant_settings() -> None:
    from ehrbridge.auth.refresher import _token_budget

    assert _token_budget(tenant(vendor="athena", vendor_context={"practice_context": "x"})) == 50
    assert _token_budget(tenant(vendor="athena", vendor_context={"practice_context": "x"},
                                rate_limits={"token_requests_per_minute": 5})) == 5
    assert _token_budget(tenant()) is None


def test_consecutive_failures_are_counted_and_reset() -> None:
    clock = FakeClock()
    endpoint = ScriptedEndpoint(default=lambda n: (400, {"error": "invalid_client"}, {}))
    r = refresher(endpoint, clock)
    for expected in (1, 2, 3):
        with pytest.raises(RefreshFailed) as err:
            r.refresh(tenant())
        assert err.value.reason == "invalid_client"
        assert r.state.status("acme-health").consecutive_failures == expected
    endpoint.default = _ok(300)
    r.refresh(tenant())
    assert r.state.status("acme-health").consecutive_failures == 0


def test_refresh_token_is_rotated_in_the_credential_store() -> None:
    clock = FakeClock()
    endpoint = ScriptedEndpoint(default=lambda n: (200, {"access_token": f"at-{n}", "token_type": "bearer",
                                                         "expires_in": 3600, "scope": "system/Patient.rs",
                                                         "refresh_token": f"rt-{n + 1}"}, {}))
    r = refresher(endpoint, clock, creds=credentials(refresh_token=SecretStr("rt-1")))
    r.refresh(tenant(vendor="epic"))
    r.refresh(tenant(vendor="epic"), force=True, stale_access_token="at-1")
    forms = endpoint.forms()
    assert [f["refresh_token"] for f in forms] == ["rt-1", "rt-2"]
    assert r.credentials.get("acme-health").refresh_token.get_secret_value() == "rt-3"  # type: ignore[union-attr]


def test_lease_held_by_another_process_means_waiting_for_its_token() -> None:
    clock = FakeClock()
    endpoint = ScriptedEndpoint(default=_ok(300))
    r = refresher(endpoint, clock)
    assert r.state.acquire("acme-health", "someone-else", 30)

    def peer_finishes(seconds: float) -> None:
        clock.now += seconds
        if clock.now - 1_800_000_000.0 > 0.5 and r.tokens.get("acme-health") is None:
            r.tokens.put("acme-health", CachedToken(access_token=SecretStr("peer"), issued_at=clock.now,
                                                    expires_at=clock.now + 300, expires_in=300))

    r.sleep = peer_finishes
    token = r.refresh(tenant())
    assert token.access_token.get_secret_value() == "peer" and endpoint.requests == []


def test_tenants_are_spread_deterministically() -> None:
    fractions = [stable_fraction(f"tenant-{i}", "spread") for i in range(200)]
    assert all(0 <= f < 1 for f in fractions)
    assert len({round(f, 3) for f in fractions}) > 150  # spread, not clustered
    assert stable_fraction("a", "spread") == stable_fraction("a", "spread")


def test_scheduled_run_skips_tenants_without_smart_config_and_respects_deadline() -> None:
    clock = FakeClock()
    r = refresher(ScriptedEndpoint(default=_ok(300)), clock)
    hl7_only = tenant("hl7-only", workflows=[], client_id=None, fhir_base_url=None, token_url=None)
    summary = r.refresh_due([hl7_only, tenant()], deadline=clock.now + 1, spread_s=0)
    assert summary.skipped == ["acme-health"] and summary.refreshed == []


def test_short_lived_tokens_are_not_refreshed_on_every_call() -> None:
    clock = FakeClock()
    endpoint = ScriptedEndpoint(default=_ok(60))
    r = refresher(endpoint, clock)
    for _ in range(10):  # ten calls within the first 30 s of a 60 s token
        r.get_token(tenant())
        clock.now += 3
    assert len(endpoint.requests) == 1
    clock.now += 5  # 35 s old: inside the last half, refreshed on demand
    r.get_token(tenant())
    assert len(endpoint.requests) == 2
