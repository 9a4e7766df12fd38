"""Poll jobs and the poll plan: which (tenant, resource type) pairs are due, and the message for each.

The plan comes from the tenant's workflows (every type the workflows need to *search*) plus its
explicit ``poll_plan`` entries (intervals and overlaps per type), minus what the token does not
cover or the server denied. A type the server denied (403) is re-probed: after ``reprobe_after_s``
(default 24 h) since its last probe, and at once when the tenant's granted scopes change (every
token response carries them; the refresher stores them in the token status). Jobs travel on the
FIFO ``poll-jobs`` queue with group = tenant + type, so one crawl per pair runs at a time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from ehrbridge.auth.scopes import resource_permissions
from ehrbridge.auth.state import RefreshStatus
from ehrbridge.contracts.envelope import ContractError, TenantId
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.poll.cursor import Cursor, CursorConflict, CursorStore
from ehrbridge.poll.metrics import PollMetrics

DEFAULT_INTERVAL_S = 300
DEFAULT_OVERLAP_S = 300
# A dispatched job not heard of for this long is presumed lost (DLQ'd, killed) and dispatched again:
# longer than the poll-jobs visibility timeout, so a live crawl is never doubled.
REDISPATCH_AFTER_S = 1800
# A type the server answered 403 for is asked again after this long (and whenever the grant changes).
DEFAULT_REPROBE_AFTER_S = 86_400
REPROBE_ENV = "EHRBRIDGE_POLL_REPROBE_DENIED_S"


def reprobe_after_s() -> float:
    """The deployment's re-probe interval (``EHRBRIDGE_POLL_REPROBE_DENIED_S``, default 24 h)."""
    return float(os.environ.get(REPROBE_ENV, DEFAULT_REPROBE_AFTER_S))


class PollJob(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    schema_version: Literal[1] = 1
    tenant_id: TenantId
    resource_type: Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Za-z]{1,63}$")]
    job_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,80}$")]
    continuation: int = Field(default=0, ge=0)
    # Epoch seconds before which the job must not call the server (Retry-After, budget re-enqueue).
    not_before: float | None = None
    interval_s: int = Field(default=DEFAULT_INTERVAL_S, ge=60)
    overlap_s: int = Field(default=DEFAULT_OVERLAP_S, ge=0)
    # The type is recorded as denied (403): this job asks once more; a 403 again is no new alarm.
    reprobe: bool = False
    # The tenant opted in: count the type's deletions from its _history after the window (not delivered).
    detect_deletions: bool = False

    @property
    def group_id(self) -> str:
        return f"{self.tenant_id}:{self.resource_type}"

    @property
    def dedup_id(self) -> str:
        return f"{self.tenant_id}:{self.job_id}:{self.continuation}"[:128]

    def next(self, *, not_before: float | None) -> PollJob:
        return self.model_copy(update={"continuation": self.continuation + 1, "not_before": not_before})

    @classmethod
    def parse_json(cls, raw: str | bytes) -> PollJob:
        try:
            return cls.model_validate_json(raw)
        except ValidationError as err:
            raise ContractError.from_validation_error("poll job", err) from None


@dataclass(frozen=True)
class PlanEntry:
    resource_type: str
    interval_s: int = DEFAULT_INTERVAL_S
    overlap_s: int = DEFAULT_OVERLAP_S
    detect_deletions: bool = False


def poll_plan(tenant: TenantConfig, skipped: Iterable[str] = ()) -> list[PlanEntry]:
    """Types to poll, Patient first (its ids feed the roster that per-patient crawls walk)."""
    explicit = {p.resource_type: p for p in tenant.poll_plan}
    searchable = {rt for rt, perms in resource_permissions(tenant.workflows).items() if "s" in perms}
    skip = set(skipped)
    entries = []
    for resource_type in sorted(searchable | set(explicit), key=lambda rt: (rt != "Patient", rt)):
        if resource_type in skip:
            continue
        plan = explicit.get(resource_type)
        entries.append(PlanEntry(resource_type, plan.interval_s, plan.overlap_s, plan.detect_deletions) if plan
                       else PlanEntry(resource_type))
    return entries


@dataclass
class DispatchSummary:
    enqueued: list[str] = field(default_factory=list)  # "tenant:type"
    not_due: int = 0
    in_flight: int = 0
    skipped: list[str] = field(default_factory=list)
    reprobed: list[str] = field(default_factory=list)  # "tenant:type" denied types asked again (in enqueued too)

    def counts(self) -> dict[str, int]:
        return {"enqueued": len(self.enqueued), "not_due": self.not_due, "in_flight": self.in_flight,
                "skipped": len(self.skipped), "reprobed": len(self.reprobed)}


def scope_key(granted: Iterable[str]) -> str:
    """The granted scopes as one comparable value (order-free)."""
    return " ".join(sorted(set(granted)))


def next_reprobe_at(cursor: Cursor, reprobe_after_s: float = DEFAULT_REPROBE_AFTER_S) -> float | None:
    """When a denied type is asked again by the clock (None: at the next dispatch, its probe is unrecorded)."""
    return cursor.denied_probed_at + reprobe_after_s if cursor.denied_probed_at is not None else None


