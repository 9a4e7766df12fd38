"""Poll cursors: per (tenant, resource type), the watermark and the window in progress.

State-table items (pk = ``tenant#{tenant_id}``, PHI-free except the opaque resume link and the
roster's vendor patient ids, which stay in the KMS-encrypted table and never reach logs):
  sk ``poll#{type}``          watermark, window (since, server time, resume link / keyset), version
  sk ``roster#{patient_id}``  patients known to the tenant (per-patient crawls where a vendor needs patient=)
  sk ``rosterid#{digest}``    a patient known by an identifier only (ADT PID-3: system + value attributes),
                              resolved by the poller to a Patient id (cached as ``patient_id``); the key is
                              a digest so the MRN never appears in a key, an error message or a log

Every write is conditional on the version read (optimistic concurrency): two pollers that somehow
crawl the same pair cannot move one watermark past the other's unfinished window.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from ehrbridge.aws.clients import client

_PK = "tenant#{tenant_id}"
_SK = "poll#{resource_type}"
_ROSTER = "roster#"
_ROSTER_IDENT = "rosterid#"


def identifier_key(system: str, value: str) -> str:
    """Stable, PHI-free key of a patient identifier (re-delivery of the same ADT hits the same item)."""
    return hashlib.sha256(f"{system}|{value}".encode()).hexdigest()[:40]


@dataclass(frozen=True)
class RosterIdentifier:
    """A roster entry known by identifier only, waiting to be resolved to the vendor's Patient id."""

    key: str
    system: str
    value: str
    attempts: int = 0


class CursorConflict(RuntimeError):
    """Someone else wrote this cursor since we read it; our view is stale."""


@dataclass(frozen=True)
class Window:
    """One incremental window: everything with lastUpdated > ``since`` as of ``server_time``."""

    since: str | None  # the _lastUpdated lower bound (None: from the beginning)
    mode: str = ""  # the poller mode the window was opened in; kept until it closes
    server_time: str | None = None  # server time at the window's first page
    resume_url: str | None = None  # opaque next link to continue from
    keyset_from: str | None = None  # keyset position: re-query with _lastUpdated=ge{this}
    # records already delivered at exactly keyset_from: the re-query asks for that many more, so
    # re-reading them does not cost an extra page
    keyset_ties: int = 0
    newest_seen: str | None = None  # newest lastUpdated delivered in this window
    pages: int = 0
    patient_after: str | None = None  # per-patient mode: the last roster patient finished (ids sorted)
    restarts: int = 0
    # bulk mode: the export's status URL, how many output files are delivered, its transactionTime
    bulk_status_url: str | None = None
    bulk_done: int = 0
    bulk_transaction_time: str | None = None


@dataclass(frozen=True)
class Cursor:
    tenant_id: str
    resource_type: str
    watermark: str | None = None
    version: int = 0
    window: Window | None = None
    dispatched_at: float | None = None
    first_dispatched_at: float | None = None  # staleness of a pair that never completed counts from here
    completed_at: float | None = None
    not_before: float | None = None
    # A 403 denial of the type (the flag itself is ``server_denied_types`` in the tenant's token status):
    # when it started, when it was last probed (403 or re-probe) and the granted scopes then. The
    # dispatcher re-probes after an interval, or at once when the granted scopes differ from these.
    denied_at: float | None = None
    denied_probed_at: float | None = None
    denied_scopes: str | None = None

    def with_window(self, window: Window | None) -> Cursor:
        return replace(self, window=window)


class CursorStore(Protocol):
    def get(self, tenant_id: str, resource_type: str) -> Cursor: ...

    def put(self, cursor: Cursor) -> Cursor:
        """Write ``cursor`` if the stored version is still ``cursor.version``; returns it with version + 1."""
        ...

    def roster(self, tenant_id: str) -> list[str]: ...

    def add_to_roster(self, tenant_id: str, patient_ids: set[str]) -> None: ...

    def add_roster_identifier(self, tenant_id: str, system: str, value: str) -> bool:
        """Record a patient by identifier (idempotent); True if the entry is new."""
        ...

    def pending_roster_identifiers(self, tenant_id: str) -> list[RosterIdentifier]: ...

    def resolve_roster_identifier(self, tenant_id: str, key: str, patient_id: str) -> None:
        """Cache the resolved id on the entry and put the patient on the roster."""
        ...

    def roster_identifier_unresolved(self, tenant_id: str, key: str) -> None:
        """Count a failed resolution; the entry stays pending for the next window."""
        ...


