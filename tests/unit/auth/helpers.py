"""Shared builders for the auth unit tests (in-memory stores, a scripted token endpoint)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import cache
from typing import Any

import httpx
from pydantic import SecretStr

from ehrbridge.auth.credentials import InMemoryCredentialStore, KeyMaterial, TenantCredentials
from ehrbridge.auth.keys import generate_private_key
from ehrbridge.auth.refresher import TokenRefresher
from ehrbridge.auth.state import InMemoryRefreshState
from ehrbridge.auth.token_endpoint import TokenClient
from ehrbridge.auth.tokens import InMemoryTokenStore
from ehrbridge.contracts.tenant import TenantConfig

TOKEN_URL = "https://ehr.example/oauth2/token"
FHIR_URL = "https://ehr.example/fhir"


@cache
def pem(alg: str) -> str:
    return generate_private_key(alg, 2048)  # type: ignore[arg-type]


def tenant(tenant_id: str = "acme-health", **overrides: Any) -> TenantConfig:
    data: dict[str, Any] = {"tenant_id": tenant_id, "vendor": "generic", "fhir_base_url": FHIR_URL,
                            "token_url": TOKEN_URL, "client_id": "client-1", "key_id": "k1",
                            "workflows": ["labs"]}
    data.update(overrides)
    return TenantConfig.model_validate(data)


def credentials(alg: str = "RS384", **extra: Any) -> TenantCredentials:
    return TenantCredentials(keys=[KeyMaterial(kid="k1", algorithm=alg, private_key_pem=SecretStr(pem(alg)))],  # type: ignore[arg-type]
                             **extra)


class ScriptedEndpoint:
    """An httpx transport answering token requests from a script of (status, body, headers)."""

    def __init__(self, script: list[tuple[int, dict[str, Any], dict[str, str]]] | None = None,
                 default: Callable[[int], tuple[int, dict[str, Any], dict[str, str]]] | None = None) -> None:
        self.script = list(script or [])
        self.requests: list[httpx.Request] = []
        self._counter = itertools.count(1)
        self.default = default or (lambda n: (200, {"access_token": f"at-{n}", "token_type": "bearer",
                                                    "expires_in": 300, "scope": "system/Patient.rs "
                                                    "system/Observation.rs system/DiagnosticReport.rs"}, {}))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":  # discovery: this server publishes none (vendor default applies)
            return httpx.Response(404)
        self.requests.append(request)
        n = next(self._counter)
        status, body, headers = self.script.pop(0) if self.script else self.default(n)
        return httpx.Response(status, json=body, headers=headers)

    def forms(self) -> list[dict[str, str]]:
        from urllib.parse import parse_qsl

        return [dict(parse_qsl(r.content.decode())) for r in self.requests]


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def refresher(endpoint: ScriptedEndpoint, clock: FakeClock, creds: TenantCredentials | None = None,
              tenant_id: str = "acme-health", **client_kwargs: Any) -> TokenRefresher:
    store = InMemoryCredentialStore()
    store.put(tenant_id, creds or credentials())
    token_client = TokenClient(httpx.Client(transport=httpx.MockTransport(endpoint)), sleep=clock.sleep,
                               clock=clock, **client_kwargs)
    return TokenRefresher(credentials=store, tokens=InMemoryTokenStore(), state=InMemoryRefreshState(clock=clock),
                          token_client=token_client, clock=clock, sleep=clock.sleep)
