"""Client assertions over real HTTP against the sandbox token endpoint (127.0.0.1)."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from joserfc import jwt

from ehrbridge.auth.assertion import ASSERTION_TYPE, build_client_assertion
from ehrbridge.auth.keys import jwks, load_private_key, public_jwk_from_pem
from ehrbridge.sandbox.server import SandboxEHR
from tests.integration.auth.conftest import creds_for, memory_refresher, pem, register, tenant_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_token_obtained_with_each_algorithm(sandbox: SandboxEHR, alg: str) -> None:
    register(sandbox, alg)
    refresher = memory_refresher(creds=creds_for(alg))
    token = refresher.refresh(tenant_for(sandbox, alg=alg))
    assert token.expires_in == 300 and token.granted().allows("Observation")
    assert [(a.alg, a.kid) for a in sandbox.assertions] == [(alg, "k1")]
    assert sandbox.token_requests(status=200) == 1


def test_assertions_are_never_reused_and_live_at_most_four_minutes(sandbox: SandboxEHR) -> None:
    register(sandbox)
    refresher = memory_refresher()
    tenant = tenant_for(sandbox)
    stale = None
    for _ in range(5):
        stale = refresher.refresh(tenant, force=True, stale_access_token=stale).access_token.get_secret_value()
    assert sandbox.token_requests(status=200) == 5
    assert len({a.jti for a in sandbox.assertions}) == 5
    assert all(a.lifetime_s <= 240 and a.expires_in_s <= 240 for a in sandbox.assertions)


def _post(sandbox: SandboxEHR, assertion: str) -> httpx.Response:
    return httpx.post(sandbox.token_url, data={"grant_type": "client_credentials", "scope": "system/Patient.rs",
                                               "client_assertion_type": ASSERTION_TYPE,
                                               "client_assertion": assertion}, timeout=10)


def _assertion(sandbox: SandboxEHR, **claims: object) -> str:
    now = int(time.time())
    body = {"iss": "client-1", "sub": "client-1", "aud": sandbox.token_url, "iat": now, "exp": now + 200,
            "jti": f"j-{time.perf_counter_ns()}"}
    body.update(claims)
    header = {"alg": "RS384", "kid": "k1", "typ": "JWT"}
    return jwt.encode(header, {k: v for k, v in body.items() if v is not None}, load_private_key(pem("RS384"), "RS384"),
                      algorithms=["RS384"])


@pytest.mark.parametrize(("claims", "reason"), [
    ({"exp": int(time.time()) - 60, "iat": int(time.time()) - 120}, "assertion expired"),
    ({"exp": int(time.time()) + 3600}, "exp more than five minutes ahead"),  # authlib's default
    ({"aud": "https://elsewhere.example/token"}, "aud is not this token endpoint"),
    ({"sub": "someone-else"}, "sub must equal iss"),
    ({"iat": int(time.time()) + 120, "exp": int(time.time()) + 200}, "iat in the future"),
    ({"jti": None}, "jti is required"),
    ({"iss": "unknown", "sub": "unknown"}, "unknown client"),
])
def test_sandbox_rejects_bad_assertions(sandbox: SandboxEHR, claims: dict[str, object], reason: str) -> None:
    register(sandbox)
    response = _post(sandbox, _assertion(sandbox, **claims))
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_client", "error_description": reason}


def test_sandbox_rejects_a_replayed_jti(sandbox: SandboxEHR) -> None:
    register(sandbox)
    assertion = _assertion(sandbox)
    assert _post(sandbox, assertion).status_code == 200
    replay = _post(sandbox, assertion)
    assert replay.status_code == 400 and replay.json()["error_description"] == "jti already used"


def test_sandbox_rejects_wrong_key_and_unknown_kid(sandbox: SandboxEHR) -> None:
    register(sandbox)
    now = int(time.time())
    claims = {"iss": "client-1", "sub": "client-1", "aud": sandbox.token_url, "exp": now + 100, "jti": "x1"}
    other = load_private_key(pem("ES384"), "ES384")
    forged = jwt.encode({"alg": "ES384", "kid": "k1", "typ": "JWT"}, claims, other, algorithms=["ES384"])
    assert _post(sandbox, forged).json()["error_description"] == "0 keys match kid"  # kid k1 is RSA
    wrong_kid = build_client_assertion(key=load_private_key(pem("RS384"), "RS384"), kid="nope", client_id="client-1",
                                       audience=sandbox.token_url)
    assert _post(sandbox, wrong_kid).json()["error_description"] == "0 keys match kid"


def test_epic_profile_takes_ec_keys_only_from_a_jwks_url(make_sandbox: Callable[..., SandboxEHR]) -> None:
    sandbox = make_sandbox("epic")
    register(sandbox, "ES384")
    refresher = memory_refresher(creds=creds_for("ES384"), token_client=None)
    from ehrbridge.auth.refresher import RefreshFailed

    with pytest.raises(RefreshFailed, match="invalid_client"):
        refresher.refresh(tenant_for(sandbox, alg="ES384"))


# ---- authlib: its pitfalls reproduced, and our subclass avoiding each -------------------
def test_authlib_defaults_are_rejected_and_our_auth_method_is_not(sandbox: SandboxEHR) -> None:
    from authlib.integrations.base_client.errors import OAuthError
    from authlib.integrations.httpx_client import OAuth2Client
    from authlib.oauth2.rfc7523 import PrivateKeyJWT

    from ehrbridge.auth.authlib_compat import oauth2_client

    sandbox.register_client("client-1", jwks=jwks([public_jwk_from_pem(pem("RS384"), "RS384", "r1"),
                                                   public_jwk_from_pem(pem("ES384"), "ES384", "e1")]))
    args = {"grant_type": "client_credentials", "scope": "system/Patient.rs"}

    # 1. Default assertion lifetime 3600 s: refused by a spec-conforming server.
    default = OAuth2Client("client-1", pem("RS384"), token_endpoint_auth_method=PrivateKeyJWT(
        sandbox.token_url, alg="RS384", headers={"kid": "r1"}))
    with pytest.raises(OAuthError, match="five minutes"):
        default.fetch_token(sandbox.token_url, **args)

    # 2. The claims={...} workaround pins the jti: the second request is a replay.
    fixed = OAuth2Client("client-1", pem("RS384"), token_endpoint_auth_method=PrivateKeyJWT(
        sandbox.token_url, alg="RS384", headers={"kid": "r1"}, claims={"exp": int(time.time()) + 200}))
    fixed.fetch_token(sandbox.token_url, **args)
    with pytest.raises(OAuthError, match="jti already used"):
        fixed.fetch_token(sandbox.token_url, **args)

    # 3. An EC key as a PEM string is imported as RSA.
    ec = OAuth2Client("client-1", pem("ES384"), token_endpoint_auth_method=PrivateKeyJWT(
        sandbox.token_url, alg="ES384", headers={"kid": "e1"}))
    with pytest.raises(Exception, match="RSA"):
        ec.fetch_token(sandbox.token_url, **args)

    # Ours: ES384 from a PEM string, repeated requests, each with a fresh short-lived assertion.
    before = len(sandbox.assertions)
    ours = oauth2_client("client-1", pem("ES384"), token_endpoint=sandbox.token_url, kid="e1", algorithm="ES384",
                         scope="system/Patient.rs")
    tokens = [ours.fetch_token()["access_token"] for _ in range(3)]
    assert len(set(tokens)) == 3
    mine = sandbox.assertions[before:]
    assert len({a.jti for a in mine}) == 3 and all(a.lifetime_s <= 240 and a.alg == "ES384" for a in mine)