class InMemoryCursorStore:
    def __init__(self) -> None:
        self._items: dict[tuple[str, str], Cursor] = {}
        self._rosters: dict[str, set[str]] = {}
        self._identifiers: dict[str, dict[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.writes = 0

    def get(self, tenant_id: str, resource_type: str) -> Cursor:
        with self._lock:
            return self._items.get((tenant_id, resource_type)) or Cursor(tenant_id, resource_type)

    def put(self, cursor: Cursor) -> Cursor:
        key = (cursor.tenant_id, cursor.resource_type)
        with self._lock:
            stored = self._items.get(key)
            if (stored.version if stored else 0) != cursor.version:
                raise CursorConflict(f"cursor {cursor.resource_type} changed concurrently")
            out = replace(cursor, version=cursor.version + 1)
            self._items[key] = out
            self.writes += 1
            return out

    def roster(self, tenant_id: str) -> list[str]:
        with self._lock:
            return sorted(self._rosters.get(tenant_id, set()))

    def add_to_roster(self, tenant_id: str, patient_ids: set[str]) -> None:
        with self._lock:
            self._rosters.setdefault(tenant_id, set()).update(patient_ids)

    def add_roster_identifier(self, tenant_id: str, system: str, value: str) -> bool:
        key = identifier_key(system, value)
        with self._lock:
            entries = self._identifiers.setdefault(tenant_id, {})
            if key in entries:
                return False
            entries[key] = {"system": system, "value": value, "attempts": 0, "patient_id": None}
            return True

    def pending_roster_identifiers(self, tenant_id: str) -> list[RosterIdentifier]:
        with self._lock:
            return [RosterIdentifier(k, e["system"], e["value"], e["attempts"])
                    for k, e in sorted(self._identifiers.get(tenant_id, {}).items()) if e["patient_id"] is None]

    def resolve_roster_identifier(self, tenant_id: str, key: str, patient_id: str) -> None:
        with self._lock:
            self._identifiers[tenant_id][key]["patient_id"] = patient_id
            self._rosters.setdefault(tenant_id, set()).add(patient_id)

    def roster_identifier_unresolved(self, tenant_id: str, key: str) -> None:
        with self._lock:
            self._identifiers[tenant_id][key]["attempts"] += 1

    def dump(self) -> dict[str, Any]:
        with self._lock:
            return {"cursors": [_to_json(c) for c in self._items.values()],
                    "rosters": {t: sorted(ids) for t, ids in self._rosters.items()}}

    def load(self, data: dict[str, Any]) -> None:
        with self._lock:
            for item in data.get("cursors", []):
                cursor = _from_json(item)
                self._items[(cursor.tenant_id, cursor.resource_type)] = cursor
            for tenant_id, ids in data.get("rosters", {}).items():
                self._rosters.setdefault(tenant_id, set()).update(ids)


class DynamoCursorStore:
    def __init__(self, table_name: str, ddb: Any = None) -> None:
        self.table_name = table_name
        self._ddb = ddb

    @property
    def ddb(self) -> Any:
        return self._ddb or client("dynamodb")

    def _key(self, tenant_id: str, sk: str) -> dict[str, Any]:
        return {"pk": {"S": _PK.format(tenant_id=tenant_id)}, "sk": {"S": sk}}

    def get(self, tenant_id: str, resource_type: str) -> Cursor:
        item = self.ddb.get_item(TableName=self.table_name, Key=self._key(tenant_id, _SK.format(
            resource_type=resource_type)), ConsistentRead=True).get("Item")
        if not item:
            return Cursor(tenant_id, resource_type)
        return _from_json(json.loads(item["cursor"]["S"]))

    def put(self, cursor: Cursor) -> Cursor:
        out = replace(cursor, version=cursor.version + 1)
        key = self._key(cursor.tenant_id, _SK.format(resource_type=cursor.resource_type))
        condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
        if cursor.version:
            condition = {"ConditionExpression": "#v = :v", "ExpressionAttributeNames": {"#v": "version"},
                         "ExpressionAttributeValues": {":v": {"N": str(cursor.version)}}}
        try:
            self.ddb.put_item(TableName=self.table_name, Item={
                **key, "cursor": {"S": json.dumps(_to_json(out), separators=(",", ":"))},
                "version": {"N": str(out.version)}}, **condition)
        except self.ddb.exceptions.ConditionalCheckFailedException:
            raise CursorConflict(f"cursor {cursor.resource_type} changed concurrently") from None
        return out

    def roster(self, tenant_id: str) -> list[str]:
        ids: list[str] = []
        paginator = self.ddb.get_paginator("query")
        for page in paginator.paginate(TableName=self.table_name, KeyConditionExpression="pk = :pk AND "
                                       "begins_with(sk, :r)", ExpressionAttributeValues={
                                           ":pk": {"S": _PK.format(tenant_id=tenant_id)}, ":r": {"S": _ROSTER}},
                                       ProjectionExpression="sk"):
            ids.extend(item["sk"]["S"][len(_ROSTER):] for item in page.get("Items", []))
        return sorted(ids)

    def add_to_roster(self, tenant_id: str, patient_ids: set[str]) -> None:
        items = sorted(patient_ids)
        for start in range(0, len(items), 25):
            requests = [{"PutRequest": {"Item": self._key(tenant_id, _ROSTER + pid)}}
                        for pid in items[start:start + 25]]
            pending: dict[str, Any] = {self.table_name: requests}
            for _ in range(5):
                unprocessed = self.ddb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
                if not unprocessed:
                    break
                pending = unprocessed
            else:
                raise RuntimeError("roster write still throttled after 5 attempts")  # retried by SQS

    def add_roster_identifier(self, tenant_id: str, system: str, value: str) -> bool:
        key = self._key(tenant_id, _ROSTER_IDENT + identifier_key(system, value))
        try:
            self.ddb.put_item(TableName=self.table_name, Item={
                **key, "system": {"S": system}, "value": {"S": value}, "attempts": {"N": "0"}},
                ConditionExpression="attribute_not_exists(pk)")
        except self.ddb.exceptions.ConditionalCheckFailedException:
            return False  # re-delivery, or the patient was already known by this identifier
        return True

    def pending_roster_identifiers(self, tenant_id: str) -> list[RosterIdentifier]:
        out: list[RosterIdentifier] = []
        paginator = self.ddb.get_paginator("query")
        for page in paginator.paginate(
                TableName=self.table_name, KeyConditionExpression="pk = :pk AND begins_with(sk, :r)",
                FilterExpression="attribute_not_exists(patient_id)", ConsistentRead=True,
                ExpressionAttributeValues={":pk": {"S": _PK.format(tenant_id=tenant_id)},
                                           ":r": {"S": _ROSTER_IDENT}}):
            out.extend(RosterIdentifier(item["sk"]["S"][len(_ROSTER_IDENT):], item["system"]["S"],
                                        item["value"]["S"], int(item.get("attempts", {}).get("N", "0")))
                       for item in page.get("Items", []))
        return out

    def resolve_roster_identifier(self, tenant_id: str, key: str, patient_id: str) -> None:
        # Roster first: a crash between the two writes resolves again next time, never loses the patient.
        self.add_to_roster(tenant_id, {patient_id})
        self.ddb.update_item(TableName=self.table_name, Key=self._key(tenant_id, _ROSTER_IDENT + key),
                             UpdateExpression="SET patient_id = :p", ExpressionAttributeValues={
                                 ":p": {"S": patient_id}})

    def roster_identifier_unresolved(self, tenant_id: str, key: str) -> None:
        self.ddb.update_item(TableName=self.table_name, Key=self._key(tenant_id, _ROSTER_IDENT + key),
                             UpdateExpression="ADD attempts :one", ExpressionAttributeValues={":one": {"N": "1"}})


def _to_json(cursor: Cursor) -> dict[str, Any]:
    return asdict(cursor)


def _from_json(data: dict[str, Any]) -> Cursor:
    window = data.get("window")
    fields = {k: v for k, v in data.items() if k != "window"}
    return Cursor(**fields, window=Window(**window) if window else None)


__all__ = ["Cursor", "CursorConflict", "CursorStore", "DynamoCursorStore", "InMemoryCursorStore", "RosterIdentifier",
           "Window", "identifier_key"]
