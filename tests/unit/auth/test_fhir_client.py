from __future__ import annotations

from typing import Any

import httpx
import pytest

from ehrbridge.auth.fhir_client import FhirCallError, FhirClient, vendor_headers, vendor_params
from ehrbridge.contracts.envelope import ContractError
from tests.unit.auth.helpers import FHIR_URL, FakeClock, ScriptedEndpoint, refresher, tenant


def _client(handler: Any, clock: FakeClock, **tenant_kwargs: Any) -> tuple[FhirClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    t = tenant(**tenant_kwargs)
    fhir = FhirClient(t, refresher(ScriptedEndpoint(), clock), http=httpx.Client(transport=httpx.MockTransport(record)),
                      sleep=clock.sleep)
    return fhir, seen


def _bundle(next_url: str | None = None) -> dict[str, Any]:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    return {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": []}


def test_epic_calls_carry_epic_client_id_and_bearer() -> None:
    clock = FakeClock()
    fhir, seen = _client(lambda r: httpx.Response(200, json=_bundle()), clock, vendor="epic")
    fhir.search("Patient", {"_count": "1"})
    assert seen[0].headers["Epic-Client-ID"] == "client-1"
    assert seen[0].headers["Authorization"] == "Bearer at-1"
    assert seen[0].headers["Accept"] == "application/fhir+json"


def test_athena_practice_context_is_required_and_sent() -> None:
    assert vendor_params(tenant(vendor="athena", vendor_context={"practice_context": "Organization/a-1.Practice-7"})) \
        == {"ah-practice": "Organization/a-1.Practice-7"}
    with pytest.raises(ContractError, match="practice_context"):
        vendor_params(tenant(vendor="athena"))
    assert vendor_headers(tenant()) == {}


def test_next_links_are_followed_as_given_but_only_on_the_same_origin() -> None:
    clock = FakeClock()
    pages = iter([_bundle(f"{FHIR_URL}?_getpages=abc&_getpagesoffset=10"),
                  _bundle("https://evil.example/fhir?_getpages=abc&_getpagesoffset=20"),
                  _bundle("https://evil.example/other/Patient?p=3")])
    fhir, seen = _client(lambda r: httpx.Response(200, json=next(pages)), clock)
    with pytest.raises(FhirCallError, match="another host"):
        list(fhir.pages("Patient", {"_count": "10"}))
    assert str(seen[1].url) == f"{FHIR_URL}?_getpages=abc&_getpagesoffset=10"  # opaque: not rebuilt
    # Another origin under the same base path is re-based onto ours; one under another path is refused.
    assert str(seen[2].url) == f"{FHIR_URL}?_getpages=abc&_getpagesoffset=20"
    assert len(seen) == 3 and all(r.url.host == "ehr.example" for r in seen)  # the token never left


def test_429_and_503_are_retried_boundedly_honouring_retry_after() -> None:
    clock = FakeClock()
    responses = iter([httpx.Response(429, headers={"Retry-After": "2"}), httpx.Response(503),
                      httpx.Response(200, json=_bundle())])
    fhir, seen = _client(lambda r: next(responses), clock)
    fhir.search("Patient", {})
    assert len(seen) == 3 and clock.sleeps[0] == 2.0 and len(clock.sleeps) == 2
    always = _client(lambda r: httpx.Response(503), clock)
    with pytest.raises(FhirCallError) as err:
        always[0].search("Patient", {})
    assert err.value.status == 503 and len(always[1]) == 3


def test_oracle_500_is_retried_but_not_for_generic() -> None:
    clock = FakeClock()
    oracle, seen = _client(lambda r: httpx.Response(500), clock, vendor="oracle_health")
    with pytest.raises(FhirCallError):
        oracle.search("Patient", {})
    generic, seen_generic = _client(lambda r: httpx.Response(500), clock)
    with pytest.raises(FhirCallError):
        generic.search("Patient", {})
    assert len(seen) == 3 and len(seen_generic) == 1


def test_errors_carry_the_outcome_code_not_the_body() -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "required",
                                                              "diagnostics": "patient Jane Doe missing"}]}
    fhir, _ = _client(lambda r: httpx.Response(400, json=outcome), FakeClock())
    with pytest.raises(FhirCallError) as err:
        fhir.search("Observation", {})
    assert err.value.code == "required" and "Jane" not in str(err.value)


def test_links_on_another_origin_are_rebased_only_under_the_same_base_path() -> None:
    from ehrbridge.auth.fhir_client import rebase_link

    base = "https://ehr.example/fhir/r4"
    # The server named its internal address: same base path, so the same server; the query stays opaque.
    assert rebase_link("http://10.0.0.5:8080/fhir/r4?_getpages=abc&_getpagesoffset=20", base) == \
        "https://ehr.example/fhir/r4?_getpages=abc&_getpagesoffset=20"
    assert rebase_link("http://internal/fhir/r4/Observation?page=2", base) == \
        "https://ehr.example/fhir/r4/Observation?page=2"
    # Anything else is not provably this server: refused (the token is never sent anywhere but the base).
    assert rebase_link("https://elsewhere.example/other/Observation?page=2", base) is None
    assert rebase_link("https://elsewhere.example/fhir/r4x/Observation", base) is None
