"""Key rotation in three steps, with a published JWKS that always carries every live key.

1. ``add``     a new key is generated and stored as ``next``; the JWKS now has old + new, the old
               key still signs. Vendors that cache JWKS (Epic: up to 29 h) learn the new key first.
2. ``cutover`` the new key signs (``active``), the old one is ``retiring`` and stays published, so
               assertions already in flight and a rollback still verify.
3. ``retire``  retiring keys leave the credentials and the JWKS.

The JWKS is an S3 object (``jwks/{tenant_id}/jwks.json``) served over HTTPS by the CDK app
(CloudFront in front of a private bucket) for vendors that fetch a JWKS URL.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import SecretStr

from ehrbridge.auth.credentials import CredentialsError, CredentialStore, KeyMaterial, TenantCredentials
from ehrbridge.auth.keys import Algorithm, generate_private_key, jwks, load_private_key, public_jwk, thumbprint_kid
from ehrbridge.aws.clients import client
from ehrbridge.contracts.tenant_store import TenantStore

JWKS_BUCKET_ENV = "EHRBRIDGE_JWKS_BUCKET"
JWKS_BASE_URL_ENV = "EHRBRIDGE_JWKS_BASE_URL"
# Short enough that vendors honouring Cache-Control pick up a rotation within minutes.
JWKS_CACHE_CONTROL = "public, max-age=300"
Phase = Literal["add", "cutover", "retire"]


class RotationError(RuntimeError):
    pass


def jwks_key(tenant_id: str) -> str:
    return f"jwks/{tenant_id}/jwks.json"


def jwks_document(credentials: TenantCredentials) -> dict[str, Any]:
    entries = [public_jwk(load_private_key(k.private_key_pem.get_secret_value(), k.algorithm), k.kid, k.algorithm)
               for k in credentials.published_keys()]
    return jwks(entries)


class JwksPublisher(Protocol):
    def publish(self, tenant_id: str, document: dict[str, Any]) -> str: ...


class InMemoryJwksPublisher:
    def __init__(self) -> None:
        self.documents: dict[str, dict[str, Any]] = {}

    def publish(self, tenant_id: str, document: dict[str, Any]) -> str:
        self.documents[tenant_id] = document
        return f"memory://{jwks_key(tenant_id)}"


class S3JwksPublisher:
    def __init__(self, bucket: str | None = None, *, base_url: str | None = None, s3: Any = None) -> None:
        bucket = bucket or os.environ.get(JWKS_BUCKET_ENV)
        if not bucket:
            raise RotationError(f"no JWKS bucket: pass --jwks-bucket or set {JWKS_BUCKET_ENV}")
        self.bucket = bucket
        self.base_url = (base_url or os.environ.get(JWKS_BASE_URL_ENV) or "").rstrip("/")
        self._s3 = s3

    @property
    def s3(self) -> Any:
        return self._s3 or client("s3")

    def publish(self, tenant_id: str, document: dict[str, Any]) -> str:
        key = jwks_key(tenant_id)
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(document, indent=2).encode(),
                           ContentType="application/json", CacheControl=JWKS_CACHE_CONTROL)
        return f"{self.base_url}/{key}" if self.base_url else f"s3://{self.bucket}/{key}"


@dataclass
class RotationResult:
    tenant_id: str
    phase: Phase
    active_kid: str | None
    published_kids: list[str]
    jwks_url: str


def rotate(tenant_id: str, phase: Phase, *, credentials: CredentialStore, publisher: JwksPublisher,
           tenants: TenantStore | None = None, algorithm: Algorithm | None = None,
           rsa_bits: int = 3072) -> RotationResult:
    creds = credentials.get(tenant_id)
    keys = list(creds.keys)
    if phase == "add":
        if any(k.status == "next" for k in keys):
            raise RotationError("a next key is already published; run the cutover first")
        current = creds.active_key()
        alg: Algorithm = algorithm or (current.algorithm if current else "RS384")
        pem = generate_private_key(alg, rsa_bits)
        kid = thumbprint_kid(load_private_key(pem, alg))
        keys.append(KeyMaterial(kid=kid, algorithm=alg, private_key_pem=SecretStr(pem),
                                status="next" if current else "active"))
    elif phase == "cutover":
        nxt = [k for k in keys if k.status == "next"]
        if not nxt:
            raise RotationError("no next key to cut over to; run `keys rotate` (add) first")
        keys = [k.model_copy(update={"status": "retiring"}) if k.status == "active" else k for k in keys]
        keys = [k.model_copy(update={"status": "active"}) if k.kid == nxt[0].kid else k for k in keys]
    elif phase == "retire":
        if not any(k.status == "retiring" for k in keys):
            raise RotationError("no retiring key; nothing to retire")
        keys = [k for k in keys if k.status != "retiring"]
    else:
        raise RotationError(f"unknown phase {phase!r}")
    updated = creds.model_copy(update={"keys": keys})
    active = updated.active_key()
    if active is None:
        raise CredentialsError(f"tenant {tenant_id} would be left without an active key")
    credentials.put(tenant_id, updated)
    url = publisher.publish(tenant_id, jwks_document(updated))
    if tenants is not None and phase == "cutover":
        # The config's key_id/algorithm follow the signing key (shown by `tenants show`).
        config = tenants.get(tenant_id)
        tenants.put(config.model_copy(update={"key_id": active.kid, "algorithm": active.algorithm}))
    return RotationResult(tenant_id, phase, active.kid, [k.kid for k in updated.published_keys()], url)
