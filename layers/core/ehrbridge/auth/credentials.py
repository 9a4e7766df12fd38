"""Tenant credentials: private keys, client secret, refresh token. Only ever in Secrets Manager
(``ehrbridge/tenants/{tenant_id}/credentials``, KMS-encrypted) or, for local use, a PEM file.

Secret fields are ``SecretStr`` so a repr, a log line or a validation error never shows them.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from ehrbridge import resources
from ehrbridge.aws.clients import client
from ehrbridge.contracts.tenant import TenantConfig, credentials_secret_name

KMS_KEY_ENV = "EHRBRIDGE_KMS_KEY_ID"
KeyStatus = Literal["active", "next", "retiring"]


class CredentialsError(RuntimeError):
    """Credentials are missing or unusable. Text names the tenant and the problem, never material."""


class SecretPendingDeletion(CredentialsError):
    """The tenant's secret exists but is scheduled for deletion (``tenants remove`` earlier).

    Neither read nor silently overwritten: the operator restores it or replaces it, deliberately.
    """

    def __init__(self, tenant_id: str, name: str, deletion_date: datetime | None) -> None:
        when = f" on {deletion_date:%Y-%m-%d %H:%M} UTC" if deletion_date else ""
        super().__init__(f"the credentials secret of tenant {tenant_id} ({name}) is scheduled for deletion{when} "
                         f"(tenant removed earlier)")
        self.tenant_id, self.name, self.deletion_date = tenant_id, name, deletion_date


class KeyMaterial(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    kid: str = Field(min_length=1, max_length=256)
    algorithm: Literal["RS384", "ES384"]
    private_key_pem: SecretStr
    status: KeyStatus = "active"
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class TenantCredentials(BaseModel):
    """Everything secret about one tenant. ``keys`` holds the active key and, during a rotation,
    the next key (published, not yet signing) or the retiring one (still published)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    schema_version: Literal[1] = 1
    keys: list[KeyMaterial] = Field(default_factory=list)
    client_secret: SecretStr | None = None
    # Only for apps a vendor issues refresh tokens to (user/patient flows); rotated on every use.
    refresh_token: SecretStr | None = None

    def active_key(self) -> KeyMaterial | None:
        active = [k for k in self.keys if k.status == "active"]
        if len(active) > 1:
            raise CredentialsError("more than one active key; finish the rotation first")
        return active[0] if active else None

    def published_keys(self) -> list[KeyMaterial]:
        """Keys the JWKS must carry: active, next and retiring (vendors cache JWKS for hours)."""
        return list(self.keys)

    def to_secret_string(self) -> str:
        data = self.model_dump(mode="json")
        for entry, key in zip(data["keys"], self.keys, strict=True):
            entry["private_key_pem"] = key.private_key_pem.get_secret_value()
        for name in ("client_secret", "refresh_token"):
            value = getattr(self, name)
            data[name] = value.get_secret_value() if value is not None else None
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_secret_string(cls, text: str, tenant_id: str) -> TenantCredentials:
        try:
            return cls.model_validate_json(text)
        except ValidationError:
            raise CredentialsError(f"credentials secret of tenant {tenant_id} is malformed") from None

    def describe(self) -> dict[str, Any]:
        """PHI- and secret-free summary for the CLI."""
        return {"keys": [{"kid": k.kid, "algorithm": k.algorithm, "status": k.status,
                          "created_at": k.created_at.isoformat()} for k in self.keys],
                "client_secret": self.client_secret is not None, "refresh_token": self.refresh_token is not None}


class CredentialStore(Protocol):
    def get(self, tenant_id: str) -> TenantCredentials: ...

    def put(self, tenant_id: str, credentials: TenantCredentials) -> None: ...

    def delete(self, tenant_id: str, *, recovery_days: int = 7) -> None: ...

    def restore(self, tenant_id: str) -> None: ...

    def purge(self, tenant_id: str) -> None: ...


class InMemoryCredentialStore:
    """Same semantics as Secrets Manager, deletion window included (for unit tests)."""

    def __init__(self) -> None:
        self._items: dict[str, str] = {}
        self._deleted: dict[str, str] = {}

    def get(self, tenant_id: str) -> TenantCredentials:
        if tenant_id in self._deleted:
            raise SecretPendingDeletion(tenant_id, credentials_secret_name(tenant_id), None)
        if tenant_id not in self._items:
            raise CredentialsError(f"no credentials stored for tenant {tenant_id}")
        return TenantCredentials.from_secret_string(self._items[tenant_id], tenant_id)

    def put(self, tenant_id: str, credentials: TenantCredentials) -> None:
        if tenant_id in self._deleted:
            raise SecretPendingDeletion(tenant_id, credentials_secret_name(tenant_id), None)
        self._items[tenant_id] = credentials.to_secret_string()

    def delete(self, tenant_id: str, *, recovery_days: int = 7) -> None:
        if tenant_id in self._items:
            self._deleted[tenant_id] = self._items.pop(tenant_id)

    def restore(self, tenant_id: str) -> None:
        if tenant_id in self._deleted:
            self._items[tenant_id] = self._deleted.pop(tenant_id)

    def purge(self, tenant_id: str) -> None:
        self._items.pop(tenant_id, None)
        self._deleted.pop(tenant_id, None)


