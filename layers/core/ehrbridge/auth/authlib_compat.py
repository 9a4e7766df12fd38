"""authlib integration without authlib's private_key_jwt pitfalls (research/smart-fhir.md §5).

``authlib.oauth2.rfc7523.PrivateKeyJWT`` signs with a 3600 s ``exp`` by default (the spec allows
at most 300 s), writes its ``jti`` into a caller's ``claims`` dict so the next request replays it,
and imports any non-key object as RSA, so an EC PEM string fails. ``SmartPrivateKeyJWT`` keeps
authlib's plumbing but signs every request with our assertion builder: fresh jti, exp <= 240 s,
RS384 or ES384 by key type, kid header. Kept out of the Lambda import path (authlib is heavy).
"""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc7523 import PrivateKeyJWT

from ehrbridge.auth.assertion import DEFAULT_ASSERTION_LIFETIME_S, build_client_assertion
from ehrbridge.auth.keys import SigningKey, load_private_key


class SmartPrivateKeyJWT(PrivateKeyJWT):  # type: ignore[misc]
    name = "private_key_jwt"

    def __init__(self, token_endpoint: str | None = None, *, kid: str, algorithm: str,
                 lifetime_s: int = DEFAULT_ASSERTION_LIFETIME_S) -> None:
        super().__init__(token_endpoint=token_endpoint, claims=None, headers=None, alg=algorithm)
        self.kid, self.algorithm, self.lifetime_s = kid, algorithm, lifetime_s

    def sign(self, auth: Any, token_endpoint: str) -> str:
        secret = auth.client_secret
        key: SigningKey = secret if not isinstance(secret, str | bytes) else load_private_key(secret, self.algorithm)
        return build_client_assertion(key=key, kid=self.kid, client_id=auth.client_id, audience=token_endpoint,
                                      algorithm=self.algorithm, lifetime_s=self.lifetime_s)


def oauth2_client(client_id: str, private_key_pem: str, *, token_endpoint: str, kid: str, algorithm: str,
                  scope: str, **kwargs: Any) -> Any:
    """An authlib httpx OAuth2Client doing SMART Backend Services client_credentials correctly."""
    from authlib.integrations.httpx_client import OAuth2Client

    client = OAuth2Client(client_id=client_id, client_secret=private_key_pem,
                          token_endpoint_auth_method=SmartPrivateKeyJWT(token_endpoint, kid=kid, algorithm=algorithm),
                          token_endpoint=token_endpoint, grant_type="client_credentials", scope=scope, **kwargs)
    return client
