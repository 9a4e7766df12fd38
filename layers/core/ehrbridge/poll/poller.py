"""The incremental FHIR poller: one (tenant, resource type) window at a time, never missing an update.

A window asks for everything with ``_lastUpdated=gt{watermark - overlap}`` and follows the Bundle
``next`` links as given. What the overlap returns again is dropped by (type, id, versionId |
lastUpdated) within the run, and by the stable envelope id downstream. The new watermark is the
*server's* time at the window's first page (Bundle ``meta.lastUpdated``, else the ``Date`` header)
minus a safety margin for transactions still in flight there; it is written (conditionally on the
cursor version) only after every page of the window is on the sink. Progress is saved after each
delivered page, so a killed or timed-out poller resumes where it was, and a redelivered page only
re-sends ids the sink absorbs.

Offset paging over a mutable result set skips records (verified: 29 of 30 after one update). When
a ``next`` link pages by offset, the poller re-queries from the last ``lastUpdated`` it saw
(``_lastUpdated=ge{last}&_sort=_lastUpdated``, keyset) instead of trusting the offset.

Modes (vendor profile + CapabilityStatement):
- ``incremental``: ``_lastUpdated`` supported (the general case). Declared by the CapabilityStatement (for
  the type or server-wide), or the statement is absent; a statement that lists the type's parameters
  without it is checked once per client with a search bounded in the future (no match: applied).
- ``per_patient``: the vendor needs ``patient=`` on this type's searches (Epic, athena): the window
  walks the tenant's roster (fed by Patient polls and ADT), with ``_lastUpdated`` when supported.
  Patients the roster knows by identifier only (ADT PID-3) are first resolved to the vendor's
  Patient id (``Patient?identifier=system|value``, cached on the entry); those that do not resolve
  yet are counted and kept for the next window.
- ``bulk``: no ``_lastUpdated`` but the vendor offers Bulk Data (a Group id in the tenant's
  ``vendor_context.bulk_group_id`` where the vendor exports per Group): each window is one ``$export``
  with ``_since`` and ``_type``, spread over invocations (kick-off, status polls honouring
  Retry-After through re-enqueued jobs, one output file per step); the watermark becomes the
  manifest's ``transactionTime``. Covers edits and new patients; costs an export per interval.
- ``full``: no ``_lastUpdated``, no bulk and no patient requirement: every window reads everything again
  (duplicates absorbed downstream). Costly.
  Without ``_lastUpdated`` per-patient windows re-read each patient's records too: edits are caught,
  patients not (yet) on the roster are not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from ehrbridge.auth.fhir_client import FhirCallError, ResourceDenied, ScopeNotGranted
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.observability import logger
from ehrbridge.poll.calls import OutOfTime, Page, PollCalls, SessionExpired
from ehrbridge.poll.cursor import Cursor, CursorStore, Window
from ehrbridge.poll.jobs import PollJob, scope_key
from ehrbridge.poll.limits import Deadline
from ehrbridge.poll.sink import ResourceSink, patient_id_of, resource_key

Mode = Literal["incremental", "per_patient", "full", "bulk"]
Status = Literal["done", "continue", "denied", "not_granted", "unsupported"]
# Query parameters that mark a next link as paging by position in a result set that can shift.
_OFFSET_PARAMS = frozenset({"_offset", "offset", "page", "_page", "start", "_skip"})
MAX_SESSION_RESTARTS = 3


@dataclass(frozen=True)
class PollSettings:
    # Transactions can commit with a timestamp up to this far behind the server clock (LinuxForHealth:
    # transaction timeout 120 s + drift): the watermark stays that far behind the server's time.
    safety_margin_s: float = 120.0
    page_size: int | None = None  # default: the vendor profile's max page size
    max_pages_per_window: int = 100_000
    # Identifier-only roster entries (ADT) resolved per job step at most; the rest wait for the next one.
    max_roster_resolutions: int = 200
    # Leave this much of the deadline for saving the cursor and re-enqueueing.
    reserve_s: float = 5.0


@dataclass
class PollOutcome:
    status: Status
    resource_type: str
    mode: Mode = "incremental"
    delay_s: float = 0.0
    pages: int = 0
    resources: int = 0
    duplicates: int = 0
    watermark: str | None = None
    detail: str = ""
    window_closed: bool = False


@dataclass
class _Run:
    cursor: Cursor
    seen: set[tuple[str, str, str]] = field(default_factory=set)
    pages: int = 0
    resources: int = 0
    duplicates: int = 0


class _CountingSink:
    """Bulk files go to the same sink; counts and roster updates as for searched pages."""

    def __init__(self, sink: ResourceSink, run: _Run, on_patients: Callable[[list[dict[str, Any]]], None]) -> None:
        self.sink, self.run, self.on_patients = sink, run, on_patients

    def deliver(self, tenant: TenantConfig, resources: Any) -> None:
        fresh = []
        for resource in resources:
            key = resource_key(resource)
            if key in self.run.seen:
                self.run.duplicates += 1
                continue
            self.run.seen.add(key)
            fresh.append(resource)
        self.sink.deliver(tenant, fresh)
        self.run.resources += len(fresh)
        patients = [r for r in fresh if r.get("resourceType") == "Patient"]
        if patients:
            self.on_patients(patients)


class Poller:
    def __init__(self, tenant: TenantConfig, calls: PollCalls, cursors: CursorStore, sink: ResourceSink, *,
                 settings: PollSettings | None = None, clock: Callable[[], float] = time.time) -> None:
        self.tenant, self.calls, self.cursors, self.sink = tenant, calls, cursors, sink
        self.settings = settings or PollSettings()
        self.clock = clock
        self._capabilities: dict[str, set[str]] | None = None
        self._probe_open = False
        self.page_size = min(self.settings.page_size or tenant.profile.max_page_size, tenant.profile.max_page_size)

    # ---- capability ----------------------------------------------------------------------
    def search_params(self, resource_type: str) -> set[str] | None:
        """Search parameters the CapabilityStatement declares for the type (None: unknown)."""
        if self._capabilities is None:
            statement = self.calls.metadata() or {}
            self._capabilities = {}
            for rest in statement.get("rest") or []:
                if not isinstance(rest, dict):
                    continue
                # Parameters declared once for the whole server (rest.searchParam: _id, _lastUpdated, ...
                # apply to every type) count for each type next to the type's own.
                common = {p.get("name") for p in rest.get("searchParam") or [] if isinstance(p, dict)}
                for res in rest.get("resource") or []:
                    if isinstance(res, dict) and "type" in res:
                        self._capabilities[res["type"]] = common | {
                            p.get("name") for p in res.get("searchParam") or [] if isinstance(p, dict)}
        return self._capabilities.get(resource_type) if self._capabilities else None

    def interactions(self, resource_type: str) -> set[str] | None:
        """Interactions the CapabilityStatement declares for the type (None: no statement)."""
        statement = self.calls.metadata()
        if not statement:
            return None
        return {i.get("code") for rest in statement.get("rest") or [] if isinstance(rest, dict)
                for res in rest.get("resource") or [] if isinstance(res, dict) and res.get("type") == resource_type
                for i in res.get("interaction") or [] if isinstance(i, dict)}

    def supports_last_updated(self, resource_type: str) -> bool:
        if resource_type in self.tenant.profile.last_updated_unsupported:
            return False
        declared = self.search_params(resource_type)
        if declared is None or "_lastUpdated" in declared:
            return True
        if "patient" in self.tenant.profile.required_search_params.get(resource_type, ()):
            return False  # no search without a patient to ask the server with: trust the statement
        probed = self.calls.last_updated_probes  # kept with the client: once per execution environment
        if resource_type not in probed:
            probed[resource_type] = self._probe_last_updated(resource_type)
        return probed[resource_type]

    def _probe_last_updated(self, resource_type: str) -> bool:
        """The statement lists the type's parameters without ``_lastUpdated`` (it is common to every
        resource, and many servers leave it out): ask once with a bound in the future. A server that
        applies it answers no match; one that ignores it answers matches, and one that refuses it errs.
        Either of the last two means it is not supported, and the type is read another way."""
        future = _iso(datetime.fromtimestamp(self.clock(), UTC) + timedelta(days=3650))
        try:
            page = self.calls.get_page(resource_type, {"_lastUpdated": f"gt{future}", "_count": "1"}, resource_type,
                                       endpoint="probe")
        except FhirCallError as err:
            if isinstance(err, ResourceDenied | ScopeNotGranted):
                raise
            logger.info("_lastUpdated probe refused", extra={"tenant_id": self.tenant.tenant_id,
                                                              "resource_type": resource_type,
                                                              "reason": err.code or str(err.status)})
            return False
        matches = sum(1 for e in page.bundle.get("entry") or []
                      if (e.get("search") or {}).get("mode", "match") == "match")
        logger.info("_lastUpdated probe", extra={"tenant_id": self.tenant.tenant_id, "resource_type": resource_type,
                                                 "supported": matches == 0})
        return matches == 0

    def bulk_group(self) -> str | None:
        return self.tenant.vendor_context.get("bulk_group_id")

    def mode_for(self, resource_type: str) -> Mode:
        profile = self.tenant.profile
        if not self.supports_last_updated(resource_type) and profile.supports_bulk_export and (
                profile.bulk_export_level == "system" or self.bulk_group()):
            return "bulk"
        if "patient" in self.tenant.profile.required_search_params.get(resource_type, ()):
            return "per_patient"
        return "incremental" if self.supports_last_updated(resource_type) else "full"

    # ---- one job ---------------------------------------------------------------------------
    def run(self, job: PollJob, deadline: Deadline | None = None, *, since: str | None = None) -> PollOutcome:
        """Crawl (the rest of) the pair's window. ``since`` overrides the watermark for a new window."""
        deadline = deadline or Deadline(None)
        rt = job.resource_type
        # Another environment may have denied or reinstated a type since this client last looked; a
        # re-probe job lets this one denied type be asked once more.
        probing = self.calls.client.reload_coverage(probe=rt if job.reprobe else None)
        # Until the re-probe's first page answers, its calls are labelled endpoint "reprobe": an expected 403
        # there is not a failed call (the failed-call-rate alarm stays quiet on a known denial).
        self._probe_open = probing
        cursor = self.cursors.get(self.tenant.tenant_id, rt)
        if cursor.window is None:
            mode = self.mode_for(rt)
            window = replace(self._open_window(cursor, job, mode, since), mode=mode)
            cursor = self.cursors.put(cursor.with_window(window))
        else:  # a window is finished in the mode it was opened in, whatever discovery says today
            mode = cursor.window.mode or self.mode_for(rt)  # type: ignore[assignment]
        run = _Run(cursor)
        outcome = PollOutcome("continue", rt, mode)
        try:
            if mode == "bulk":
                self._crawl_bulk(run, deadline)
            else:
                self._crawl(run, mode, deadline)
        except OutOfTime as signal:
            outcome.delay_s = signal.wait_s
            run.cursor = self.cursors.put(replace(run.cursor, not_before=self.clock() + signal.wait_s,
                                                  dispatched_at=self.clock()))
        except ResourceDenied:
            if probing:
                self.calls.metrics.reprobed(rt, reinstated=False)  # known denial: no new alarm
                outcome.detail = "server answered 403 again; the type stays denied"
            else:
                self.calls.metrics.denied(rt)
                outcome.detail = "server answered 403; type denied for the tenant"
            outcome.status = "denied"
            run.cursor = self._record_denial_probe(run.cursor)
        except ScopeNotGranted:
            outcome.status, outcome.detail = "not_granted", "the token does not cover this type"
        except FhirCallError as err:
            if err.status != 404 or (run.cursor.window and run.cursor.window.pages):
                raise  # the job fails; SQS retries it, the cursor stays at the last delivered page
            # The server does not know this type: not a failure to retry every minute. The window is
            # dropped (watermark unchanged) and the pair comes back at its next interval.
            run.cursor = self.cursors.put(replace(run.cursor, window=None, completed_at=self.clock()))
            outcome.status, outcome.detail = "unsupported", "the server answered 404 for this type"
        else:
            closed_since = run.cursor.window.since if run.cursor.window else None
            run.cursor = self._close_window(run.cursor)
            outcome.status, outcome.window_closed = "done", True
            if job.detect_deletions and mode == "incremental":
                self._count_deletions(rt, closed_since, deadline)
        finally:
            if run.resources or run.duplicates:
                self.calls.metrics.received(rt, run.resources, run.duplicates)
        if outcome.status in ("done", "continue") and (probing or run.cursor.denied_at is not None):
            run.cursor = self._settle_reprobe(run, outcome, probing)
        outcome.pages, outcome.resources, outcome.duplicates = run.pages, run.resources, run.duplicates
        outcome.watermark = run.cursor.watermark
        logger.info("poll window step", extra={"tenant_id": self.tenant.tenant_id, "resource_type": rt,
                                                "status": outcome.status, "phase": mode, "counts": {
                                                    "pages": run.pages, "resources": run.resources,
                                                    "duplicates": run.duplicates}})
        return outcome

    def _count_deletions(self, rt: str, since: str | None, deadline: Deadline) -> int | None:
        """Opt-in: hard deletions since the window's start, from ``[type]/_history?_since=`` (DELETE entries).

        ``_lastUpdated`` searches cannot see a deleted resource. They are counted and logged (ids never), not
        delivered: the envelope contract has no way to say "deleted". Best effort after the window has
        closed: a server without type history, a failed call or too little time only skips the count."""
        if since is None:
            return None  # a first load: nothing was delivered that could have been deleted since
        declared = self.interactions(rt)
        if declared is not None and "history-type" not in declared:
            logger.info("deletions not counted: the server offers no type history",
                        extra={"tenant_id": self.tenant.tenant_id, "resource_type": rt, "status": "unsupported"})
            return None
        deleted: set[str] = set()
        url: str | None = f"{rt}/_history"
        params: dict[str, str] | None = {"_since": since, "_count": str(self.page_size)}
        pages = 0
        try:
            while url and pages < self.settings.max_pages_per_window:
                if not deadline.allows(self.settings.reserve_s):
                    raise OutOfTime(0.0)
                page = self.calls.get_page(url, params, rt, endpoint="history", deadline=deadline, coverage=False)
                pages += 1
                deleted |= {str(req.get("url")) for e in page.bundle.get("entry") or []
                            if isinstance(req := e.get("request"), dict) and req.get("method") == "DELETE"}
                url = next((link.get("url") for link in page.bundle.get("link") or []
                            if isinstance(link, dict) and link.get("relation") == "next"), None)
                params = None  # next links are followed as given
        except (OutOfTime, FhirCallError) as err:
            logger.warning("deletions not counted", extra={"tenant_id": self.tenant.tenant_id, "resource_type": rt,
                                                           "reason": getattr(err, "code", None) or "out of time"})
            return None
        self.calls.metrics.deletions(rt, len(deleted))
        if deleted:
            logger.warning("resources deleted at the source are not delivered downstream", extra={
                "tenant_id": self.tenant.tenant_id, "resource_type": rt, "counts": {"deleted": len(deleted)}})
        return len(deleted)

    def _record_denial_probe(self, cursor: Cursor) -> Cursor:
        """When the type was (again) found denied, and under which grant: the dispatcher's re-probe clock."""
        now = self.clock()
        granted = self.calls.client.state.status(self.tenant.tenant_id).granted_scopes
        return self.cursors.put(replace(cursor, denied_at=cursor.denied_at or now, denied_probed_at=now,
                                        denied_scopes=scope_key(granted)))

    def _settle_reprobe(self, run: _Run, outcome: PollOutcome, probing: bool) -> Cursor:
        """A denied type answered: reinstated if a page came back; a probe that asked nothing (no patient on
        the roster, out of time before the first call) proves nothing and keeps the denial."""
        rt, tenant_id = run.cursor.resource_type, self.tenant.tenant_id
        if run.pages > 0:
            # The state table first: a crash before the cursor write only means clearing again next job.
            self.calls.client.state.clear_server_denied(tenant_id, rt)
            self.calls.client.reload_coverage()
            self.calls.metrics.reprobed(rt, reinstated=True)
            logger.info("denied resource type answered again; polled from now on",
                        extra={"tenant_id": tenant_id, "resource_type": rt, "status": "reinstated"})
            outcome.detail = "re-probe answered: the type is no longer denied"
            return self.cursors.put(replace(run.cursor, denied_at=None, denied_probed_at=None, denied_scopes=None))
        if outcome.status == "done" and probing:
            logger.info("re-probe of a denied type made no call; it stays denied",
                        extra={"tenant_id": tenant_id, "resource_type": rt, "status": "inconclusive"})
            return self._record_denial_probe(run.cursor)
        return run.cursor

    def _open_window(self, cursor: Cursor, job: PollJob, mode: Mode, since: str | None) -> Window:
        base = since or cursor.watermark
        if mode == "bulk":
            # transactionTime is exact (the IG: files include everything modified up to it); the
            # overlap still covers a server whose clock moved between export and query.
            return Window(since=_iso(_parse(base) - timedelta(seconds=job.overlap_s)) if base else None)
        if base is None or mode == "full" or (mode == "per_patient" and not self.supports_last_updated(
                job.resource_type)):
            return Window(since=None)
        return Window(since=_iso(_parse(base) - timedelta(seconds=job.overlap_s)))

    def _crawl(self, run: _Run, mode: Mode, deadline: Deadline) -> None:
        """Page until the window is complete; ``run.cursor`` is always what was last saved."""
        rt = run.cursor.resource_type
        use_last_updated = mode == "incremental" or (mode == "per_patient" and self.supports_last_updated(rt))
        if mode == "per_patient":
            self._resolve_roster_identifiers(deadline)
        patients = self.cursors.roster(self.tenant.tenant_id) if mode == "per_patient" else [""]
        while True:
            window = run.cursor.window
            assert window is not None
            patient = ""
            if mode == "per_patient":
                pending = [p for p in patients if window.patient_after is None or p > window.patient_after]
                if not pending:
                    return
                patient = pending[0]
            if window.pages >= self.settings.max_pages_per_window:
                raise RuntimeError(f"{rt}: more than {self.settings.max_pages_per_window} pages in one window")
            if not deadline.allows(self.settings.reserve_s):
                raise OutOfTime(0.0)
            try:
                page = self._fetch(rt, window, patient, use_last_updated, deadline)
            except SessionExpired:
                if window.restarts >= MAX_SESSION_RESTARTS:
                    raise
                # Epic 4113 / 410: the server forgot the paging session. Restart this window (its
                # since is unchanged, so nothing is skipped; what comes again is absorbed).
                window = replace(window, resume_url=None, keyset_from=None, restarts=window.restarts + 1)
                run.cursor = self.cursors.put(run.cursor.with_window(window))
                continue
            delivered_before = run.resources
            resources = self._deliver(rt, page, run)
            if patient and run.resources > delivered_before:
                # New records for this patient: roster activity, its entry does not expire while data flows.
                self.cursors.add_to_roster(self.tenant.tenant_id, {patient})
            window = self._advance(window, page, resources, use_last_updated, rt)
            finished = window.resume_url is None and window.keyset_from is None
            if mode == "per_patient" and finished:
                window = replace(window, patient_after=patient)
            run.cursor = self.cursors.put(run.cursor.with_window(window))
            run.pages += 1
            if mode != "per_patient" and finished:
                return

    def _resolve_roster_identifiers(self, deadline: Deadline) -> None:
        """ADT-fed entries -> vendor Patient ids, through the same calls (rate limit, retries, metrics).

        An identifier no Patient (or more than one) answers to, or a search that fails, stays pending
        and is counted: the EHR may not have the patient yet, and this type's crawl goes on regardless.
        """
        tenant_id = self.tenant.tenant_id
        every_pending = self.cursors.pending_roster_identifiers(tenant_id)
        # Entries that failed recently wait (backoff); new ones first, so a backlog of unknown identifiers
        # never starves the patients the EHR does know.
        due = sorted((e for e in every_pending if e.due(self.clock())), key=lambda e: e.attempts)
        pending = due[:self.settings.max_roster_resolutions]
        resolved = unresolved = 0
        failed: set[str] = set()
        done: set[str] = set()
        for entry in pending:
            if not deadline.allows(self.settings.reserve_s):
                break
            try:
                page = self.calls.get_page("Patient", {"identifier": f"{entry.system}|{entry.value}"}, "Patient",
                                           endpoint="roster", deadline=deadline)
            except OutOfTime:
                break  # the rest waits for the next step; this type's own progress matters more
            except FhirCallError as err:
                self.cursors.roster_identifier_unresolved(tenant_id, entry.key)
                unresolved += 1
                failed.add(entry.key)
                logger.warning("roster identifier not resolved", extra={
                    "tenant_id": tenant_id, "roster_key": entry.key, "reason": err.code or str(err.status)})
                continue
            ids = _current_patients([r for e in page.bundle.get("entry") or []
                                     if isinstance(r := e.get("resource"), dict) and r.get("resourceType") == "Patient"
                                     and r.get("id") and (e.get("search") or {}).get("mode", "match") == "match"])
            if len(ids) == 1:
                self.cursors.resolve_roster_identifier(tenant_id, entry.key, ids.pop())
                resolved += 1
                done.add(entry.key)
            else:
                self.cursors.roster_identifier_unresolved(tenant_id, entry.key)
                unresolved += 1
                failed.add(entry.key)
                logger.info("roster identifier not resolved", extra={
                    "tenant_id": tenant_id, "roster_key": entry.key,
                    "reason": "no match" if not ids else "ambiguous", "matches": len(ids)})
        if every_pending:
            # The gauge counts every pending entry that keeps failing (this step's failures included), so
            # the alarm sees a tenant whose identifiers do not resolve, not one patient the EHR lacks.
            now = self.clock()
            stuck = sum(1 for e in every_pending if e.key not in done and replace(
                e, attempts=e.attempts + (e.key in failed)).stuck(now))
            self.calls.metrics.roster(resolved, unresolved, stuck=stuck)

    def _crawl_bulk(self, run: _Run, deadline: Deadline) -> None:
        """One export per window, a step per invocation where the server makes us wait."""
        from ehrbridge.poll.bulk import BulkExporter, transaction_time_of

        rt = run.cursor.resource_type
        window = run.cursor.window
        assert window is not None
        self.calls.label("bulk", rt)  # the exporter shares the HTTP client: its calls are counted and timed too
        counted = _CountingSink(self.sink, run, self._update_roster)
        exporter = BulkExporter(self.tenant, self.calls.client.refresher, counted, http=self.calls.http,
                                limiter=self.calls.bucket)
        if window.bulk_status_url is None:
            url = exporter.kickoff([rt], since=window.since, group_id=self.bulk_group(), deadline=deadline)
            window = replace(window, bulk_status_url=url)
            run.cursor = self.cursors.put(run.cursor.with_window(window))
        manifest, wait = exporter.check(window.bulk_status_url or "", deadline=deadline)
        if manifest is None:
            raise OutOfTime(wait)  # the job comes back after Retry-After instead of sleeping here
        transaction_time = transaction_time_of(manifest)
        outputs = manifest.get("output") or []
        for index in range(window.bulk_done, len(outputs)):
            if not deadline.allows(self.settings.reserve_s):
                raise OutOfTime(0.0)
            exporter.download_output(manifest, index, deadline=deadline)
            window = replace(window, bulk_done=index + 1, pages=window.pages + 1)
            run.cursor = self.cursors.put(run.cursor.with_window(window))
            run.pages += 1
        window = replace(window, bulk_transaction_time=transaction_time, server_time=transaction_time)
        run.cursor = self.cursors.put(run.cursor.with_window(window))

    def _fetch(self, rt: str, window: Window, patient: str, use_last_updated: bool, deadline: Deadline) -> Page:
        page = self._fetch_page(rt, window, patient, use_last_updated, deadline)
        self._probe_open = False  # the type answered
        return page

    def _fetch_page(self, rt: str, window: Window, patient: str, use_last_updated: bool,
                    deadline: Deadline) -> Page:
        if window.resume_url:
            return self.calls.get_page(window.resume_url, None, rt, deadline=deadline,
                                       endpoint="reprobe" if self._probe_open else "next-page")
        # A keyset page asks for the records it re-reads on top, within the vendor's page cap (a server
        # may refuse a _count above it rather than trim it).
        ties = window.keyset_ties if window.keyset_from is not None else 0
        params = {"_count": str(min(self.page_size + ties, self.tenant.profile.max_page_size))}
        if patient:
            params["patient"] = patient
        if use_last_updated:
            if window.keyset_from is not None:
                params["_lastUpdated"] = f"ge{window.keyset_from}"
            elif window.since is not None:
                params["_lastUpdated"] = f"gt{window.since}"
            if self._sorted_search(rt):
                params["_sort"] = "_lastUpdated"
        endpoint = "reprobe" if self._probe_open else "keyset" if window.keyset_from is not None else "search"
        try:
            return self.calls.get_page(rt, params, rt, endpoint=endpoint, deadline=deadline)
        except FhirCallError as err:
            if "_sort" not in params or err.status != 400 or isinstance(err, ResourceDenied | ScopeNotGranted):
                raise
        # A server that refuses the sort (400) is searched unsorted from now on: next links followed as
        # given, no keyset (which needs results in _lastUpdated order).
        self.calls.sort_refused.add(rt)
        logger.warning("server refused _sort=_lastUpdated; searching unsorted",
                       extra={"tenant_id": self.tenant.tenant_id, "resource_type": rt})
        del params["_sort"]
        return self.calls.get_page(rt, params, rt, endpoint=endpoint, deadline=deadline)

    def _sorted_search(self, resource_type: str) -> bool:
        """Searches ask for (and get) results in _lastUpdated order: the vendor sorts and has not refused."""
        return self.tenant.profile.sorts_by_last_updated and resource_type not in self.calls.sort_refused

    def _deliver(self, rt: str, page: Page, run: _Run) -> list[dict[str, Any]]:
        matches = [e["resource"] for e in page.bundle.get("entry") or []
                   if isinstance(e.get("resource"), dict) and e["resource"].get("resourceType") == rt
                   and (e.get("search") or {}).get("mode", "match") == "match"]
        fresh = []
        for resource in matches:
            key = resource_key(resource)
            if key in run.seen:
                run.duplicates += 1
                continue
            run.seen.add(key)
            fresh.append(resource)
        # Delivered before the cursor moves: a crash here re-sends this page, never skips it.
        self.sink.deliver(self.tenant, fresh)
        run.resources += len(fresh)
        if rt == "Patient" and fresh:
            self._update_roster(fresh)
        return matches

    def _update_roster(self, patients: list[dict[str, Any]]) -> None:
        """Patient versions seen: each is roster activity (pushes its expiry out). A Patient carrying a
        ``replaced-by`` link was merged away (FHIR: "must no longer be used"): it leaves the roster and the
        patient it points to is crawled instead."""
        active: set[str] = set()
        retired: set[str] = set()
        for patient in patients:
            patient_id = patient_id_of(patient)
            successors = _successors(patient)
            if successors and patient_id:
                retired.add(patient_id)
                active |= successors
            elif patient_id:
                active.add(patient_id)
        active -= retired
        if retired:
            self.cursors.remove_from_roster(self.tenant.tenant_id, retired)
        if active:
            self.cursors.add_to_roster(self.tenant.tenant_id, active)

    def _advance(self, window: Window, page: Page, resources: list[dict[str, Any]], use_last_updated: bool,
                 resource_type: str) -> Window:
        server_time = window.server_time or _normal(page.server_time)
        moments = [m for r in resources if (m := _moment((r.get("meta") or {}).get("lastUpdated"))) is not None]
        newest_moment = max(moments, default=None)
        if window.newest_seen and (newest_moment is None or _parse(window.newest_seen) > newest_moment):
            newest = window.newest_seen
        else:
            newest = _iso(newest_moment) if newest_moment is not None else None
        next_url = next((link.get("url") for link in page.bundle.get("link") or []
                         if isinstance(link, dict) and link.get("relation") == "next"), None)
        window = replace(window, server_time=server_time, newest_seen=newest, pages=window.pages + 1)
        if not next_url:
            return replace(window, resume_url=None, keyset_from=None, keyset_ties=0)
        # Keyset only where the server was asked to sort by _lastUpdated: a page that merely looks sorted
        # says nothing of the pages after it, and a keyset over unsorted results would skip records.
        sorted_page = all(a <= b for a, b in pairwise(moments))
        if use_last_updated and self._sorted_search(resource_type) and moments and sorted_page and \
                _pages_by_offset(next_url):
            last = moments[-1]
            if window.keyset_from is None or last > _parse(window.keyset_from):
                # ``ge`` re-reads the records that share ``last``; asking for that many more keeps
                # a page's worth of new records per request (a server may still cap the page: the
                # crawl then takes more pages, never skips).
                ties = sum(1 for m in moments if m == last)
                return replace(window, resume_url=None, keyset_from=_iso(last), keyset_ties=ties)
            # A whole page shares one timestamp: keyset cannot move past it; follow the link this once.
        return replace(window, resume_url=next_url, keyset_from=None, keyset_ties=0)

    def _close_window(self, cursor: Cursor) -> Cursor:
        window = cursor.window
        assert window is not None
        candidates = []
        if window.bulk_transaction_time:
            candidates.append(_parse(window.bulk_transaction_time))
        elif window.server_time:
            candidates.append(_parse(window.server_time) - timedelta(seconds=self.settings.safety_margin_s))
        elif window.newest_seen:  # no server time at all: the newest record the server gave us
            candidates.append(_parse(window.newest_seen))
        if cursor.watermark:
            candidates.append(_parse(cursor.watermark))  # never backwards
        watermark = _iso(max(candidates)) if candidates else cursor.watermark
        if window.server_time and watermark:
            self.calls.metrics.freshness(cursor.resource_type,
                                         (_parse(window.server_time) - _parse(watermark)).total_seconds())
        return self.cursors.put(replace(cursor, watermark=watermark, window=None, completed_at=self.clock(),
                                        not_before=None))