class SecretsManagerCredentialStore:
    """One secret per tenant, encrypted with the ehrbridge KMS key (not the AWS-managed default)."""

    def __init__(self, kms_key_id: str | None = None, sm: Any = None) -> None:
        self.kms_key_id = kms_key_id or os.environ.get(KMS_KEY_ENV) or resources.KMS_KEY_ALIAS
        self._sm = sm

    @property
    def sm(self) -> Any:
        return self._sm or client("secretsmanager")

    def get(self, tenant_id: str) -> TenantCredentials:
        name = credentials_secret_name(tenant_id)
        try:
            value = self.sm.get_secret_value(SecretId=name)["SecretString"]
        except self.sm.exceptions.ResourceNotFoundException:
            raise CredentialsError(f"no credentials stored for tenant {tenant_id} ({name})") from None
        except self.sm.exceptions.InvalidRequestException:
            deletion = pending_deletion(self.sm, name)
            if deletion is None:
                raise
            raise SecretPendingDeletion(tenant_id, name, deletion) from None
        return TenantCredentials.from_secret_string(value, tenant_id)

    def put(self, tenant_id: str, credentials: TenantCredentials) -> None:
        name = credentials_secret_name(tenant_id)
        try:
            put_secret(self.sm, name, credentials.to_secret_string(), self.kms_key_id, tenant_id, "credentials")
        except self.sm.exceptions.InvalidRequestException:
            # Secrets Manager refuses a new version of a secret scheduled for deletion: the
            # operator restores or replaces it deliberately (`tenants add --restore/--replace`).
            deletion = pending_deletion(self.sm, name)
            if deletion is None:
                raise
            raise SecretPendingDeletion(tenant_id, name, deletion) from None

    def delete(self, tenant_id: str, *, recovery_days: int = 7) -> None:
        with contextlib.suppress(self.sm.exceptions.ResourceNotFoundException):
            self.sm.delete_secret(SecretId=credentials_secret_name(tenant_id), RecoveryWindowInDays=recovery_days)

    def restore(self, tenant_id: str) -> None:
        """Cancel a scheduled deletion: the secret (all its keys and versions) comes back as it was."""
        self.sm.restore_secret(SecretId=credentials_secret_name(tenant_id))

    def purge(self, tenant_id: str) -> None:
        """Delete now, without a recovery window, so a new secret of the same name can be created."""
        purge_secret(self.sm, credentials_secret_name(tenant_id))


def pending_deletion(sm: Any, name: str) -> datetime | None:
    """When the secret is scheduled for deletion, that date; None if it is live or absent."""
    from botocore.exceptions import ClientError

    try:
        described = sm.describe_secret(SecretId=name)
    except ClientError:  # absent, or no DescribeSecret permission (the functions' roles): unknown
        return None
    deleted = described.get("DeletedDate")
    return deleted if isinstance(deleted, datetime) or deleted is None else None


def purge_secret(sm: Any, name: str, *, wait_s: float = 30.0) -> None:
    """Force-delete a secret and wait until its name is free (deletion is asynchronous in AWS)."""
    import time

    with contextlib.suppress(sm.exceptions.ResourceNotFoundException):
        sm.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            sm.describe_secret(SecretId=name)
        except sm.exceptions.ResourceNotFoundException:
            return
        time.sleep(0.5)


def put_secret(sm: Any, name: str, value: str, kms_key_id: str, tenant_id: str, kind: str) -> None:
    """Create the secret on first use (with our KMS key and tags), else add a new version."""
    try:
        sm.put_secret_value(SecretId=name, SecretString=value)
    except sm.exceptions.ResourceNotFoundException:
        sm.create_secret(Name=name, SecretString=value, KmsKeyId=kms_key_id,
                         Description=f"ehrbridge tenant {kind}",
                         Tags=[{"Key": "ehrbridge:tenant", "Value": tenant_id},
                               {"Key": "ehrbridge:kind", "Value": kind}])


def credentials_from_file(config: TenantConfig) -> TenantCredentials:
    """Local/CLI use: the YAML's ``private_key_file`` as the one active key."""
    if config.private_key_file is None:
        raise CredentialsError(f"tenant {config.tenant_id} has no private_key_file")
    if not config.key_id:
        raise CredentialsError(f"tenant {config.tenant_id}: key_id is required with private_key_file")
    try:
        pem = config.private_key_file.read_text(encoding="ascii")
    except OSError as err:
        raise CredentialsError(f"tenant {config.tenant_id}: cannot read private_key_file ({err.strerror})") from None
    from ehrbridge.auth.keys import load_private_key

    load_private_key(pem, config.algorithm)  # fail now, with a clear reason, not at the token endpoint
    return TenantCredentials(keys=[KeyMaterial(kid=config.key_id, algorithm=config.algorithm,
                                               private_key_pem=SecretStr(pem))])
