"""Token-refresh state in the ``state`` table: the per-tenant refresh lock, token-endpoint budget,
backoff and the scope coverage (requested / granted / denied types). PHI-free by construction.

Items (pk = ``tenant#{tenant_id}``):
  sk ``token#lock``          owner, lease_until           conditional put = single flight per tenant
  sk ``token#status``        failures, not_before, scopes  what `tenants show` and the poller read
  sk ``token#rate#{minute}`` count                         conditional add = token-endpoint budget
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from ehrbridge.aws.clients import client

_PK = "tenant#{tenant_id}"
_LOCK = "token#lock"
_STATUS = "token#status"
_RATE = "token#rate#{minute}"


@dataclass
class RefreshStatus:
    consecutive_failures: int = 0
    last_success_at: float | None = None
    last_failure_at: float | None = None
    last_failure_reason: str | None = None
    not_before: float | None = None  # token endpoint asked us to wait (429 Retry-After)
    requested_scopes: list[str] = field(default_factory=list)
    granted_scopes: list[str] = field(default_factory=list)
    denied_types: list[str] = field(default_factory=list)  # not granted by the token
    server_denied_types: list[str] = field(default_factory=list)  # granted, yet answered 403

    def skipped_types(self) -> set[str]:
        return set(self.denied_types) | set(self.server_denied_types)


class RefreshState(Protocol):
    def acquire(self, tenant_id: str, owner: str, lease_s: float) -> bool: ...

    def release(self, tenant_id: str, owner: str) -> None: ...

    def reserve_token_request(self, tenant_id: str, limit_per_min: int) -> bool: ...

    def status(self, tenant_id: str) -> RefreshStatus: ...

    def record_success(self, tenant_id: str, *, requested: list[str], granted: list[str],
                       denied: list[str]) -> None: ...

    def record_failure(self, tenant_id: str, reason: str, *, not_before: float | None = None) -> int: ...

    def mark_server_denied(self, tenant_id: str, resource_type: str) -> None: ...

    def clear_server_denied(self, tenant_id: str, resource_type: str) -> None:
        """A re-probe of a 403-denied type succeeded: it is polled again."""
        ...

    def clear(self, tenant_id: str) -> None: ...


class InMemoryRefreshState:
    """Same semantics as the DynamoDB state, for unit tests (thread-safe)."""

    def __init__(self, clock: Any = time.time) -> None:
        self._lock = threading.Lock()
        self._leases: dict[str, tuple[str, float]] = {}
        self._rates: dict[tuple[str, int], int] = {}
        self._status: dict[str, RefreshStatus] = {}
        self.clock = clock

    def acquire(self, tenant_id: str, owner: str, lease_s: float) -> bool:
        now = self.clock()
        with self._lock:
            held = self._leases.get(tenant_id)
            if held and held[1] > now:
                return False
            self._leases[tenant_id] = (owner, now + lease_s)
            return True

    def release(self, tenant_id: str, owner: str) -> None:
        with self._lock:
            if self._leases.get(tenant_id, ("", 0))[0] == owner:
                del self._leases[tenant_id]

    def reserve_token_request(self, tenant_id: str, limit_per_min: int) -> bool:
        key = (tenant_id, int(self.clock() // 60))
        with self._lock:
            if self._rates.get(key, 0) >= limit_per_min:
                return False
            self._rates[key] = self._rates.get(key, 0) + 1
            return True

    def status(self, tenant_id: str) -> RefreshStatus:
        with self._lock:
            current = self._status.get(tenant_id, RefreshStatus())
            return RefreshStatus(**vars(current))

    def record_success(self, tenant_id: str, *, requested: list[str], granted: list[str],
                       denied: list[str]) -> None:
        with self._lock:
            status = self._status.setdefault(tenant_id, RefreshStatus())
            status.consecutive_failures, status.last_success_at, status.not_before = 0, self.clock(), None
            status.requested_scopes, status.granted_scopes, status.denied_types = requested, granted, denied
            status.server_denied_types = [t for t in status.server_denied_types if t not in denied]

    def record_failure(self, tenant_id: str, reason: str, *, not_before: float | None = None) -> int:
        with self._lock:
            status = self._status.setdefault(tenant_id, RefreshStatus())
            status.consecutive_failures += 1
            status.last_failure_at, status.last_failure_reason = self.clock(), reason
            if not_before is not None:
                status.not_before = not_before
            return status.consecutive_failures

    def mark_server_denied(self, tenant_id: str, resource_type: str) -> None:
        with self._lock:
            status = self._status.setdefault(tenant_id, RefreshStatus())
            if resource_type not in status.server_denied_types:
                status.server_denied_types.append(resource_type)

    def clear_server_denied(self, tenant_id: str, resource_type: str) -> None:
        with self._lock:
            status = self._status.get(tenant_id)
            if status is not None:
                status.server_denied_types = [t for t in status.server_denied_types if t != resource_type]

    def clear(self, tenant_id: str) -> None:
        with self._lock:
            self._status.pop(tenant_id, None)
            self._leases.pop(tenant_id, None)


class DynamoRefreshState:
    def __init__(self, table_name: str, ddb: Any = None, clock: Any = time.time) -> None:
        self.table_name = table_name
        self._ddb = ddb
        self.clock = clock

    @property
    def ddb(self) -> Any:
        return self._ddb or client("dynamodb")

    def _key(self, tenant_id: str, sk: str) -> dict[str, Any]:
        return {"pk": {"S": _PK.format(tenant_id=tenant_id)}, "sk": {"S": sk}}

    def acquire(self, tenant_id: str, owner: str, lease_s: float) -> bool:
        now = self.clock()
        try:
            self.ddb.put_item(
                TableName=self.table_name,
                Item={**self._key(tenant_id, _LOCK), "owner": {"S": owner},
                      "lease_until": {"N": f"{now + lease_s:.3f}"},
                      # TTL cleans up locks of crashed holders; the lease check is what counts.
                      "expires_at": {"N": str(int(now + lease_s + 3600))}},
                ConditionExpression="attribute_not_exists(pk) OR lease_until < :now",
                ExpressionAttributeValues={":now": {"N": f"{now:.3f}"}})
            return True
        except self.ddb.exceptions.ConditionalCheckFailedException:
            return False

    def release(self, tenant_id: str, owner: str) -> None:
        # If our lease ran out and someone else holds it now, the condition leaves theirs alone.
        with contextlib.suppress(self.ddb.exceptions.ConditionalCheckFailedException):
            self.ddb.delete_item(TableName=self.table_name, Key=self._key(tenant_id, _LOCK),
                                 ConditionExpression="#o = :me", ExpressionAttributeNames={"#o": "owner"},
                                 ExpressionAttributeValues={":me": {"S": owner}})

    def reserve_token_request(self, tenant_id: str, limit_per_min: int) -> bool:
        now = self.clock()
        minute = int(now // 60)
        try:
            self.ddb.update_item(
                TableName=self.table_name, Key=self._key(tenant_id, _RATE.format(minute=minute)),
                UpdateExpression="ADD #c :one SET expires_at = :ttl",
                ConditionExpression="attribute_not_exists(#c) OR #c < :limit",
                ExpressionAttributeNames={"#c": "count"},
                ExpressionAttributeValues={":one": {"N": "1"}, ":limit": {"N": str(limit_per_min)},
                                           ":ttl": {"N": str(minute * 60 + 3600)}})
            return True
        except self.ddb.exceptions.ConditionalCheckFailedException:
            return False

    def status(self, tenant_id: str) -> RefreshStatus:
        item = self.ddb.get_item(TableName=self.table_name, Key=self._key(tenant_id, _STATUS),
                                 ConsistentRead=True).get("Item") or {}
        return RefreshStatus(
            consecutive_failures=int(item.get("consecutive_failures", {}).get("N", "0")),
            last_success_at=_num(item, "last_success_at"), last_failure_at=_num(item, "last_failure_at"),
            last_failure_reason=item.get("last_failure_reason", {}).get("S"),
            not_before=_num(item, "not_before"),
            requested_scopes=_list(item, "requested_scopes"), granted_scopes=_list(item, "granted_scopes"),
            denied_types=_list(item, "denied_types"), server_denied_types=_list(item, "server_denied_types"))

    def record_success(self, tenant_id: str, *, requested: list[str], granted: list[str],
                       denied: list[str]) -> None:
        current = self.status(tenant_id)
        still_server_denied = [t for t in current.server_denied_types if t not in denied]
        self.ddb.update_item(
            TableName=self.table_name, Key=self._key(tenant_id, _STATUS),
            UpdateExpression="SET consecutive_failures = :zero, last_success_at = :now, requested_scopes = :req, "
                             "granted_scopes = :gr, denied_types = :den, server_denied_types = :sden "
                             "REMOVE not_before",
            ExpressionAttributeValues={":zero": {"N": "0"}, ":now": {"N": f"{self.clock():.3f}"},
                                       ":req": _l(requested), ":gr": _l(granted), ":den": _l(denied),
                                       ":sden": _l(still_server_denied)})

    def record_failure(self, tenant_id: str, reason: str, *, not_before: float | None = None) -> int:
        expression = "ADD consecutive_failures :one SET last_failure_at = :now, last_failure_reason = :why"
        values: dict[str, Any] = {":one": {"N": "1"}, ":now": {"N": f"{self.clock():.3f}"},
                                  ":why": {"S": reason[:200]}}
        if not_before is not None:
            expression += ", not_before = :nb"
            values[":nb"] = {"N": f"{not_before:.3f}"}
        out = self.ddb.update_item(TableName=self.table_name, Key=self._key(tenant_id, _STATUS),
                                   UpdateExpression=expression, ExpressionAttributeValues=values,
                                   ReturnValues="UPDATED_NEW")
        return int(out["Attributes"]["consecutive_failures"]["N"])

    def mark_server_denied(self, tenant_id: str, resource_type: str) -> None:
        current = self.status(tenant_id)
        if resource_type in current.server_denied_types:
            return
        self.ddb.update_item(TableName=self.table_name, Key=self._key(tenant_id, _STATUS),
                             UpdateExpression="SET server_denied_types = :s",
                             ExpressionAttributeValues={":s": _l([*current.server_denied_types, resource_type])})

    def clear_server_denied(self, tenant_id: str, resource_type: str) -> None:
        current = self.status(tenant_id)
        if resource_type not in current.server_denied_types:
            return
        self.ddb.update_item(TableName=self.table_name, Key=self._key(tenant_id, _STATUS),
                             UpdateExpression="SET server_denied_types = :s", ExpressionAttributeValues={
                                 ":s": _l([t for t in current.server_denied_types if t != resource_type])})

    def clear(self, tenant_id: str) -> None:
        for sk in (_STATUS, _LOCK):
            self.ddb.delete_item(TableName=self.table_name, Key=self._key(tenant_id, sk))


def _num(item: dict[str, Any], name: str) -> float | None:
    value = item.get(name, {}).get("N")
    return float(value) if value is not None else None


def _list(item: dict[str, Any], name: str) -> list[str]:
    return [v["S"] for v in item.get(name, {}).get("L", [])]


def _l(values: list[str]) -> dict[str, Any]:
    return {"L": [{"S": v} for v in values]}
