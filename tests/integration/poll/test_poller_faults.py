"""The poller against the sandbox EHR over real HTTP with every fault on at once.

Acceptance (issue 10): the set of (type, id, version) delivered equals the server's set, none
missing; duplicates absorbed; the watermark never moves past an unfinished window; a poller killed
mid-crawl loses nothing on redelivery.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ehrbridge.poll.jobs import PollJob
from ehrbridge.poll.poller import PollSettings
from ehrbridge.sandbox.faults import Faults
from tests.integration.poll.conftest import Rig

pytestmark = pytest.mark.integration
TYPES = ("Patient", "Observation")


def job(resource_type: str, n: int = 0) -> PollJob:
    return PollJob(tenant_id="poll-health", resource_type=resource_type, job_id=f"{resource_type}-t{n}")


def crawl(rig: Rig, resource_type: str, *, max_steps: int = 50) -> list[str]:
    """Run jobs for the pair until its window closes (as the queue would redeliver/continue them)."""
    statuses = []
    poller = rig.poller()
    for step in range(max_steps):
        outcome = poller.run(job(resource_type, step))
        statuses.append(outcome.status)
        if outcome.status != "continue":
            return statuses
    raise AssertionError(f"window never closed: {statuses}")


def latest(keys: set[tuple[str, str, str]] | list[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    best: dict[tuple[str, str], str] = {}
    for rt, rid, version in keys:
        if int(version) > int(best.get((rt, rid), "0")):
            best[(rt, rid)] = version
    return {(rt, rid, v) for (rt, rid), v in best.items()}


@pytest.mark.parametrize("paging_style", ["offset", "next_link"])
def test_every_fault_at_once_delivers_exactly_the_servers_set(make_rig: Callable[..., Rig], paging_style: str
                                                                ) -> None:
    rig = make_rig(patients=25, paging_style=paging_style, token_lifetime_s=10,
                   faults=Faults.everything(seed=5, rate=0.15), settings=PollSettings(page_size=5))
    for resource_type in TYPES:
        assert crawl(rig, resource_type)[-1] == "done"
    # Records changed during the crawl are newer than the window's server time: the next window gets them.
    rig.sandbox.faults.mutate_per_page = 0
    for resource_type in TYPES:
        assert crawl(rig, resource_type)[-1] == "done"
    for resource_type in TYPES:  # a third window: its overlap re-reads what the second delivered
        assert crawl(rig, resource_type)[-1] == "done"
    server = rig.sandbox.current_versions(TYPES)
    delivered = set(rig.sink.delivered)
    assert server - delivered == set(), "missing versions"
    assert delivered <= rig.sandbox.history, "delivered a version that never existed"
    assert latest(delivered) == server
    injected = rig.sandbox.injector.injected
    # Every fault actually fired during the run (a check that cannot pass by faults being off).
    for kind in ("429_delta", "429_date", "429_epoch", "truncated", "outcome_in_200", "token_expired", "mutated"):
        assert injected.get(kind, 0) > 0, (kind, injected)
    assert any(injected.get(str(s), 0) for s in (500, 502, 503, 504))
    assert rig.metrics.retries > 0 and rig.metrics.throttled > 0
    # The overlap and the keyset re-query return versions already delivered: within a run they are
    # dropped; across runs they are sent again with the same stable envelope id, which downstream
    # deduplication absorbs (tests/integration/poll/test_functions.py counts that on the queue).
    repeats = len(rig.sink.delivered) - len(delivered)
    assert repeats > 0 or rig.metrics.duplicates["Patient"] + rig.metrics.duplicates["Observation"] > 0


def test_offset_paging_with_updates_mid_crawl_misses_nothing(make_rig: Callable[..., Rig]) -> None:
    """The drift the research verified (29 of 30): keyset re-query instead of trusting offsets."""
    rig = make_rig(patients=30, paging_style="offset", faults=Faults(mutate_per_page=1, seed=3),
                   settings=PollSettings(page_size=5))
    before = rig.sandbox.current_versions(["Patient"])
    assert crawl(rig, "Patient") == ["done"]
    delivered_ids = {rid for _, rid, _ in rig.sink.delivered}
    assert {rid for _, rid, _ in before} <= delivered_ids
    keyset_calls = [r for r in rig.sandbox.fhir_requests("Patient") if r.status == 200]
    assert len(keyset_calls) >= 6


def test_keyset_pages_ask_for_the_records_they_reread(make_rig: Callable[..., Rig]) -> None:
    """``ge{last}`` re-reads the page's last record(s); asking for that many more keeps the page count
    at the minimum when the server's cap allows it, and 1 in 4 pages refused once costs exactly that."""
    rig = make_rig(patients=40, paging_style="offset", max_page_size=50,
                   faults=Faults(throttle_pages_every=4, retry_after_s=0, retry_after_forms=("delta",)),
                   settings=PollSettings(page_size=5))
    assert crawl(rig, "Patient") == ["done"]
    made = rig.sandbox.fhir_requests("Patient")
    served = [r for r in made if r.status == 200]
    refused = [r for r in made if r.status == 429]
    assert len(served) == 40 // 5  # the minimum: every page brought 5 new records
    assert len(refused) == len(served) // 4 and len(made) == len(served) + len(refused)
    assert {rid for _, rid, _ in rig.sink.delivered} == {rid for _, rid, _ in
                                                         rig.sandbox.current_versions(["Patient"])}
    assert rig.metrics.duplicates["Patient"] >= len(served) - 1  # the keyset really re-read its boundary


