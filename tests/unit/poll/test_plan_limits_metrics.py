"""Poll plan and due rule, token bucket, full jitter, cursor concurrency, EMF metrics (no PHI)."""

from __future__ import annotations

import io
import json
import random
from dataclasses import replace

import pytest

from ehrbridge.auth.token_endpoint import parse_retry_after
from ehrbridge.contracts.envelope import ContractError
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.poll.calls import effective_rate
from ehrbridge.poll.cursor import Cursor, CursorConflict, InMemoryCursorStore, Window
from ehrbridge.poll.jobs import PlanEntry, PollJob, dispatch, is_due, poll_plan
from ehrbridge.poll.limits import Deadline, TokenBucket, full_jitter
from ehrbridge.poll.metrics import PollMetrics
from ehrbridge.poll.sink import patient_id_of, resource_envelope, resource_key


def tenant(**extra: object) -> TenantConfig:
    return TenantConfig.model_validate({"tenant_id": "acme", "vendor": "generic", "client_id": "c",
                                        "fhir_base_url": "https://ehr.example/fhir", "workflows": ["labs"], **extra})


def test_plan_from_workflows_and_explicit_entries_patient_first() -> None:
    t = tenant(poll_plan=[{"resource_type": "Observation", "interval_s": 120, "overlap_s": 60},
                          {"resource_type": "Encounter"}])
    plan = poll_plan(t, skipped={"DiagnosticReport"})
    assert [e.resource_type for e in plan] == ["Patient", "Encounter", "Observation"]
    assert plan[2] == PlanEntry("Observation", 120, 60)
    # Binary is read by id only (documents workflow): never polled.
    assert "Binary" not in [e.resource_type for e in poll_plan(tenant(workflows=["documents"]))]


def test_due_rule() -> None:
    entry = PlanEntry("Patient", interval_s=300)
    fresh = Cursor("acme", "Patient")
    assert is_due(fresh, entry, 1000.0) == "due"
    done = replace(fresh, completed_at=1000.0, dispatched_at=990.0)
    assert is_due(done, entry, 1200.0) == "not_due" and is_due(done, entry, 1300.0) == "due"
    running = replace(done, dispatched_at=1400.0)
    assert is_due(running, entry, 1500.0) == "in_flight"
    assert is_due(running, entry, 1400.0 + 1801) == "due"  # lost job: dispatched again
    waiting = replace(done, not_before=2000.0, window=Window(since=None))
    assert is_due(waiting, entry, 1500.0) == "not_due"


def test_dispatch_claims_each_pair_once() -> None:
    cursors, sent = InMemoryCursorStore(), []
    clock = iter(range(1000, 2000))
    first = dispatch([tenant()], cursors, sent.extend, now=lambda: float(next(clock)),
                     skipped_for=lambda t: {"DiagnosticReport"})
    assert sorted(j.resource_type for j in sent) == ["Observation", "Patient"]
    assert first.skipped == ["acme:DiagnosticReport"]
    again = dispatch([tenant()], cursors, sent.extend, now=lambda: float(next(clock)),
                     skipped_for=lambda t: {"DiagnosticReport"})
    assert again.enqueued == [] and again.in_flight == 2  # both jobs still unanswered: not doubled
    granted = dispatch([tenant()], cursors, sent.extend, now=lambda: float(next(clock)))
    assert granted.enqueued == ["acme:DiagnosticReport"]  # once granted, polled from scratch
    jobs = {j.dedup_id for j in sent}
    assert len(jobs) == len(sent) and all(j.group_id.startswith("acme:") for j in sent)


def test_poll_job_contract() -> None:
    job = PollJob(tenant_id="acme", resource_type="Observation", job_id="Observation-1")
    nxt = job.next(not_before=5.0)
    assert nxt.continuation == 1 and nxt.dedup_id != job.dedup_id and nxt.group_id == job.group_id
    assert PollJob.parse_json(job.model_dump_json()) == job
    with pytest.raises(ContractError) as err:
        PollJob.parse_json('{"tenant_id": "acme", "resource_type": "observation; drop", "job_id": "x"}')
    assert "drop" not in str(err.value)


def test_cursor_writes_are_conditional() -> None:
    store = InMemoryCursorStore()
    first = store.put(Cursor("acme", "Patient", watermark="2026-01-01T00:00:00Z"))
    store.put(replace(first, watermark="2026-01-02T00:00:00Z"))
    with pytest.raises(CursorConflict):
        store.put(replace(first, watermark="2026-01-03T00:00:00Z"))  # a stale writer loses
    data = store.dump()
    copy = InMemoryCursorStore()
    copy.load(json.loads(json.dumps(data)))
    assert copy.get("acme", "Patient").watermark == "2026-01-02T00:00:00Z"


