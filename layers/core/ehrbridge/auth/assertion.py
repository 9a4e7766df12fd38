"""SMART Backend Services client assertions (private_key_jwt), signed fresh for every request.

Spec (SMART App Launch 2.2 backend-services): header alg RS384|ES384, kid, typ=JWT; claims
iss = sub = client_id, aud = the token endpoint URL, exp no more than five minutes ahead, jti a
nonce the server rejects on reuse. We use 240 s so clock skew cannot push us past 300 s, and a
new 256-bit jti each time (43 characters, inside Epic's 151-character limit).
"""

from __future__ import annotations

import secrets
import time

from ehrbridge.auth.keys import SigningKey, algorithm_for

MAX_ASSERTION_LIFETIME_S = 300  # the spec's hard ceiling
DEFAULT_ASSERTION_LIFETIME_S = 240
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class AssertionBuildError(ValueError):
    pass


def new_jti() -> str:
    return secrets.token_urlsafe(32)


def build_client_assertion(*, key: SigningKey, kid: str, client_id: str, audience: str,
                           algorithm: str | None = None, lifetime_s: int = DEFAULT_ASSERTION_LIFETIME_S,
                           now: float | None = None) -> str:
    """One signed assertion. Never cached, never reused: call this per token request."""
    alg = algorithm or algorithm_for(key)
    if alg != algorithm_for(key):
        raise AssertionBuildError(f"algorithm {alg} does not fit a {type(key).__name__}")
    if not 0 < lifetime_s <= MAX_ASSERTION_LIFETIME_S:
        raise AssertionBuildError(f"assertion lifetime must be 1..{MAX_ASSERTION_LIFETIME_S} s, got {lifetime_s}")
    if not kid or not client_id or not audience:
        raise AssertionBuildError("kid, client_id and audience are required")
    issued = int(now if now is not None else time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": audience, "iat": issued,
              "exp": issued + lifetime_s, "jti": new_jti()}
    header = {"alg": alg, "kid": kid, "typ": "JWT"}
    from joserfc import jwt  # here, not at import: see ehrbridge.auth.keys

    return jwt.encode(header, claims, key, algorithms=[alg])
