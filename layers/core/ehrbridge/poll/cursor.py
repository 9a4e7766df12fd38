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

Roster items expire: each carries ``expires_at`` (the state table's DynamoDB TTL attribute) =
last activity + ``roster_expiry_s`` (default 90 days, ``EHRBRIDGE_ROSTER_EXPIRY_DAYS``). Activity is an
ADT naming the patient, a Patient version seen by a poll, or a per-patient crawl that brought new
records for the patient; each pushes the expiry out. Reads skip items already past ``expires_at``
(TTL deletes lazily, up to days later). A merge (ADT A40, or a polled Patient with a ``replaced-by``
link) retires the merged-away entry, so the survivor is crawled instead of the old id.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from ehrbridge.aws.clients import client

_PK = "tenant#{tenant_id}"
_SK = "poll#{resource_type}"
_ROSTER = "roster#"
_ROSTER_IDENT = "rosterid#"
ROSTER_EXPIRY_ENV = "EHRBRIDGE_ROSTER_EXPIRY_DAYS"
DEFAULT_ROSTER_EXPIRY_DAYS = 90.0
# A pending identifier counts as "stuck" (the unresolved-roster alarm's gauge) once it has failed this
# many resolutions and is at least this old: a patient the EHR registers a little after the ADT is not.
STUCK_AFTER_ATTEMPTS = 3
STUCK_AFTER_S = 3600.0
# An entry that did not resolve is asked again after 5 min, 10, 20, ... at most every 6 h: a patient the
# EHR does not know costs a few searches a day, not one per step of every per-patient type.
RETRY_BASE_S = 300.0
RETRY_MAX_S = 6 * 3600.0


def default_roster_expiry_s() -> float:
    """Roster entries with no activity for this long expire (``EHRBRIDGE_ROSTER_EXPIRY_DAYS``, default 90)."""
    return float(os.environ.get(ROSTER_EXPIRY_ENV, DEFAULT_ROSTER_EXPIRY_DAYS)) * 86_400


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
    created_at: float | None = None  # first ADT naming it (None: written before this was recorded)
    last_attempt_at: float | None = None  # the last failed resolution

    def due(self, now: float) -> bool:
        """Time for another resolution (exponential backoff after failures)."""
        if self.attempts == 0 or self.last_attempt_at is None:
            return True
        return now >= self.last_attempt_at + min(RETRY_MAX_S, RETRY_BASE_S * 2 ** min(self.attempts - 1, 16))

    def stuck(self, now: float) -> bool:
        """Kept failing: several resolutions and over an hour old (age unknown: attempts decide)."""
        return self.attempts >= STUCK_AFTER_ATTEMPTS and (self.created_at is None
                                                          or now - self.created_at >= STUCK_AFTER_S)


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

    def retire_roster_identifier(self, tenant_id: str, system: str, value: str) -> bool:
        """A merged-away patient (A40 MRG-1): drop its entry and the Patient id it resolved to; True if known."""
        ...

    def remove_from_roster(self, tenant_id: str, patient_ids: set[str]) -> None: ...


class InMemoryCursorStore:
    def __init__(self, *, roster_expiry_s: float | None = None, clock: Callable[[], float] = time.time) -> None:
        self._items: dict[tuple[str, str], Cursor] = {}
        self._rosters: dict[str, dict[str, float]] = {}  # tenant -> patient id -> expires_at
        self._identifiers: dict[str, dict[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.writes = 0
        self.roster_expiry_s = roster_expiry_s if roster_expiry_s is not None else default_roster_expiry_s()
        self.clock = clock

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
        now = self.clock()
        with self._lock:
            return sorted(p for p, expires in self._rosters.get(tenant_id, {}).items() if expires > now)

    def add_to_roster(self, tenant_id: str, patient_ids: Iterable[str]) -> None:
        expires = self.clock() + self.roster_expiry_s
        with self._lock:
            self._rosters.setdefault(tenant_id, {}).update(dict.fromkeys(patient_ids, expires))

    def remove_from_roster(self, tenant_id: str, patient_ids: set[str]) -> None:
        with self._lock:
            for patient_id in patient_ids:
                self._rosters.get(tenant_id, {}).pop(patient_id, None)

    def add_roster_identifier(self, tenant_id: str, system: str, value: str) -> bool:
        key = identifier_key(system, value)
        now = self.clock()
        with self._lock:
            entries = self._identifiers.setdefault(tenant_id, {})
            entry = entries.get(key)
            new = entry is None or entry["expires_at"] <= now
            if new:
                entry = entries[key] = {"system": system, "value": value, "attempts": 0, "patient_id": None,
                                        "created_at": now}
            entry["expires_at"] = now + self.roster_expiry_s  # type: ignore[index]
            patient_id = entry["patient_id"]  # type: ignore[index]
        if patient_id is not None:
            self.add_to_roster(tenant_id, {patient_id})  # the ADT is activity for the resolved patient too
        return new

    def pending_roster_identifiers(self, tenant_id: str) -> list[RosterIdentifier]:
        now = self.clock()
        with self._lock:
            return [RosterIdentifier(k, e["system"], e["value"], e["attempts"], e["created_at"],
                                     e.get("last_attempt_at"))
                    for k, e in sorted(self._identifiers.get(tenant_id, {}).items())
                    if e["patient_id"] is None and e["expires_at"] > now]

    def resolve_roster_identifier(self, tenant_id: str, key: str, patient_id: str) -> None:
        with self._lock:
            entry = self._identifiers.get(tenant_id, {}).get(key)
            if entry is None:
                return  # retired by a merge meanwhile
            entry["patient_id"] = patient_id
        self.add_to_roster(tenant_id, {patient_id})

    def roster_identifier_unresolved(self, tenant_id: str, key: str) -> None:
        with self._lock:
            entry = self._identifiers.get(tenant_id, {}).get(key)
            if entry is not None:
                entry["attempts"] += 1
                entry["last_attempt_at"] = self.clock()

    def retire_roster_identifier(self, tenant_id: str, system: str, value: str) -> bool:
        with self._lock:
            entry = self._identifiers.get(tenant_id, {}).pop(identifier_key(system, value), None)
        if entry is not None and entry["patient_id"] is not None:
            self.remove_from_roster(tenant_id, {entry["patient_id"]})
        return entry is not None

    def dump(self) -> dict[str, Any]:
        with self._lock:
            return {"cursors": [_to_json(c) for c in self._items.values()],
                    "rosters": {t: sorted(ids) for t, ids in self._rosters.items()}}

    def load(self, data: dict[str, Any]) -> None:
        for item in data.get("cursors", []):
            cursor = _from_json(item)
            with self._lock:
                self._items[(cursor.tenant_id, cursor.resource_type)] = cursor
        for tenant_id, ids in data.get("rosters", {}).items():
            self.add_to_roster(tenant_id, ids)


class DynamoCursorStore:
    def __init__(self, table_name: str, ddb: Any = None, *, roster_expiry_s: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.table_name = table_name
        self._ddb = ddb
        self.roster_expiry_s = roster_expiry_s if roster_expiry_s is not None else default_roster_expiry_s()
        self.clock = clock
        self._identifiers_dated: set[str] = set()  # tenants whose older rosterid# items got an expiry here

    def _expiry(self) -> dict[str, str]:
        return {"N": str(int(self.clock() + self.roster_expiry_s))}

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
        undated: set[str] = set()
        paginator = self.ddb.get_paginator("query")
        for page in paginator.paginate(TableName=self.table_name, KeyConditionExpression="pk = :pk AND "
                                       "begins_with(sk, :r)", FilterExpression="attribute_not_exists(expires_at) "
                                       "OR expires_at > :now", ExpressionAttributeValues={
                                           ":pk": {"S": _PK.format(tenant_id=tenant_id)}, ":r": {"S": _ROSTER},
                                           ":now": {"N": str(int(self.clock()))}},
                                       ProjectionExpression="sk, expires_at"):
            for item in page.get("Items", []):
                patient_id = item["sk"]["S"][len(_ROSTER):]
                ids.append(patient_id)
                if "expires_at" not in item:
                    undated.add(patient_id)
        if undated:
            self.add_to_roster(tenant_id, undated)  # written before entries expired: their clock starts now
        if tenant_id not in self._identifiers_dated:
            self._date_identifiers(tenant_id)
        return sorted(ids)

    def _date_identifiers(self, tenant_id: str) -> None:
        """Identifier entries written before expiry existed get one (once per tenant per process)."""
        paginator = self.ddb.get_paginator("query")
        for page in paginator.paginate(TableName=self.table_name, KeyConditionExpression="pk = :pk AND "
                                       "begins_with(sk, :r)", FilterExpression="attribute_not_exists(expires_at)",
                                       ExpressionAttributeValues={":pk": {"S": _PK.format(tenant_id=tenant_id)},
                                                                  ":r": {"S": _ROSTER_IDENT}},
                                       ProjectionExpression="pk, sk"):
            for item in page.get("Items", []):
                with contextlib.suppress(self.ddb.exceptions.ConditionalCheckFailedException):
                    self.ddb.update_item(TableName=self.table_name, Key={"pk": item["pk"], "sk": item["sk"]},
                                         UpdateExpression="SET expires_at = if_not_exists(expires_at, :exp)",
                                         ConditionExpression="attribute_exists(pk)",
                                         ExpressionAttributeValues={":exp": self._expiry()})
        self._identifiers_dated.add(tenant_id)

    def remove_from_roster(self, tenant_id: str, patient_ids: set[str]) -> None:
        for patient_id in sorted(patient_ids):
            self.ddb.delete_item(TableName=self.table_name, Key=self._key(tenant_id, _ROSTER + patient_id))

    def add_to_roster(self, tenant_id: str, patient_ids: Iterable[str]) -> None:
        """Put (or re-put: activity pushes the expiry out) each patient on the roster."""
        items = sorted(set(patient_ids))
        expiry = self._expiry()
        for start in range(0, len(items), 25):
            requests = [{"PutRequest": {"Item": {**self._key(tenant_id, _ROSTER + pid), "expires_at": expiry}}}
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
        """Record (or, on every further ADT, keep alive) the entry; True if it is new (or had expired)."""
        key = self._key(tenant_id, _ROSTER_IDENT + identifier_key(system, value))
        now = int(self.clock())
        old = self.ddb.update_item(
            TableName=self.table_name, Key=key, ReturnValues="ALL_OLD",
            UpdateExpression="SET #s = :s, #v = :v, expires_at = :exp, attempts = if_not_exists(attempts, :zero), "
                             "created_at = if_not_exists(created_at, :now)",
            ExpressionAttributeNames={"#s": "system", "#v": "value"},
            ExpressionAttributeValues={":s": {"S": system}, ":v": {"S": value}, ":exp": self._expiry(),
                                       ":zero": {"N": "0"}, ":now": {"N": str(now)}}).get("Attributes") or {}
        patient_id = old.get("patient_id", {}).get("S")
        if patient_id:
            self.add_to_roster(tenant_id, {patient_id})  # the ADT is activity for the resolved patient too
        expired = "expires_at" in old and int(old["expires_at"]["N"]) <= now
        return not old or expired

    def pending_roster_identifiers(self, tenant_id: str) -> list[RosterIdentifier]:
        out: list[RosterIdentifier] = []
        paginator = self.ddb.get_paginator("query")
        for page in paginator.paginate(
                TableName=self.table_name, KeyConditionExpression="pk = :pk AND begins_with(sk, :r)",
                FilterExpression="attribute_not_exists(patient_id) AND (attribute_not_exists(expires_at) "
                                 "OR expires_at > :now)", ConsistentRead=True,
                ExpressionAttributeValues={":pk": {"S": _PK.format(tenant_id=tenant_id)},
                                           ":r": {"S": _ROSTER_IDENT}, ":now": {"N": str(int(self.clock()))}}):
            out.extend(RosterIdentifier(item["sk"]["S"][len(_ROSTER_IDENT):], item["system"]["S"],
                                        item["value"]["S"], int(item.get("attempts", {}).get("N", "0")),
                                        float(item["created_at"]["N"]) if "created_at" in item else None,
                                        float(item["last_attempt_at"]["N"]) if "last_attempt_at" in item else None)
                       for item in page.get("Items", []))
        return out

    def resolve_roster_identifier(self, tenant_id: str, key: str, patient_id: str) -> None:
        # Roster first: a crash between the two writes resolves again next time, never loses the patient.
        key_item = self._key(tenant_id, _ROSTER_IDENT + key)
        if "Item" not in self.ddb.get_item(TableName=self.table_name, Key=key_item, ConsistentRead=True,
                                           ProjectionExpression="pk"):
            return  # retired by a merge while it was being resolved: the merged-away patient stays off
        self.add_to_roster(tenant_id, {patient_id})
        with contextlib.suppress(self.ddb.exceptions.ConditionalCheckFailedException):  # retired meanwhile
            self.ddb.update_item(TableName=self.table_name, Key=self._key(tenant_id, _ROSTER_IDENT + key),
                                 UpdateExpression="SET patient_id = :p", ConditionExpression="attribute_exists(pk)",
                                 ExpressionAttributeValues={":p": {"S": patient_id}})

    def roster_identifier_unresolved(self, tenant_id: str, key: str) -> None:
        # Only an entry that still exists: a merge may have retired it meanwhile (no resurrected stub).
        with contextlib.suppress(self.ddb.exceptions.ConditionalCheckFailedException):
            self.ddb.update_item(TableName=self.table_name, Key=self._key(tenant_id, _ROSTER_IDENT + key),
                                 UpdateExpression="ADD attempts :one SET last_attempt_at = :now",
                                 ConditionExpression="attribute_exists(pk)", ExpressionAttributeValues={
                                     ":one": {"N": "1"}, ":now": {"N": str(int(self.clock()))}})

    def retire_roster_identifier(self, tenant_id: str, system: str, value: str) -> bool:
        old = self.ddb.delete_item(TableName=self.table_name, ReturnValues="ALL_OLD", Key=self._key(
            tenant_id, _ROSTER_IDENT + identifier_key(system, value))).get("Attributes") or {}
        patient_id = old.get("patient_id", {}).get("S")
        if patient_id:
            self.remove_from_roster(tenant_id, {patient_id})
        return bool(old)


def _to_json(cursor: Cursor) -> dict[str, Any]:
    return asdict(cursor)


def _from_json(data: dict[str, Any]) -> Cursor:
    window = data.get("window")
    fields = {k: v for k, v in data.items() if k != "window"}
    return Cursor(**fields, window=Window(**window) if window else None)


__all__ = ["Cursor", "CursorConflict", "CursorStore", "DynamoCursorStore", "InMemoryCursorStore", "RosterIdentifier",
           "Window", "default_roster_expiry_s", "identifier_key"]
