"""The cached access token per tenant: Secrets Manager ``ehrbridge/tenants/{tenant_id}/token``.

Stored with its expiry (from the server's ``expires_in``) and the **granted** scopes, because a
server may grant less than requested. Readers keep an in-process copy until close to expiry so a
FHIR call does not cost a Secrets Manager call.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from ehrbridge import resources
from ehrbridge.auth.credentials import KMS_KEY_ENV, put_secret
from ehrbridge.auth.scopes import GrantedScopes
from ehrbridge.aws.clients import client
from ehrbridge.contracts.tenant import token_secret_name

# Refresh this long before expiry at least; the refresher runs every minute, so a token must
# stay valid one schedule period plus a request beyond the moment it is judged "due".
MIN_REFRESH_MARGIN_S = 120
REFRESH_MARGIN_FRACTION = 0.10


# The token_refresh schedule (EventBridge Scheduler, rate(1 minute)); infra/ deploys this period.
REFRESH_SCHEDULE_S = 60.0
VALIDITY_SKEW_S = 5.0


def refresh_margin_s(lifetime_s: float) -> float:
    """max(120 s, 10 %) of the lifetime, but never more than half of it: a 60 s token would
    otherwise be "due" from birth and every FHIR call would ask for a new one."""
    return min(max(MIN_REFRESH_MARGIN_S, REFRESH_MARGIN_FRACTION * lifetime_s), lifetime_s / 2)


def kept_warm(lifetime_s: float, schedule_s: float = REFRESH_SCHEDULE_S) -> bool:
    """Whether the scheduled refresher can keep this tenant's token valid between two runs.

    A run leaves a token with more than ``refresh_margin_s`` left; it must still be valid one
    period later. Shorter-lived tokens (10-60 s are seen in the field) are refreshed on demand by
    the FHIR client instead: refreshing them every minute only burns the token-endpoint budget.
    """
    return refresh_margin_s(lifetime_s) > schedule_s + VALIDITY_SKEW_S


class CachedToken(BaseModel):
    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)

    schema_version: int = 1
    access_token: SecretStr
    token_type: str = "bearer"  # noqa: S105 - the OAuth token type, not a secret
    issued_at: float
    expires_at: float
    expires_in: float
    requested_scopes: list[str] = Field(default_factory=list)
    granted_scope: str = ""  # raw, as the server wrote it
    kid: str | None = None

    @property
    def lifetime_s(self) -> float:
        return self.expires_at - self.issued_at

    def remaining(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)

    def is_valid(self, now: float | None = None, skew_s: float = VALIDITY_SKEW_S) -> bool:
        return self.remaining(now) > skew_s

    def refresh_due(self, now: float | None = None, jitter_s: float = 0.0) -> bool:
        return self.remaining(now) <= refresh_margin_s(self.lifetime_s) + jitter_s

    def granted(self) -> GrantedScopes:
        return GrantedScopes.parse(self.granted_scope)

    def remaining_ratio(self, now: float | None = None) -> float:
        """Share of the lifetime still left, in [0, 1]: token health judged per tenant's lifetime."""
        if self.lifetime_s <= 0:
            return 0.0
        return min(1.0, max(0.0, self.remaining(now) / self.lifetime_s))

    def same_token(self, access_token: str | None) -> bool:
        return access_token is not None and self.access_token.get_secret_value() == access_token

    def to_secret_string(self) -> str:
        data = self.model_dump(mode="json")
        data["access_token"] = self.access_token.get_secret_value()
        return _dumps(data)


class TokenStore(Protocol):
    def get(self, tenant_id: str, *, fresh: bool = False) -> CachedToken | None: ...

    def put(self, tenant_id: str, token: CachedToken) -> None: ...

    def forget(self, tenant_id: str) -> None: ...

    def delete(self, tenant_id: str) -> None: ...


class InMemoryTokenStore:
    def __init__(self) -> None:
        self._items: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, tenant_id: str, *, fresh: bool = False) -> CachedToken | None:
        with self._lock:
            text = self._items.get(tenant_id)
        return CachedToken.model_validate_json(text) if text else None

    def put(self, tenant_id: str, token: CachedToken) -> None:
        with self._lock:
            self._items[tenant_id] = token.to_secret_string()

    def forget(self, tenant_id: str) -> None:
        with self._lock:
            self._items.pop(tenant_id, None)

    def delete(self, tenant_id: str) -> None:
        self.forget(tenant_id)


class SecretsManagerTokenStore:
    """Token secrets, with a per-process copy reused while it has more than ``local_margin_s`` left
    (or, for a token living less than that, while it is not yet due for refresh)."""

    def __init__(self, kms_key_id: str | None = None, sm: Any = None, local_margin_s: float = 60.0) -> None:
        self.kms_key_id = kms_key_id or os.environ.get(KMS_KEY_ENV) or resources.KMS_KEY_ALIAS
        self._sm = sm
        self.local_margin_s = local_margin_s
        self._local: dict[str, CachedToken] = {}
        self._lock = threading.Lock()

    @property
    def sm(self) -> Any:
        return self._sm or client("secretsmanager")

    def get(self, tenant_id: str, *, fresh: bool = False) -> CachedToken | None:
        if not fresh:
            with self._lock:
                local = self._local.get(tenant_id)
            if local is not None and local.remaining() > min(self.local_margin_s,
                                                             refresh_margin_s(local.lifetime_s)):
                return local
        try:
            text = self.sm.get_secret_value(SecretId=token_secret_name(tenant_id))["SecretString"]
        except (self.sm.exceptions.ResourceNotFoundException, self.sm.exceptions.InvalidRequestException):
            return None  # absent, or scheduled for deletion (tenant removed): no token
        try:
            token = CachedToken.model_validate_json(text)
        except ValidationError:
            return None  # unreadable cache: treat as absent and refresh
        with self._lock:
            self._local[tenant_id] = token
        return token

    def put(self, tenant_id: str, token: CachedToken) -> None:
        put_secret(self.sm, token_secret_name(tenant_id), token.to_secret_string(), self.kms_key_id,
                   tenant_id, "token")
        with self._lock:
            self._local[tenant_id] = token

    def forget(self, tenant_id: str) -> None:
        with self._lock:
            self._local.pop(tenant_id, None)

    def delete(self, tenant_id: str) -> None:
        """Delete the cached token now, no recovery window: a token must not outlive its tenant."""
        from ehrbridge.auth.credentials import purge_secret

        self.forget(tenant_id)
        purge_secret(self.sm, token_secret_name(tenant_id))


def _dumps(data: dict[str, Any]) -> str:
    import json

    return json.dumps(data, separators=(",", ":"))
