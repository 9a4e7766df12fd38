"""The MPI store: one interface, two implementations (DynamoDB single-table, and in memory).

Resolving one record costs at most three round trips: ``blocks`` (read the blocking buckets),
``records`` (read the candidates and the record itself), ``commit`` (one atomic write of the
record, its bucket memberships, enterprise items, history events and review items). The admin
reads (members, history, reviews) are off the per-record path.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from ehrbridge.identity.blocking import MAX_BUCKET

LinkSource = Literal["auto", "manual", "merge", "new"]


class ConflictError(RuntimeError):
    """Another writer changed the record since it was read; retry the message."""


@dataclass(slots=True)
class SourceRecord:
    source_key: str  # the source Patient.id
    eid: str  # enterprise patient id it is linked to
    person: dict[str, Any]
    link_source: LinkSource = "new"
    status: Literal["active", "retired"] = "active"
    retired_into: str | None = None
    not_eids: list[str] = field(default_factory=list)  # manual "certainly-not" decisions
    review_id: str | None = None  # open review, if any
    keys: list[str] = field(default_factory=list)  # blocking keys it is listed under
    fingerprint: str = ""
    score: float | None = None
    version: int = 0
    updated_at: str = ""
    # Outbox-lite: the link changes the last message produced, re-sent if that message is redelivered
    # after the write succeeded but before its events went out.
    last_message_id: str | None = None
    last_changes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceRecord:
        return cls(**{k: v for k, v in data.items() if k in _RECORD_FIELDS})


_RECORD_FIELDS = frozenset(SourceRecord.__dataclass_fields__)


@dataclass
class Enterprise:
    eid: str
    status: Literal["active", "merged"] = "active"
    merged_into: str | None = None
    created_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HistoryEvent:
    """One append-only entry in an enterprise patient's link history."""

    eid: str
    at: str
    seq: str  # unique, sortable after ``at``
    change: str  # created | linked | relinked | merged | unmerged | unlinked | review-opened | review-resolved ...
    source_key: str
    by: str  # algorithm | manual | adt
    from_eid: str | None = None
    to_eid: str | None = None
    score: float | None = None
    reason: str | None = None
    message_id: str | None = None
    moved: list[str] = field(default_factory=list)  # members moved along (merges), for unmerge by replay

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ReviewItem:
    review_id: str
    source_key: str
    provisional_eid: str
    candidates: list[dict[str, Any]]  # eid, source_key, score, grade, weights (bits per field), levels
    created_at: str
    status: Literal["open", "resolved"] = "open"
    resolution: str | None = None
    resolved_by: str | None = None
    resolved_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReviewItem:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class Commit:
    records: list[tuple[SourceRecord, int | None]] = field(default_factory=list)  # (record, expected version)
    add_keys: dict[str, set[str]] = field(default_factory=dict)  # bucket key -> source keys
    remove_keys: dict[str, set[str]] = field(default_factory=dict)
    full_keys: set[str] = field(default_factory=set)  # buckets reaching MAX_BUCKET with this write
    enterprises: list[Enterprise] = field(default_factory=list)
    history: list[HistoryEvent] = field(default_factory=list)
    reviews: list[ReviewItem] = field(default_factory=list)

    def put(self, record: SourceRecord, expected_version: int | None) -> None:
        self.records.append((record, expected_version))

    def add(self, key: str, source_key: str) -> None:
        self.add_keys.setdefault(key, set()).add(source_key)

    def remove(self, key: str, source_key: str) -> None:
        self.remove_keys.setdefault(key, set()).add(source_key)

    def __bool__(self) -> bool:
        return bool(self.records or self.add_keys or self.remove_keys or self.enterprises or self.history
                    or self.reviews)


@dataclass
class Bucket:
    members: list[str]
    full: bool = False


