"""Fixtures: the sandbox EHR on 127.0.0.1 (real HTTP), keys, and refreshers on the moto twin."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import pytest
from pydantic import SecretStr

from ehrbridge.auth.credentials import (
    InMemoryCredentialStore,
    KeyMaterial,
    SecretsManagerCredentialStore,
    TenantCredentials,
)
from ehrbridge.auth.keys import generate_private_key, jwks, public_jwk_from_pem
from ehrbridge.auth.refresher import TokenRefresher
from ehrbridge.auth.state import DynamoRefreshState, InMemoryRefreshState
from ehrbridge.auth.token_endpoint import TokenClient
from ehrbridge.auth.tokens import InMemoryTokenStore, SecretsManagerTokenStore
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.sandbox.server import SandboxEHR

pytestmark = pytest.mark.integration


@cache
def pem(alg: str) -> str:
    return generate_private_key(alg, 2048)  # type: ignore[arg-type]


@pytest.fixture()
def make_sandbox() -> Iterator[Callable[..., SandboxEHR]]:
    started: list[SandboxEHR] = []

    def make(vendor: str = "generic", **kwargs: Any) -> SandboxEHR:
        sandbox = SandboxEHR(vendor, **kwargs).start()  # type: ignore[arg-type]
        started.append(sandbox)
        return sandbox

    yield make
    for sandbox in started:
        sandbox.stop()


@pytest.fixture()
def sandbox(make_sandbox: Callable[..., SandboxEHR]) -> SandboxEHR:
    return make_sandbox()


def register(sandbox: SandboxEHR, alg: str = "RS384", client_id: str = "client-1", kid: str = "k1",
             **kwargs: Any) -> None:
    sandbox.register_client(client_id, jwks=jwks([public_jwk_from_pem(pem(alg), alg, kid)]), **kwargs)


def tenant_for(sandbox: SandboxEHR, tenant_id: str = "acme-health", alg: str = "RS384",
               **overrides: Any) -> TenantConfig:
    data: dict[str, Any] = {"tenant_id": tenant_id, "vendor": sandbox.profile.vendor,
                            "fhir_base_url": sandbox.fhir_base_url, "client_id": "client-1", "key_id": "k1",
                            "algorithm": alg, "workflows": ["labs"],
                            "vendor_context": {"practice_context": "Organization/a-1.Practice-1"}}
    data.update(overrides)
    return TenantConfig.model_validate(data)


def creds_for(alg: str = "RS384", kid: str = "k1", **extra: Any) -> TenantCredentials:
    return TenantCredentials(keys=[KeyMaterial(kid=kid, algorithm=alg, private_key_pem=SecretStr(pem(alg)))],  # type: ignore[arg-type]
                             **extra)


def memory_refresher(tenant_id: str = "acme-health", creds: TenantCredentials | None = None,
                     **kwargs: Any) -> TokenRefresher:
    store = InMemoryCredentialStore()
    store.put(tenant_id, creds or creds_for())
    return TokenRefresher(credentials=store, tokens=InMemoryTokenStore(), state=InMemoryRefreshState(), **kwargs)


def aws_refresher(twin: Any, **kwargs: Any) -> TokenRefresher:
    """A refresher as the Lambda builds it: Secrets Manager + the state table on the moto twin."""
    return TokenRefresher(credentials=SecretsManagerCredentialStore(), tokens=SecretsManagerTokenStore(),
                          state=DynamoRefreshState(twin.tables["state"]), **kwargs)


def fast_token_client(**kwargs: Any) -> TokenClient:
    return TokenClient(**{"budget_s": 5.0, **kwargs})
