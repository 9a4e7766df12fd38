from __future__ import annotations

import json
import time

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from ehrbridge.auth.assertion import (
    DEFAULT_ASSERTION_LIFETIME_S,
    AssertionBuildError,
    build_client_assertion,
)
from ehrbridge.auth.keys import (
    KeyMaterialError,
    generate_private_key,
    jwks,
    load_private_key,
    public_jwk,
    public_jwk_from_pem,
    thumbprint_kid,
)


@pytest.fixture(scope="module")
def rsa_pem() -> str:
    return generate_private_key("RS384", 2048)


@pytest.fixture(scope="module")
def ec_pem() -> str:
    return generate_private_key("ES384")


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_assertion_has_every_spec_claim_and_header(alg: str, rsa_pem: str, ec_pem: str) -> None:
    pem = rsa_pem if alg == "RS384" else ec_pem
    key = load_private_key(pem, alg)  # EC as a PEM string works (authlib's pitfall does not apply)
    before = int(time.time())
    token = build_client_assertion(key=key, kid="k1", client_id="client-1",
                                   audience="https://ehr.example/token", algorithm=alg)
    decoded = jwt.decode(token, key, algorithms=[alg])
    assert decoded.header == {"alg": alg, "kid": "k1", "typ": "JWT"}
    claims = decoded.claims
    assert claims["iss"] == claims["sub"] == "client-1"
    assert claims["aud"] == "https://ehr.example/token"
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] - claims["iat"] == DEFAULT_ASSERTION_LIFETIME_S <= 240
    assert 20 <= len(claims["jti"]) <= 151


def test_every_assertion_has_a_fresh_jti(rsa_pem: str) -> None:
    key = load_private_key(rsa_pem, "RS384")
    jtis = {jwt.decode(build_client_assertion(key=key, kid="k", client_id="c", audience="https://a/t"), key,
                       algorithms=["RS384"]).claims["jti"] for _ in range(50)}
    assert len(jtis) == 50


@pytest.mark.parametrize("lifetime", [0, 301, 3600])
def test_lifetime_over_five_minutes_is_refused(lifetime: int, rsa_pem: str) -> None:
    with pytest.raises(AssertionBuildError, match="lifetime"):
        build_client_assertion(key=load_private_key(rsa_pem, "RS384"), kid="k", client_id="c",
                               audience="https://a/t", lifetime_s=lifetime)


def test_algorithm_must_fit_the_key(ec_pem: str) -> None:
    with pytest.raises(AssertionBuildError):
        build_client_assertion(key=load_private_key(ec_pem, "ES384"), kid="k", client_id="c",
                               audience="https://a/t", algorithm="RS384")


def test_keys_load_by_algorithm_and_refuse_mismatches(rsa_pem: str, ec_pem: str) -> None:
    assert isinstance(load_private_key(rsa_pem, "RS384"), RSAKey)
    assert isinstance(load_private_key(ec_pem, "ES384"), ECKey)
    with pytest.raises(KeyMaterialError, match="EC P-384"):
        load_private_key(rsa_pem, "ES384")
    with pytest.raises(KeyMaterialError, match="RSA"):
        load_private_key(ec_pem, "RS384")
    with pytest.raises(KeyMaterialError, match="not a valid"):
        load_private_key("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n", "RS384")


def test_key_errors_never_echo_key_material(rsa_pem: str) -> None:
    with pytest.raises(KeyMaterialError) as err:
        load_private_key(rsa_pem, "ES384")
    assert rsa_pem.splitlines()[1] not in str(err.value)


def test_small_rsa_and_public_keys_are_refused(rsa_pem: str) -> None:
    with pytest.raises(KeyMaterialError, match="at least 2048"):
        generate_private_key("RS384", 1024)
    public = load_private_key(rsa_pem, "RS384").as_pem(private=False)
    with pytest.raises(KeyMaterialError, match="private key is needed"):
        load_private_key(public, "RS384")


def test_published_jwk_has_no_private_parts(rsa_pem: str, ec_pem: str) -> None:
    for pem, alg in ((rsa_pem, "RS384"), (ec_pem, "ES384")):
        jwk = public_jwk_from_pem(pem, alg, "kid-1")
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)
        assert jwk["alg"] == alg and jwk["kid"] == "kid-1" and jwk["use"] == "sig"
        assert "PRIVATE" not in json.dumps(jwk)


def test_jwks_refuses_duplicate_kids_and_thumbprints_are_stable(ec_pem: str) -> None:
    key = load_private_key(ec_pem, "ES384")
    assert thumbprint_kid(key) == thumbprint_kid(load_private_key(ec_pem, "ES384"))
    with pytest.raises(KeyMaterialError, match="duplicate kid"):
        jwks([public_jwk(key, "same"), public_jwk(key, "same")])