def test_kill_mid_crawl_loses_nothing_and_watermark_waits(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(patients=20, paging_style="offset", faults=Faults(throttle_rate=0.1, seed=9),
                   settings=PollSettings(page_size=10))
    rig.sink.fail_after = 3
    with pytest.raises(RuntimeError, match="killed"):
        rig.poller().run(job("Observation"))
    cursor = rig.cursors.get("poll-health", "Observation")
    assert cursor.window is not None and cursor.window.pages == 3  # progress saved per delivered page
    assert cursor.watermark is None  # never past an unfinished window
    rig.sink.fail_after = None
    assert crawl(rig, "Observation")[-1] == "done"
    assert rig.cursors.get("poll-health", "Observation").watermark is not None
    assert rig.sandbox.current_versions(["Observation"]) <= set(rig.sink.delivered)


def test_second_window_fetches_nothing_new(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(patients=10)
    assert crawl(rig, "Patient") == ["done"]
    first = len(rig.sink.delivered)
    watermark = rig.cursors.get("poll-health", "Patient").watermark
    assert crawl(rig, "Patient") == ["done"]
    # The overlap re-reads the last 5 minutes only; nothing in the sandbox changed in them.
    assert len(rig.sink.delivered) == first
    assert rig.cursors.get("poll-health", "Patient").watermark >= watermark
    rig.sandbox.mutate("Patient", 2, __import__("random").Random(1))
    assert crawl(rig, "Patient") == ["done"]
    assert len(rig.sink.delivered) == first + 2


def test_out_of_time_saves_cursor_and_continues(make_rig: Callable[..., Rig]) -> None:
    from ehrbridge.poll.limits import Deadline

    rig = make_rig(patients=20, settings=PollSettings(page_size=5, reserve_s=0.0))
    poller = rig.poller(call_budget_s=0.0)
    clock = iter([0.0, 0.0, 0.0, 0.0, 0.0, 100.0] + [100.0] * 1000)
    outcome = poller.run(job("Patient"), Deadline(10.0, clock=lambda: next(clock)))
    assert outcome.status == "continue" and outcome.pages >= 1
    assert rig.cursors.get("poll-health", "Patient").watermark is None
    assert crawl(rig, "Patient")[-1] == "done"
    assert rig.sandbox.current_versions(["Patient"]) <= set(rig.sink.delivered)


def test_no_phi_in_poller_logs_or_metrics(make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture) -> None:
    import io
    import logging

    from ehrbridge.poll.metrics import PollMetrics

    rig = make_rig(patients=6, faults=Faults(throttle_rate=0.3, retry_after_s=0, retry_after_forms=("delta",),
                                             truncate_rate=0.2, seed=8), settings=PollSettings(page_size=3))
    emf = io.StringIO()
    rig.metrics = PollMetrics("poll-health", stream=emf)
    caplog.set_level(logging.DEBUG)
    for resource_type in TYPES:
        assert crawl(rig, resource_type)[-1] == "done"
    output = emf.getvalue() + "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "PollCalls" in output and "poll window step" in output  # the check reads real output
    for patient in rig.sandbox.resources["Patient"]:
        for value in (patient["name"][0]["family"], patient["birthDate"], patient["identifier"][0]["value"],
                      patient["id"]):
            assert value not in output, "PHI or an id in the poller's logs/metrics"


def test_unsupported_type_is_reported_not_retried_forever(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(patients=3, unsupported_types=["Observation"])
    outcome = rig.poller().run(job("Observation"))
    assert outcome.status == "unsupported"
    cursor = rig.cursors.get("poll-health", "Observation")
    assert cursor.window is None and cursor.watermark is None and cursor.completed_at is not None
    assert crawl(rig, "Patient") == ["done"]  # the other types go on


def test_403_marks_the_type_denied_and_the_others_go_on(make_rig: Callable[..., Rig]) -> None:
    import io

    from ehrbridge.poll.metrics import PollMetrics

    rig = make_rig(patients=3)
    rig.sandbox.clients["poll-client"].policy_denied_types = {"Observation"}  # granted, yet the site says 403
    emf = io.StringIO()
    rig.metrics = PollMetrics("poll-health", stream=emf)
    outcome = rig.poller().run(job("Observation"))
    assert outcome.status == "denied"
    assert "Observation" in rig.refresher.state.status("poll-health").server_denied_types  # `tenants show`
    assert '"PollTypeDenied":1.0' in emf.getvalue()  # the alarm's metric
    assert rig.cursors.get("poll-health", "Observation").watermark is None
    assert crawl(rig, "Patient") == ["done"]
    # The SMART client skips the denied type from now on without a request.
    before = len(rig.sandbox.fhir_requests("Observation"))
    assert rig.poller().run(job("Observation", 1)).status == "not_granted"
    assert len(rig.sandbox.fhir_requests("Observation")) == before
