"""Fixtures: the sandbox EHR with faults on 127.0.0.1 (real HTTP) and a poller wired to it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest
from pydantic import SecretStr

from ehrbridge.auth.credentials import InMemoryCredentialStore, KeyMaterial, TenantCredentials
from ehrbridge.auth.keys import generate_private_key, jwks, public_jwk_from_pem
from ehrbridge.auth.refresher import TokenRefresher
from ehrbridge.auth.state import InMemoryRefreshState
from ehrbridge.auth.tokens import InMemoryTokenStore
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.poll.calls import PollCalls
from ehrbridge.poll.cursor import InMemoryCursorStore
from ehrbridge.poll.limits import TokenBucket
from ehrbridge.poll.metrics import PollMetrics
from ehrbridge.poll.poller import Poller, PollSettings
from ehrbridge.poll.sink import resource_key
from ehrbridge.sandbox.server import SandboxEHR

pytestmark = pytest.mark.integration


@cache
def pem(alg: str = "ES384") -> str:
    return generate_private_key(alg, 2048)  # type: ignore[arg-type]


@dataclass
class RecordingSink:
    """Keeps every delivery (duplicates included); can be told to die after N deliveries (a kill)."""

    delivered: list[tuple[str, str, str]] = field(default_factory=list)
    fail_after: int | None = None
    calls: int = 0

    def deliver(self, tenant: TenantConfig, resources: Sequence[dict[str, Any]]) -> None:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("poller killed mid-crawl")
        self.delivered.extend(resource_key(r) for r in resources)


@dataclass
class Rig:
    sandbox: SandboxEHR
    tenant: TenantConfig
    refresher: TokenRefresher
    cursors: InMemoryCursorStore
    sink: RecordingSink
    metrics: PollMetrics
    settings: PollSettings

    def poller(self, **calls_kwargs: Any) -> Poller:
        options = {"max_retry_after_s": 0.05, "base_delay_s": 0.01, "max_delay_s": 0.05, "max_attempts": 12,
                   **calls_kwargs}
        calls = PollCalls(self.tenant, self.refresher, self.metrics, bucket=TokenBucket(500.0), **options)
        return Poller(self.tenant, calls, self.cursors, self.sink, settings=self.settings)


@pytest.fixture()
def make_rig() -> Iterator[Callable[..., Rig]]:
    started: list[SandboxEHR] = []

    def make(vendor: str = "generic", *, workflows: tuple[str, ...] = ("labs", "demographics"),
             token_lifetime_s: int | None = None, settings: PollSettings | None = None,
             tenant_overrides: dict[str, Any] | None = None, **sandbox_kwargs: Any) -> Rig:
        sandbox = SandboxEHR(vendor, token_lifetime_s=token_lifetime_s, **sandbox_kwargs).start()  # type: ignore[arg-type]
        started.append(sandbox)
        # Epic takes EC keys only from a JWKS URL; a statically registered key must be RSA there.
        alg = "RS384" if sandbox.profile.ec_keys_require_jwks_url else "ES384"
        sandbox.register_client("poll-client", jwks=jwks([public_jwk_from_pem(pem(alg), alg, "k1")]))
        tenant = TenantConfig.model_validate({
            "tenant_id": "poll-health", "vendor": vendor, "fhir_base_url": sandbox.fhir_base_url,
            "client_id": "poll-client", "key_id": "k1", "algorithm": alg, "workflows": list(workflows),
            "vendor_context": {"practice_context": "Organization/a-1.Practice-1"}, **(tenant_overrides or {})})
        store = InMemoryCredentialStore()
        store.put(tenant.tenant_id, TenantCredentials(keys=[KeyMaterial(kid="k1", algorithm=alg,
                                                                         private_key_pem=SecretStr(pem(alg)))]))
        refresher = TokenRefresher(credentials=store, tokens=InMemoryTokenStore(), state=InMemoryRefreshState())
        return Rig(sandbox, tenant, refresher, InMemoryCursorStore(), RecordingSink(),
                   PollMetrics(tenant.tenant_id, stream=None), settings or PollSettings(safety_margin_s=120))

    yield make
    for sandbox in started:
        sandbox.stop()