def recorded_denials(status: RefreshStatus, cursors: CursorStore, tenant_id: str, *,
                     reprobe_after_s: float = DEFAULT_REPROBE_AFTER_S) -> list[dict[str, str | None]]:
    """The 403 denials on record and when each is asked again (`tenants show` / `tenants check`)."""
    def iso(moment: float | None) -> str | None:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment)) if moment is not None else None

    out = []
    for resource_type in status.server_denied_types:
        cursor = cursors.get(tenant_id, resource_type)
        out.append({"resource_type": resource_type, "denied_since": iso(cursor.denied_at),
                    "last_probed": iso(cursor.denied_probed_at),
                    # None: no probe on record, so the next dispatcher run asks
                    "next_reprobe": iso(next_reprobe_at(cursor, reprobe_after_s)) or "next dispatch",
                    "also_reprobed": "when the granted scopes change"})
    return out


def reprobe_due(cursor: Cursor, granted: Iterable[str], now: float, *,
                reprobe_after_s: float = DEFAULT_REPROBE_AFTER_S,
                redispatch_after_s: float = REDISPATCH_AFTER_S) -> str | None:
    """Why a 403-denied type should be asked again now ('scopes_changed', 'interval', 'unrecorded'),
    'in_flight' while a re-probe is out, or None."""
    probed = cursor.denied_probed_at
    if cursor.dispatched_at is not None and cursor.dispatched_at > (probed or 0) and \
            now - cursor.dispatched_at < redispatch_after_s:
        return "in_flight"
    if probed is None:
        return "unrecorded"  # denied elsewhere (another type's job, an older release): learn when by asking
    if cursor.denied_scopes is not None and cursor.denied_scopes != scope_key(granted):
        return "scopes_changed"
    return "interval" if now >= probed + reprobe_after_s else None


def is_due(cursor: Cursor, entry: PlanEntry, now: float, redispatch_after_s: float = REDISPATCH_AFTER_S) -> str:
    """'due', 'in_flight' or 'not_due'."""
    unanswered = cursor.completed_at is None or (cursor.dispatched_at or 0) > cursor.completed_at
    if cursor.dispatched_at is not None and unanswered and now - cursor.dispatched_at < redispatch_after_s:
        return "in_flight"
    if cursor.not_before is not None and now < cursor.not_before:
        return "not_due"
    if cursor.window is not None or cursor.completed_at is None:
        return "due"  # an unfinished window (its job was lost) or never polled
    return "due" if now >= cursor.completed_at + entry.interval_s else "not_due"


def dispatch(tenants: Iterable[TenantConfig], cursors: CursorStore, enqueue: Callable[[list[PollJob]], None], *,
             skipped_for: Callable[[TenantConfig], set[str]] = lambda _t: set(),
             coverage_for: Callable[[TenantConfig], RefreshStatus] | None = None,
             now: Callable[[], float] = time.time, metrics_for: Callable[[str], PollMetrics] | None = None,
             redispatch_after_s: float = REDISPATCH_AFTER_S,
             reprobe_after_s: float = DEFAULT_REPROBE_AFTER_S) -> DispatchSummary:
    """Claim every due pair (conditional write of ``dispatched_at``) and enqueue a job for it.

    ``coverage_for`` (the tenant's token status) supersedes ``skipped_for``: types the token does not
    grant are skipped; types the server denied (403) are skipped until a re-probe is due."""
    summary = DispatchSummary()
    for tenant in tenants:
        if not (tenant.workflows or tenant.poll_plan) or tenant.fhir_base_url is None:
            continue
        metrics = metrics_for(tenant.tenant_id) if metrics_for else None
        server_denied: set[str] = set()
        granted: list[str] = []
        if coverage_for is not None:
            status = coverage_for(tenant)
            skipped = set(status.denied_types)
            server_denied = set(status.server_denied_types) - skipped
            granted = status.granted_scopes
        else:
            skipped = skipped_for(tenant)
        summary.skipped.extend(f"{tenant.tenant_id}:{rt}" for rt in sorted(skipped))
        jobs = []
        for entry in poll_plan(tenant, skipped):
            cursor = cursors.get(tenant.tenant_id, entry.resource_type)
            moment = now()
            reprobe = False
            if entry.resource_type in server_denied:
                why = reprobe_due(cursor, granted, moment, reprobe_after_s=reprobe_after_s,
                                  redispatch_after_s=redispatch_after_s)
                if why is None or why == "in_flight":
                    summary.skipped.append(f"{tenant.tenant_id}:{entry.resource_type}")
                    continue  # no staleness either: a denied type is known not to be polled
                reprobe = True
            since = cursor.completed_at or cursor.first_dispatched_at
            if metrics is not None and since is not None and not reprobe:
                metrics.staleness(entry.resource_type, (moment - since) / entry.interval_s)
            state = "due" if reprobe else is_due(cursor, entry, moment, redispatch_after_s)
            if state != "due":
                summary.in_flight += state == "in_flight"
                summary.not_due += state == "not_due"
                continue
            try:
                cursors.put(replace(cursor, dispatched_at=moment,
                                    first_dispatched_at=cursor.first_dispatched_at or moment))
            except CursorConflict:
                summary.in_flight += 1  # a poller is writing it right now
                continue
            jobs.append(PollJob(tenant_id=tenant.tenant_id, resource_type=entry.resource_type,
                                job_id=f"{entry.resource_type}-{int(moment)}", interval_s=entry.interval_s,
                                overlap_s=entry.overlap_s, reprobe=reprobe,
                                detect_deletions=entry.detect_deletions))
            if reprobe:
                summary.reprobed.append(f"{tenant.tenant_id}:{entry.resource_type}")
        if jobs:
            enqueue(jobs)
            summary.enqueued.extend(j.group_id for j in jobs)
    return summary
