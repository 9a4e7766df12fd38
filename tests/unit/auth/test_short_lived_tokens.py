"""Token lifetimes shorter than the refresh schedule (issue 15, defect 7): tokens that live 10-60 s
are refreshed on demand by the FHIR client (single flight per tenant), the schedule keeps the
long-lived ones warm, and token health is judged relative to each tenant's lifetime."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest

from ehrbridge.auth.fhir_client import FhirClient
from ehrbridge.auth.refresher import ON_DEMAND_METRIC, REMAINING_RATIO_METRIC
from ehrbridge.auth.tokens import kept_warm
from tests.unit.auth.helpers import FakeClock, ScriptedEndpoint, refresher, tenant

SCOPE = "system/Patient.rs system/Observation.rs system/DiagnosticReport.rs"


def _lifetime(seconds: int):  # type: ignore[no-untyped-def]
    return lambda n: (200, {"access_token": f"at-{n}", "token_type": "bearer", "expires_in": seconds,
                            "scope": SCOPE}, {})


def _metrics(text: str, name: str) -> list[tuple[str, float]]:
    out = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        data = json.loads(line)
        if name in data and "_aws" in data:
            value = data[name]
            out.extend((data["tenant"], float(v)) for v in (value if isinstance(value, list) else [value]))
    return out


@pytest.mark.parametrize(("lifetime", "warm"), [(10, False), (30, False), (60, False), (120, False), (180, True),
                                                (300, True), (570, True), (3600, True)])
def test_which_lifetimes_the_schedule_can_keep_warm(lifetime: int, warm: bool) -> None:
    assert kept_warm(lifetime, 60) is warm


def test_schedule_leaves_short_lived_tenants_to_on_demand_and_keeps_long_lived_warm(
        capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    short_endpoint, long_endpoint = ScriptedEndpoint(default=_lifetime(30)), ScriptedEndpoint(default=_lifetime(3600))
    short_r, long_r = refresher(short_endpoint, clock, tenant_id="short"), refresher(long_endpoint, clock,
                                                                                      tenant_id="long")
    short_t, long_t = tenant("short"), tenant("long")
    short_r.get_token(short_t)  # the FHIR client's first call
    capsys.readouterr()
    for _ in range(90):  # an hour and a half of minutes
        clock.now += 60
        assert short_r.refresh_due([short_t], spread_s=0).on_demand == ["short"]
        assert long_r.refresh_due([long_t], spread_s=0).on_demand == []
    assert len(short_endpoint.requests) == 1  # not refreshed every minute for nothing
    assert 2 <= len(long_endpoint.requests) <= 3
    emitted = capsys.readouterr().out
    ratios = _metrics(emitted, REMAINING_RATIO_METRIC)
    assert {t for t, _ in ratios} == {"long"} and len(ratios) == 90
    assert min(v for _, v in ratios) > 0.09  # kept warm: never near its own expiry after a run
    assert _metrics(emitted, ON_DEMAND_METRIC) == [("short", 1.0)] * 90
    # ... and when the short-lived tenant is needed again, it gets a valid token on demand.
    token = short_r.get_token(short_t)
    assert token.is_valid(clock.now) and len(short_endpoint.requests) == 2


def test_a_retry_after_outlasting_a_short_token_is_sent_with_a_fresh_one_not_a_401() -> None:
    clock = FakeClock()
    endpoint = ScriptedEndpoint(default=_lifetime(20))
    r = refresher(endpoint, clock)
    seen: list[str] = []

    def fhir(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        if len(seen) == 1:
            return httpx.Response(429, headers={"Retry-After": "25"})
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": []})

    client = FhirClient(tenant(), r, http=httpx.Client(transport=httpx.MockTransport(fhir)), sleep=clock.sleep)
    client.search("Patient", {})
    assert seen == ["Bearer at-1", "Bearer at-2"]  # the expired at-1 was not sent again


def test_on_demand_refresh_is_single_flight_per_tenant() -> None:
    clock = FakeClock()
    endpoint = ScriptedEndpoint(default=_lifetime(10))
    r = refresher(endpoint, clock)
    r.get_token(tenant())
    clock.now += 8  # due: 2 s left of 10
    barrier = threading.Barrier(16)
    got: list[Any] = []

    def call() -> None:
        barrier.wait()
        got.append(r.get_token(tenant()).access_token.get_secret_value())

    threads = [threading.Thread(target=call) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(endpoint.requests) == 2 and got == ["at-2"] * 16