def test_token_bucket_paces_requests() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(4.0, burst=2, clock=lambda: now[0], sleep=sleep)
    for _ in range(10):
        bucket.acquire()
    assert now[0] == pytest.approx(2.0)  # 2 from the burst, 8 more at 4/s
    assert bucket.wait_time() > 0


def test_full_jitter_is_bounded_and_spread() -> None:
    rng = random.Random(1)
    values = [full_jitter(3, base_s=0.5, cap_s=30, rng=rng) for _ in range(500)]
    assert all(0 <= v <= 4.0 for v in values) and max(values) > 3.0 and min(values) < 0.5
    assert all(full_jitter(20, cap_s=30, rng=rng) <= 30 for _ in range(50))


@pytest.mark.parametrize("value,expected", [("7", 7.0), ("Thu, 01 Jan 2026 00:00:10 GMT", 10.0),
                                            ("1767225610", 10.0), ("99999999999", 60.0), ("soon", None)])
def test_retry_after_in_all_three_forms_capped(value: str, expected: float | None) -> None:
    now = 1767225600.0  # 2026-01-01T00:00:00Z
    assert parse_retry_after(value, now, 60.0) == expected


def test_deadline() -> None:
    clock = iter([0.0, 5.0, 9.5])
    deadline = Deadline(10.0, clock=lambda: next(clock))
    assert deadline.allows(4.0) and not deadline.allows(1.0)
    assert Deadline(None).allows(1e9)


def test_vendor_rate_unless_the_tenant_sets_one() -> None:
    assert effective_rate(tenant()) == 10.0
    assert effective_rate(tenant(vendor="epic", vendor_context={})) == 5.0
    assert effective_rate(tenant(rate_limits={"requests_per_second": 2})) == 2.0


def test_emf_lines_per_tenant_endpoint_type_without_phi() -> None:
    out = io.StringIO()
    metrics = PollMetrics("acme", stream=out)
    metrics.call("search", "Observation", 200, 12.5)
    metrics.call("next-page", "Observation", 429, 3.0)
    metrics.call("search", "Observation", None, 30000.0, timeout=True)
    metrics.received("Observation", 5, 1)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    first = lines[0]
    directives = first["_aws"]["CloudWatchMetrics"]
    assert directives[0]["Dimensions"] == [["service", "tenant", "endpoint", "resource_type"]]
    assert directives[1]["Dimensions"] == [["service"]]  # fleet-wide latency for the p99 alarm
    assert first["PollCallFailed"] == 0.0 and first["PollCall2xx"] == 1.0
    assert lines[1]["PollCallFailed"] == 1.0 and lines[1]["PollCall429"] == 1.0
    assert lines[2]["PollCalltimeout"] == 1.0
    assert metrics.requests == 3 and metrics.throttled == 1 and metrics.calls["timeout"] == 1
    allowed = {"_aws", "service", "tenant", "endpoint", "resource_type"}
    for line in lines:
        assert all(k in allowed or k.startswith("Poll") for k in line)


def test_envelope_per_resource_version_is_stable() -> None:
    obs = {"resourceType": "Observation", "id": "o1", "meta": {"versionId": "3", "lastUpdated": "2026-01-01T00:00:00Z"},
           "subject": {"reference": "https://ehr.example/fhir/Patient/p9"}}
    assert resource_key(obs) == ("Observation", "o1", "3") and patient_id_of(obs) == "p9"
    one, two = resource_envelope(tenant(), obs), resource_envelope(tenant(), dict(obs))
    assert one.message_id == two.message_id and one.source == "fhir" and one.kind == "Observation"
    patient = resource_envelope(tenant(), {"resourceType": "Patient", "id": "p9", "meta": {"versionId": "1"}})
    assert patient.patient_key == one.patient_key  # one patient's events share a FIFO group
    newer = resource_envelope(tenant(), {**obs, "meta": {"versionId": "4"}})
    assert newer.message_id != one.message_id


