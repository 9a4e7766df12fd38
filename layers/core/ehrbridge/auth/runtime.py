"""How functions get the auth objects: one refresher per execution environment, AWS-backed.

    from ehrbridge.auth.runtime import fhir_client
    client = fhir_client(tenant)            # cached token, 401 -> refresh once -> retry once
    bundle = client.search("Observation", {"patient": pid, "_lastUpdated": "gt..."})
"""

from __future__ import annotations

import os
from functools import cache

from ehrbridge.auth.credentials import SecretsManagerCredentialStore
from ehrbridge.auth.fhir_client import FhirClient
from ehrbridge.auth.refresher import TokenRefresher
from ehrbridge.auth.state import DynamoRefreshState
from ehrbridge.auth.tokens import REFRESH_SCHEDULE_S, SecretsManagerTokenStore
from ehrbridge.aws.settings import table_name
from ehrbridge.contracts.tenant import TenantConfig

# The token_refresh schedule's period, if the stack deploys another than one minute.
SCHEDULE_ENV = "EHRBRIDGE_REFRESH_SCHEDULE_S"


@cache
def refresher() -> TokenRefresher:
    """Secrets Manager (credentials, token cache) + the state table (lock, budget, coverage)."""
    return TokenRefresher(credentials=SecretsManagerCredentialStore(), tokens=SecretsManagerTokenStore(),
                          state=DynamoRefreshState(table_name("state")),
                          schedule_s=float(os.environ.get(SCHEDULE_ENV, REFRESH_SCHEDULE_S)))


_clients: dict[str, tuple[TenantConfig, FhirClient]] = {}


def fhir_client(tenant: TenantConfig) -> FhirClient:
    """A FHIR client for one tenant sharing the process-wide refresher (and its token cache).

    Reused across invocations while the tenant's config is unchanged, so connections stay pooled.
    """
    cached = _clients.get(tenant.tenant_id)
    if cached is not None and cached[0] == tenant:
        return cached[1]
    if cached is not None:
        cached[1].close()
    client = FhirClient(tenant, refresher())
    _clients[tenant.tenant_id] = (tenant, client)
    return client