def _current_patients(matches: list[dict[str, Any]]) -> set[str]:
    """The Patient ids an identifier search means: a merged-away record (``replaced-by`` link) stands for the
    patient it points to, so an EHR that still answers with the old record next to the survivor (or only
    with the old one) resolves to the survivor instead of looking ambiguous."""
    out: set[str] = set()
    for patient in matches:
        out |= _successors(patient) or {str(patient["id"])}
    return out


def _successors(patient: dict[str, Any]) -> set[str]:
    """Where a merged-away Patient points (``link.type = replaced-by``: "must no longer be used")."""
    return {ref for link in patient.get("link") or [] if isinstance(link, dict)
            and link.get("type") == "replaced-by" and (ref := _patient_reference(link.get("other")))}


def _patient_reference(other: Any) -> str | None:
    reference = other.get("reference") if isinstance(other, dict) else None
    if not isinstance(reference, str) or "Patient/" not in reference:
        return None
    return reference.rstrip("/").split("Patient/")[-1].split("/")[0] or None


def _pages_by_offset(url: str) -> bool:
    return bool(_OFFSET_PARAMS & set(parse_qs(urlsplit(url).query)))


def _parse(value: str) -> datetime:
    text = value.strip().replace("Z", "+00:00")
    if "T" not in text:
        text += "T00:00:00+00:00"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return _parse(value)
    except ValueError:
        return None


def _normal(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return _iso(_parse(value))
    except ValueError:
        return None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
