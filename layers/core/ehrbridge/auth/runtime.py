"""How functions get the auth objects: one refresher per execution environment, AWS-backed.

    from ehrbridge.auth.runtime import fhir_client
    client = fhir_client(tenant)            # cached token, 401 -> refresh once -> retry once
    bundle = client.search("Observation", {"patient": pid, "_lastUpdated": "gt..."})
"""

from __future__ import annotations

from functools import cache

from ehrbridge.auth.credentials import SecretsManagerCredentialStore
from ehrbridge.auth.fhir_client import FhirClient
from ehrbridge.auth.refresher import TokenRefresher
from ehrbridge.auth.state import DynamoRefreshState
from ehrbridge.auth.tokens import SecretsManagerTokenStore
from ehrbridge.aws.settings import table_name
from ehrbridge.contracts.tenant import TenantConfig


@cache
def refresher() -> TokenRefresher:
    """Secrets Manager (credentials, token cache) + the state table (lock, budget, coverage)."""
    return TokenRefresher(credentials=SecretsManagerCredentialStore(), tokens=SecretsManagerTokenStore(),
                          state=DynamoRefreshState(table_name("state")))


def fhir_client(tenant: TenantConfig) -> FhirClient:
    """A FHIR client for one tenant sharing the process-wide refresher (and its token cache)."""
    return FhirClient(tenant, refresher())