class MpiStore(Protocol):
    round_trips: int

    def blocks(self, tenant: str, keys: Iterable[str]) -> dict[str, Bucket]: ...

    def records(self, tenant: str, source_keys: Iterable[str]) -> dict[str, SourceRecord]: ...

    def commit(self, tenant: str, commit: Commit) -> None: ...

    # ---- admin reads (not on the per-record path) -----------------------------------------------
    def members(self, tenant: str, eid: str) -> list[SourceRecord]: ...

    def enterprise(self, tenant: str, eid: str) -> Enterprise | None: ...

    def history(self, tenant: str, eid: str) -> list[HistoryEvent]: ...

    def reviews(self, tenant: str, status: str = "open", limit: int = 100) -> list[ReviewItem]: ...

    def review(self, tenant: str, review_id: str) -> ReviewItem | None: ...

    def review_backlog(self, tenant: str) -> tuple[int, str | None]: ...

    def settings(self, tenant: str) -> dict[str, Any] | None: ...

    def put_settings(self, tenant: str, settings: dict[str, Any]) -> None: ...


class InMemoryMpiStore:
    """Same semantics as the DynamoDB store (versions, bucket caps, append-only history), in dicts."""

    def __init__(self) -> None:
        self.round_trips = 0
        self._buckets: dict[tuple[str, str], set[str]] = {}
        self._full: set[tuple[str, str]] = set()
        self._records: dict[tuple[str, str], SourceRecord] = {}
        self._members: dict[tuple[str, str], set[str]] = {}
        self._enterprises: dict[tuple[str, str], Enterprise] = {}
        self._history: dict[tuple[str, str], list[HistoryEvent]] = {}
        self._reviews: dict[tuple[str, str], ReviewItem] = {}
        self._settings: dict[str, dict[str, Any]] = {}

    def settings(self, tenant: str) -> dict[str, Any] | None:
        found = self._settings.get(tenant)
        return dict(found) if found is not None else None

    def put_settings(self, tenant: str, settings: dict[str, Any]) -> None:
        self._settings[tenant] = dict(settings)

    def blocks(self, tenant: str, keys: Iterable[str]) -> dict[str, Bucket]:
        self.round_trips += 1
        out: dict[str, Bucket] = {}
        for key in keys:
            members = self._buckets.get((tenant, key))
            if members is not None:
                out[key] = Bucket(list(members), (tenant, key) in self._full)
        return out

    def records(self, tenant: str, source_keys: Iterable[str]) -> dict[str, SourceRecord]:
        self.round_trips += 1
        out = {}
        for sk in source_keys:
            rec = self._records.get((tenant, sk))
            if rec is not None:
                # Read-only by contract: the resolver copies a record before changing it, as it must
                # with any store (this is what keeps the in-memory store as cheap as a dict lookup).
                out[sk] = rec
        return out

    def commit(self, tenant: str, commit: Commit) -> None:
        self.round_trips += 1
        for record, expected in commit.records:
            current = self._records.get((tenant, record.source_key))
            if (current.version if current else None) != expected:
                raise ConflictError("source record changed since it was read")
        for record, _ in commit.records:
            previous = self._records.get((tenant, record.source_key))
            if previous is not None:
                self._members.get((tenant, previous.eid), set()).discard(record.source_key)
            # Shallow copy: the resolver replaces fields (never mutates nested values) of what it writes.
            stored = copy.copy(record)
            stored.version = (previous.version if previous else 0) + 1
            record.version = stored.version
            self._records[(tenant, record.source_key)] = stored
            self._members.setdefault((tenant, record.eid), set()).add(record.source_key)
        for key, members in commit.remove_keys.items():
            self._buckets.get((tenant, key), set()).difference_update(members)
        for key, members in commit.add_keys.items():
            bucket = self._buckets.setdefault((tenant, key), set())
            if (tenant, key) not in self._full:
                bucket.update(members)
        for key in commit.full_keys:
            self._full.add((tenant, key))
        for ent in commit.enterprises:
            self._enterprises[(tenant, ent.eid)] = Enterprise(**ent.to_dict())
        for event in commit.history:
            self._history.setdefault((tenant, event.eid), []).append(copy.copy(event))
        for item in commit.reviews:
            self._reviews[(tenant, item.review_id)] = copy.copy(item)

    def members(self, tenant: str, eid: str) -> list[SourceRecord]:
        keys = sorted(self._members.get((tenant, eid), set()))
        return [SourceRecord.from_dict(_copy(self._records[(tenant, k)].to_dict())) for k in keys]

    def enterprise(self, tenant: str, eid: str) -> Enterprise | None:
        ent = self._enterprises.get((tenant, eid))
        return Enterprise(**ent.to_dict()) if ent else None

    def history(self, tenant: str, eid: str) -> list[HistoryEvent]:
        return sorted(self._history.get((tenant, eid), []), key=lambda e: (e.at, e.seq))

    def reviews(self, tenant: str, status: str = "open", limit: int = 100) -> list[ReviewItem]:
        items = [r for (t, _), r in self._reviews.items() if t == tenant and r.status == status]
        return sorted(items, key=lambda r: (r.created_at, r.review_id))[:limit]

    def review_backlog(self, tenant: str) -> tuple[int, str | None]:
        items = self.reviews(tenant, "open", limit=10**9)
        return len(items), (items[0].created_at if items else None)

    def review(self, tenant: str, review_id: str) -> ReviewItem | None:
        item = self._reviews.get((tenant, review_id))
        return ReviewItem.from_dict(_copy(item.to_dict())) if item else None

    # ---- snapshot to a file (the CLI's --state): the same data the DynamoDB table would hold ----------
    def dump(self) -> dict[str, Any]:
        return {
            "format": "ehrbridge-mpi-snapshot", "version": 1,
            "records": [[t, r.to_dict()] for (t, _), r in sorted(self._records.items())],
            "buckets": [[t, k, sorted(m), (t, k) in self._full] for (t, k), m in sorted(self._buckets.items())],
            "enterprises": [[t, e.to_dict()] for (t, _), e in sorted(self._enterprises.items())],
            "history": [[t, e.to_dict()] for (t, _), events in sorted(self._history.items()) for e in events],
            "reviews": [[t, r.to_dict()] for (t, _), r in sorted(self._reviews.items())],
            "settings": self._settings,
        }

    @classmethod
    def load(cls, data: dict[str, Any]) -> InMemoryMpiStore:
        if data.get("format") != "ehrbridge-mpi-snapshot":
            raise ValueError("not an ehrbridge MPI snapshot")
        store = cls()
        for t, rec in data.get("records", []):
            r = SourceRecord.from_dict(rec)
            store._records[(t, r.source_key)] = r
            store._members.setdefault((t, r.eid), set()).add(r.source_key)
        for t, key, members, full in data.get("buckets", []):
            store._buckets[(t, key)] = set(members)
            if full:
                store._full.add((t, key))
        for t, ent in data.get("enterprises", []):
            store._enterprises[(t, ent["eid"])] = Enterprise(**ent)
        for t, event in data.get("history", []):
            store._history.setdefault((t, event["eid"]), []).append(HistoryEvent(**event))
        for t, item in data.get("reviews", []):
            store._reviews[(t, item["review_id"])] = ReviewItem.from_dict(item)
        store._settings = dict(data.get("settings") or {})
        return store

    # Bulk load for benchmarks (bypasses the resolver; same index layout).
    def bulk_load(self, tenant: str, records: Iterable[SourceRecord]) -> None:
        for rec in records:
            self._records[(tenant, rec.source_key)] = rec
            self._members.setdefault((tenant, rec.eid), set()).add(rec.source_key)
            for key in rec.keys:
                bucket = self._buckets.setdefault((tenant, key), set())
                if len(bucket) < MAX_BUCKET:
                    bucket.add(rec.source_key)
                else:
                    self._full.add((tenant, key))


def _copy(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out[k] = _copy(v)
        elif isinstance(v, list):
            out[k] = [(_copy(x) if isinstance(x, dict) else x) for x in v]
        else:
            out[k] = v
    return out