def test_dispatcher_reports_staleness_even_for_a_pair_that_never_completed() -> None:
    cursors, sent, out = InMemoryCursorStore(), [], io.StringIO()
    t = tenant(poll_plan=[{"resource_type": "Observation", "interval_s": 60}])
    clock = iter([1000.0, 1000.0, 1000.0, 1400.0, 1400.0, 1400.0])
    dispatch([t], cursors, sent.extend, now=lambda: next(clock), skipped_for=lambda _t: {"DiagnosticReport"})
    dispatch([t], cursors, sent.extend, now=lambda: next(clock), skipped_for=lambda _t: {"DiagnosticReport"},
             metrics_for=lambda tid: PollMetrics(tid, stream=out))
    ratios = {line["resource_type"]: line["PollStalenessRatio"] for line in map(json.loads, out.getvalue().split())}
    assert ratios["Observation"] == pytest.approx(400 / 60)  # > 3 intervals: the stale alarm fires


def test_sandbox_fault_switches() -> None:
    from ehrbridge.sandbox.faults import parse_faults, retry_after

    faults = parse_faults(["throttle_rate=0.2", "mutate_per_page=2"])
    assert faults.throttle_rate == 0.2 and faults.mutate_per_page == 2 and faults.error_rate == 0
    assert parse_faults(["all"]).truncate_rate > 0
    for bad in (["nope=1"], ["slow_s=fast"], ["retry_after_forms=delta"]):
        with pytest.raises(ValueError):
            parse_faults(bad)
    now = 1767225600.0
    assert {retry_after(form, 1, now) for form in ("delta", "date", "epoch")} == \
        {"1", "Thu, 01 Jan 2026 00:00:02 GMT", "1767225602"}
    for form in ("delta", "date", "epoch"):
        assert parse_retry_after(retry_after(form, 1, now), now, 60) >= 1


class _StatementOnly:
    """The PollCalls surface the capability check uses: the statement, and a probe search."""

    def __init__(self, statement: dict[str, object], probe_answer: dict[str, object] | Exception | None = None) -> None:
        self.statement = statement
        self.probe_answer = probe_answer
        self.last_updated_probes: dict[str, bool] = {}
        self.probes: list[dict[str, str] | None] = []

    def metadata(self) -> dict[str, object]:
        return self.statement

    def get_page(self, path: str, params: dict[str, str] | None, resource_type: str, **_: object) -> object:
        from ehrbridge.poll.calls import Page

        self.probes.append(params)
        if isinstance(self.probe_answer, Exception):
            raise self.probe_answer
        return Page(bundle=self.probe_answer or {"resourceType": "Bundle", "entry": []}, server_time=None)


def test_server_wide_search_params_count_for_every_type() -> None:
    from ehrbridge.auth.fhir_client import FhirCallError
    from ehrbridge.poll.cursor import InMemoryCursorStore as Cursors
    from ehrbridge.poll.poller import Poller

    def poller(statement: dict[str, object], probe_answer: object = None) -> tuple[Poller, _StatementOnly]:
        calls = _StatementOnly(statement, probe_answer)  # type: ignore[arg-type]
        return Poller(tenant(), calls, Cursors(), sink=None), calls  # type: ignore[arg-type]

    observation_only = {"rest": [{"mode": "server",
                                  "resource": [{"type": "Observation", "searchParam": [{"name": "code"}]}]}]}
    # _lastUpdated declared once at rest level (it applies to all resources): incremental, not a full re-read.
    common, calls = poller({"rest": [{"mode": "server", "searchParam": [{"name": "_lastUpdated", "type": "date"}],
                                      "resource": [{"type": "Observation", "searchParam": [{"name": "code"}]}]}]})
    assert common.supports_last_updated("Observation") and common.mode_for("Observation") == "incremental"
    assert calls.probes == []  # declared: nothing to ask
    # Not declared anywhere: asked once with a bound in the future. No match -> the server applies it.
    applied, calls = poller(observation_only)
    assert applied.mode_for("Observation") == "incremental" and applied.supports_last_updated("Observation")
    assert len(calls.probes) == 1 and calls.probes[0]["_lastUpdated"].startswith("gt20")  # type: ignore[index]
    # A server that ignores the parameter answers matches; one that refuses it errs: not supported (the generic
    # profile offers system-level $export, so the type is covered by Bulk _since instead).
    match = {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Observation", "id": "o1"},
                                                  "search": {"mode": "match"}}]}
    for answer in (match, FhirCallError("bad request", status=400, code="invalid")):
        ignored, calls = poller(observation_only, answer)
        assert not ignored.supports_last_updated("Observation") and ignored.mode_for("Observation") == "bulk"
        assert len(calls.probes) == 1  # remembered with the client, not asked per call
    # No CapabilityStatement at all: assume the spec's common parameter works.
    assert poller({})[0].supports_last_updated("Observation")
