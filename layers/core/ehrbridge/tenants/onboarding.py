"""Tenant onboarding: YAML -> validated TenantConfig in the tenant store; secrets only to
Secrets Manager (``ehrbridge/tenants/{tenant_id}/credentials``, KMS).

The stored config never carries ``private_key_file`` (a path on an operator's machine means
nothing to a Lambda); the key it points at goes into the credentials secret instead.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import SecretStr

from ehrbridge.auth.credentials import (
    CredentialsError,
    CredentialStore,
    KeyMaterial,
    SecretPendingDeletion,
    TenantCredentials,
)
from ehrbridge.auth.keys import load_private_key, thumbprint_kid
from ehrbridge.auth.scopes import ScopeError, resource_types_for, scopes_for
from ehrbridge.auth.tokens import TokenStore
from ehrbridge.contracts.envelope import ContractError
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.contracts.tenant_store import TenantNotFound, TenantStore

# What `tenants add` does with a credentials secret left scheduled for deletion by `tenants remove`.
PendingSecretAction = Literal["fail", "restore", "replace"]


@dataclass
class Onboarded:
    tenant: TenantConfig
    scopes: list[str]
    resource_types: list[str]
    credentials_stored: bool
    kid: str | None
    credentials_action: str | None = None  # "restored" / "replaced" when a pending deletion was resolved


@dataclass
class Removed:
    tenant_id: str
    found: bool
    revocation: str = "none"  # no live token; else revoked / not_supported / revoke_failed / not_attempted
    token_deleted: bool = False
    credentials_scheduled: bool = False
    notes: list[str] = field(default_factory=list)


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
            refresh_token: str | None = None, tokens: TokenStore | None = None,
            pending: PendingSecretAction = "fail") -> Onboarded:
    """Validate, store the credentials (if any were given) and then the config.

    A credentials secret still scheduled for deletion (the tenant was removed) is never used or
    overwritten implicitly: ``pending="restore"`` brings it back (its keys, then the new one on top),
    ``pending="replace"`` deletes it for good and starts a new one; ``"fail"`` says so and stops.
    ``tokens``: the cached access token is dropped, so the next one is issued for this config.
    """
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
    material = private_key_pem is not None or client_secret is not None or refresh_token is not None
    action = _resolve_pending(config.tenant_id, credentials, pending, has_new_material=material)
    if material:
        try:
            creds = credentials.get(config.tenant_id)
        except SecretPendingDeletion:
            raise
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
    if tokens is not None:
        tokens.delete(config.tenant_id)
    tenants.put(stored)
    return Onboarded(tenant=stored, scopes=scopes_for(config.workflows) if config.workflows else [],
                     resource_types=resource_types_for(config.workflows), credentials_stored=creds is not None,
                     kid=kid, credentials_action=action)


def _resolve_pending(tenant_id: str, credentials: CredentialStore, pending: PendingSecretAction, *,
                     has_new_material: bool) -> str | None:
    try:
        credentials.get(tenant_id)
        return None
    except SecretPendingDeletion as err:
        if pending == "restore":
            credentials.restore(tenant_id)
            return "restored"
        if pending == "replace":
            if not has_new_material:  # checked before deleting anything: never leave a tenant keyless
                raise CredentialsError(f"tenant {tenant_id}: replacing the credentials needs new ones (a private "
                                       f"key, a client secret or a refresh token)") from None
            credentials.purge(tenant_id)
            return "replaced"
        raise SecretPendingDeletion(tenant_id, err.name, err.deletion_date) from None
    except CredentialsError:
        return None  # absent or unreadable: the normal path decides


Revoker = Callable[[TenantConfig, TenantCredentials, str], str]


def remove(tenant_id: str, *, tenants: TenantStore, credentials: CredentialStore | None = None,
           tokens: TokenStore | None = None, revoke: Revoker | None = None, delete_credentials: bool = True,
           recovery_days: int = 7) -> Removed:
    """Remove a tenant: revoke its access token where the vendor allows (signed with the tenant's
    credentials), delete the token now (an access token must not outlive its tenant), schedule the
    credentials' deletion (recoverable for ``recovery_days``) unless ``delete_credentials`` is
    False, then drop the config."""
    result = Removed(tenant_id=tenant_id, found=True)
    config: TenantConfig | None
    try:
        config = tenants.get(tenant_id)
    except TenantNotFound:
        config, result.found = None, False
    if tokens is not None:
        cached = tokens.get(tenant_id, fresh=True)
        if cached is not None and cached.is_valid():
            result.revocation = "not_attempted"
            if revoke is not None and config is not None:
                result.revocation = _revoke(config, credentials, cached.access_token.get_secret_value(), revoke,
                                            result)
        tokens.delete(tenant_id)
        result.token_deleted = cached is not None
    if credentials is not None and delete_credentials:
        credentials.delete(tenant_id, recovery_days=recovery_days)
        result.credentials_scheduled = True
    tenants.delete(tenant_id)
    return result


def _revoke(config: TenantConfig, credentials: CredentialStore | None, access_token: str, revoke: Revoker,
            result: Removed) -> str:
    from ehrbridge.auth.token_endpoint import TokenEndpointError

    if credentials is None:
        return "not_attempted"
    try:
        return revoke(config, credentials.get(config.tenant_id), access_token)
    except (TokenEndpointError, CredentialsError) as err:
        detail = err.detail if isinstance(err, TokenEndpointError) else str(err)
        result.notes.append(f"revocation failed ({detail}); the deleted token still works until it expires")
        return "revoke_failed"
