from __future__ import annotations

from email.utils import formatdate

import httpx
import pytest
from joserfc import jws

from ehrbridge.auth.token_endpoint import (
    TokenClient,
    TokenEndpointError,
    TokenEndpointThrottled,
    parse_retry_after,
)
from tests.unit.auth.helpers import TOKEN_URL, FakeClock, ScriptedEndpoint, credentials, tenant


def _client(endpoint: ScriptedEndpoint, clock: FakeClock, **kwargs: object) -> TokenClient:
    return TokenClient(httpx.Client(transport=httpx.MockTransport(endpoint)), sleep=clock.sleep, clock=clock,
                       **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "expected"), [
    ("7", 7.0), ("0", 0.0), (" 12 ", 12.0), ("100000", 120.0),  # capped
    (None, None), ("soon", None), ("", None),
])
def test_retry_after_delta_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, 1_800_000_000.0, 120.0) == expected


def test_retry_after_http_date_and_epoch() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now, 120.0) == pytest.approx(30, abs=1)
    assert parse_retry_after(str(int(now + 45)), now, 120.0) == pytest.approx(45)  # bulk-data-server epochs
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now, 120.0) == 0.0


def test_client_credentials_form_and_a_fresh_assertion_per_attempt() -> None:
    clock = FakeClock()
    endpoint = ScriptedEndpoint([(503, {}, {}), (200, {"access_token": "a", "token_type": "Bearer",
                                                       "expires_in": "570", "scope": "system/Patient.read"}, {})])
    response = _client(endpoint, clock).request_token(tenant(), credentials(), ["system/Patient.rs"])
    assert response.expires_in == 570.0 and response.scope == "system/Patient.read"
    forms = endpoint.forms()
    assert len(forms) == 2 and len(clock.sleeps) == 1
    assert all(f["grant_type"] == "client_credentials" and f["scope"] == "system/Patient.rs" for f in forms)
    assert forms[0]["client_assertion"] != forms[1]["client_assertion"]  # retry is never a replay
    headers = [jws.extract_compact(f["client_assertion"].encode()).headers() for f in forms]
    assert all(h == {"alg": "RS384", "kid": "k1", "typ": "JWT"} for h in headers)


def test_429_with_retry_after_is_honoured_and_bounded() -> None:
    clock = FakeClock()
    endpoint = ScriptedEndpoint(default=lambda n: (429, {"error": "rate_limited"}, {"Retry-After": "3"}))
    with pytest.raises(TokenEndpointThrottled) as err:
        _client(endpoint, clock, max_attempts=4).request_token(tenant(), credentials(), ["system/Patient.rs"])
    assert len(endpoint.requests) == 4  # bounded: no storm
    assert clock.sleeps == [3.0, 3.0, 3.0]
    assert err.value.retry_after == 3.0


def test_429_longer_than_the_budget_stops_at_once() -> None:
    clock = FakeClock()
    endpoint = ScriptedEndpoint(default=lambda n: (429, {}, {"Retry-After": "55"}))
    with pytest.raises(TokenEndpointThrottled) as err:
        _client(endpoint, clock, budget_s=20).request_token(tenant(), credentials(), ["system/Patient.rs"])
    assert len(endpoint.requests) == 1 and clock.sleeps == [] and err.value.retry_after == 55.0


def test_backoff_without_retry_after_is_exponential_with_full_jitter() -> None:
    clock = FakeClock()
    endpoint = ScriptedEndpoint(default=lambda n: (502, {}, {}))
    with pytest.raises(TokenEndpointError):
        _client(endpoint, clock, max_attempts=4, base_delay_s=1.0).request_token(
            tenant(), credentials(), ["system/Patient.rs"])
    assert len(clock.sleeps) == 3
    assert all(0 <= s <= cap for s, cap in zip(clock.sleeps, (1.0, 2.0, 4.0), strict=True))


def test_definitive_oauth_errors_are_not_retried() -> None:
    clock = FakeClock()
    endpoint = ScriptedEndpoint(default=lambda n: (400, {"error": "invalid_client"}, {}))
    with pytest.raises(TokenEndpointError) as err:
        _client(endpoint, clock).request_token(tenant(vendor="epic"), credentials(), ["system/Patient.read"])
    assert len(endpoint.requests) == 1 and err.value.reason == "invalid_client"


def test_epic_bare_400_is_retried_boundedly_but_not_for_generic() -> None:
    ok = (200, {"access_token": "a", "token_type": "bearer", "expires_in": 3600, "scope": "Patient.read"}, {})
    endpoint = ScriptedEndpoint([(400, {}, {}), ok])
    _client(endpoint, FakeClock()).request_token(tenant(vendor="epic"), credentials(), ["system/Patient.read"])
    assert len(endpoint.requests) == 2
    endpoint = ScriptedEndpoint([(400, {}, {}), ok])
    with pytest.raises(TokenEndpointError):
        _client(endpoint, FakeClock()).request_token(tenant(), credentials(), ["system/Patient.rs"])
    assert len(endpoint.requests) == 1


def test_missing_expires_in_and_scope_do_not_mean_forever_or_everything() -> None:
    endpoint = ScriptedEndpoint([(200, {"access_token": "a", "token_type": "bearer"}, {})])
    response = _client(endpoint, FakeClock()).request_token(tenant(vendor="epic"), credentials(),
                                                            ["system/Patient.read"])
    assert response.expires_in == 300 and response.scope == "system/Patient.read"
    assert response.notes == ["expires_in missing", "scope missing"]


