"""Tenant onboarding: YAML -> validated TenantConfig in the tenant store; secrets only to
Secrets Manager (``ehrbridge/tenants/{tenant_id}/credentials``, KMS).

The stored config never carries ``private_key_file`` (a path on an operator's machine means
nothing to a Lambda); the key it points at goes into the credentials secret instead.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import SecretStr

from ehrbridge.auth.credentials import (
    CredentialsError,
    CredentialStore,
    KeyMaterial,
    TenantCredentials,
)
from ehrbridge.auth.keys import load_private_key, thumbprint_kid
from ehrbridge.auth.scopes import ScopeError, resource_types_for, scopes_for
from ehrbridge.contracts.envelope import ContractError
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.contracts.tenant_store import TenantNotFound, TenantStore


@dataclass
class Onboarded:
    tenant: TenantConfig
    scopes: list[str]
    resource_types: list[str]
    credentials_stored: bool
    kid: str | None


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate(config: TenantConfig) -> list[str]:
    """Problems that would make the tenant fail at runtime (names fields, never values)."""
    problems: list[str] = []
    for name in ("fhir_base_url", "token_url"):
        url = getattr(config, name)
        if url is not None and urlsplit(str(url)).scheme != "https" and not is_loopback(str(url)):
            problems.append(f"{name}: must be https (TLS 1.2+) except for a loopback sandbox")
    if config.workflows:
        try:
            scopes_for(config.workflows)
        except ScopeError as err:
            problems.append(f"workflows: {err}")
        for name, template in config.profile.extra_query_params.items():
            try:
                template.format(**config.vendor_context)
            except KeyError as err:
                problems.append(f"vendor_context.{err.args[0]}: required by {config.vendor} for {name}")
    return problems


def onboard(config: TenantConfig, *, tenants: TenantStore, credentials: CredentialStore,
            private_key_pem: str | None = None, client_secret: str | None = None,
            refresh_token: str | None = None) -> Onboarded:
    """Validate, store the credentials (if any were given) and then the config."""
    problems = validate(config)
    if problems:
        raise ContractError("tenant config", problems)
    if private_key_pem is None and config.private_key_file is not None:
        try:
            private_key_pem = Path(config.private_key_file).read_text(encoding="ascii")
        except OSError as err:
            raise CredentialsError(f"tenant {config.tenant_id}: cannot read private_key_file ({err.strerror})") \
                from None
    kid = config.key_id
    creds: TenantCredentials | None = None
    if private_key_pem is not None or client_secret is not None or refresh_token is not None:
        try:
            creds = credentials.get(config.tenant_id)
        except CredentialsError:
            creds = TenantCredentials()
        if private_key_pem is not None:
            key = load_private_key(private_key_pem, config.algorithm)
            kid = kid or thumbprint_kid(key)
            others = [k for k in creds.keys if k.kid != kid]
            creds.keys = [*[k.model_copy(update={"status": "retiring"}) if k.status == "active" else k
                            for k in others],
                          KeyMaterial(kid=kid, algorithm=config.algorithm, private_key_pem=SecretStr(private_key_pem))]
        if client_secret is not None:
            creds.client_secret = SecretStr(client_secret)
        if refresh_token is not None:
            creds.refresh_token = SecretStr(refresh_token)
        credentials.put(config.tenant_id, creds)
    stored = config.model_copy(update={"private_key_file": None, "key_id": kid})
    tenants.put(stored)
    return Onboarded(tenant=stored, scopes=scopes_for(config.workflows) if config.workflows else [],
                     resource_types=resource_types_for(config.workflows), credentials_stored=creds is not None,
                     kid=kid)


def remove(tenant_id: str, *, tenants: TenantStore, credentials: CredentialStore | None = None,
           recovery_days: int = 7) -> bool:
    """Remove the config; with ``credentials`` also schedule the secret's deletion (recoverable)."""
    try:
        tenants.get(tenant_id)
        found = True
    except TenantNotFound:
        found = False
    tenants.delete(tenant_id)
    if credentials is not None:
        credentials.delete(tenant_id, recovery_days=recovery_days)
    return found