def test_client_secret_basic_only_where_the_vendor_uses_it() -> None:
    from pydantic import SecretStr

    from ehrbridge.auth.credentials import CredentialsError, TenantCredentials

    secret_only = TenantCredentials(client_secret=SecretStr("s3cr3t"))
    endpoint = ScriptedEndpoint()
    _client(endpoint, FakeClock()).request_token(tenant(vendor="oracle_health"), secret_only, ["system/Patient.read"])
    assert endpoint.requests[0].headers["authorization"].startswith("Basic ")
    assert "client_assertion" not in endpoint.forms()[0]
    with pytest.raises(CredentialsError, match="no usable credentials"):
        _client(endpoint, FakeClock()).request_token(tenant(), secret_only, ["system/Patient.rs"])


def test_refresh_token_grant_when_the_app_holds_one() -> None:
    from pydantic import SecretStr

    endpoint = ScriptedEndpoint([(200, {"access_token": "a", "token_type": "bearer", "expires_in": 3600,
                                        "scope": "system/Patient.rs", "refresh_token": "rt-2"}, {})])
    response = _client(endpoint, FakeClock()).request_token(
        tenant(vendor="epic"), credentials(refresh_token=SecretStr("rt-1")), ["system/Patient.read"])
    form = endpoint.forms()[0]
    assert form["grant_type"] == "refresh_token" and form["refresh_token"] == "rt-1"
    assert "client_assertion" in form  # confidential clients authenticate the refresh grant too
    assert response.refresh_token is not None and response.refresh_token.get_secret_value() == "rt-2"


def test_discovery_finds_the_token_endpoint_and_scope_version() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/fhir/.well-known/smart-configuration"
        return httpx.Response(200, json={"token_endpoint": TOKEN_URL, "capabilities": ["permission-v1"]})

    client = TokenClient(httpx.Client(transport=httpx.MockTransport(handler)))
    t = tenant(token_url=None)
    assert client.token_url(t) == TOKEN_URL
    assert client.scope_version(t) == 1


def test_discovery_failure_is_a_clear_error() -> None:
    client = TokenClient(httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(404))))
    with pytest.raises(TokenEndpointError, match="smart-configuration answered 404"):
        client.token_url(tenant(token_url=None))
    assert client.scope_version(tenant(vendor="oracle_health")) == 1  # falls back to the vendor profile


def test_assertion_audience_override_for_proxied_sites() -> None:
    from joserfc import jwt as _jwt

    from ehrbridge.auth.keys import load_private_key
    from tests.unit.auth.helpers import pem

    endpoint = ScriptedEndpoint()
    t = tenant(vendor="epic", vendor_context={"assertion_audience": "https://proxy.example/oauth2/token"})
    _client(endpoint, FakeClock()).request_token(t, credentials(), ["system/Patient.read"])
    claims = _jwt.decode(endpoint.forms()[0]["client_assertion"], load_private_key(pem("RS384"), "RS384"),
                         algorithms=["RS384"]).claims
    assert claims["aud"] == "https://proxy.example/oauth2/token"
    assert str(endpoint.requests[0].url) == TOKEN_URL


def _revocation_server(revocation: bool, answer: int = 200) -> tuple[list[httpx.Request], httpx.MockTransport]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/.well-known/smart-configuration"):
            config = {"token_endpoint": TOKEN_URL}
            if revocation:
                config["revocation_endpoint"] = "https://ehr.example/oauth2/revoke"
            return httpx.Response(200, json=config)
        if request.url.path == "/oauth2/revoke":
            return httpx.Response(answer, json={} if answer == 200 else {"error": "invalid_client",
                                                                          "error_description": "bad assertion"})
        return httpx.Response(404)

    return seen, httpx.MockTransport(handle)


def test_revoke_posts_the_token_with_client_authentication_where_the_vendor_offers_rfc7009() -> None:
    from urllib.parse import parse_qs

    seen, transport = _revocation_server(revocation=True)
    outcome = TokenClient(httpx.Client(transport=transport)).revoke(tenant(), credentials(), "access-123")
    assert outcome == "revoked"
    form = {k: v[0] for k, v in parse_qs(seen[-1].content.decode()).items()}
    assert seen[-1].url.path == "/oauth2/revoke"
    assert form["token"] == "access-123" and form["token_type_hint"] == "access_token"
    assert form["client_assertion_type"].endswith("jwt-bearer") and form["client_assertion"]
    assert "grant_type" not in form and "scope" not in form

    _seen, refusing = _revocation_server(revocation=True, answer=401)
    with pytest.raises(TokenEndpointError) as err:
        TokenClient(httpx.Client(transport=refusing)).revoke(tenant(), credentials(), "access-123")
    assert err.value.detail.startswith("invalid_client: bad assertion")

    seen, plain = _revocation_server(revocation=False)
    assert TokenClient(httpx.Client(transport=plain)).revoke(tenant(), credentials(), "access-123") == "not_supported"
    assert all(not r.url.path.endswith("revoke") for r in seen)


def test_network_errors_name_the_url_and_error_descriptions_are_kept() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = TokenClient(httpx.Client(transport=httpx.MockTransport(refuse)), sleep=lambda s: None, max_attempts=1)
    with pytest.raises(TokenEndpointError) as err:
        client.request_token(tenant(), credentials(), ["system/Patient.rs"])
    assert err.value.reason == "network" and TOKEN_URL in err.value.detail
    with pytest.raises(TokenEndpointError) as err:
        client.discover("https://ehr.example/fhir")
    assert "https://ehr.example/fhir/.well-known/smart-configuration" in err.value.detail
    clock = FakeClock()
    endpoint = ScriptedEndpoint([(401, {"error": "invalid_client", "error_description": "signature\n invalid"}, {})])
    with pytest.raises(TokenEndpointError) as err:
        _client(endpoint, clock).request_token(tenant(), credentials(), ["system/Patient.rs"])
    assert err.value.reason == "invalid_client" and err.value.detail.startswith("invalid_client: signature invalid")
