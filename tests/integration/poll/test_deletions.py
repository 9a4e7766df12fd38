"""Opt-in deletion counting over real HTTP: a `_lastUpdated` search cannot see a hard delete; with
`poll_plan[].detect_deletions` the poller counts the type's DELETE entries in `_history?_since=` after each
window (metric + log, never delivered: the envelope contract cannot say "deleted")."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from ehrbridge.poll.jobs import PollJob, dispatch
from ehrbridge.poll.metrics import PollMetrics
from tests.integration.poll.conftest import Rig

pytestmark = pytest.mark.integration

TENANT = "poll-health"
OPT_IN = {"poll_plan": [{"resource_type": "Observation", "detect_deletions": True}]}


def _job(n: int, detect: bool = True) -> PollJob:
    return PollJob(tenant_id=TENANT, resource_type="Observation", job_id=f"o-{n}", detect_deletions=detect)


def _history_requests(rig: Rig) -> list[Any]:
    return [r for r in rig.sandbox.fhir_requests("Observation") if r.path.endswith("/_history")]


def _deleted_seen(stream: io.StringIO) -> list[float]:
    return [x["PollDeletionsSeen"] for x in map(json.loads, stream.getvalue().splitlines()) if "PollDeletionsSeen" in x]


def test_deletions_after_a_window_are_counted_not_delivered(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(patients=4, tenant_overrides=OPT_IN, max_page_size=4)
    sent: list[PollJob] = []
    dispatch([rig.tenant], rig.cursors, sent.extend)
    assert [j.detect_deletions for j in sent if j.resource_type == "Observation"] == [True]  # from the plan
    assert rig.poller().run(_job(0)).status == "done"
    assert _history_requests(rig) == []  # a first load has nothing deleted since

    gone = [o["id"] for o in rig.sandbox.resources["Observation"][:3]]
    for resource_id in gone:
        assert rig.sandbox.delete("Observation", resource_id)
    rig.sandbox.mutate("Observation", 6, random.Random(3))  # history pages also carry the edits
    stream = io.StringIO()
    rig.metrics = PollMetrics(TENANT, stream=stream)
    delivered_before = set(rig.sink.delivered)
    assert rig.poller().run(_job(1)).status == "done"
    assert _deleted_seen(stream) == [3.0]
    assert len(_history_requests(rig)) >= 3  # paged (4 per page) through the edits and deletions
    new = set(rig.sink.delivered) - delivered_before
    assert new and not any(key[1] in gone for key in new)  # nothing is delivered for a deletion
    assert not any(resource_id in stream.getvalue() for resource_id in gone)  # counts only, no ids


def test_without_the_opt_in_or_without_type_history_nothing_is_asked(make_rig: Callable[..., Rig],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rig = make_rig(patients=3)
    assert rig.poller().run(_job(0, detect=False)).status == "done"
    rig.sandbox.delete("Observation", rig.sandbox.resources["Observation"][0]["id"])
    assert rig.poller().run(_job(1, detect=False)).status == "done"
    assert _history_requests(rig) == []
    poller = rig.poller()
    monkeypatch.setattr(poller, "interactions", lambda _rt: {"read", "search-type"})
    assert poller.run(_job(2)).status == "done"
    assert _history_requests(rig) == []


def test_a_refused_history_call_neither_fails_the_window_nor_denies_the_type(make_rig: Callable[..., Rig],
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    rig = make_rig(patients=3)
    assert rig.poller().run(_job(0)).status == "done"
    monkeypatch.setattr(rig.sandbox, "type_history", lambda *_a: (403, {"resourceType": "OperationOutcome",
                                                                        "issue": [{"severity": "error",
                                                                                   "code": "forbidden"}]}))
    stream = io.StringIO()
    rig.metrics = PollMetrics(TENANT, stream=stream)
    outcome = rig.poller().run(_job(1))
    assert outcome.status == "done" and outcome.window_closed
    assert [r.status for r in _history_requests(rig)] == [403]
    assert _deleted_seen(stream) == []
    [refused] = [x for x in map(json.loads, stream.getvalue().splitlines()) if x.get("endpoint") == "history"]
    assert refused["PollCall403"] == 1.0 and refused["PollCallFailed"] == 0.0  # no failed-call-rate noise
    assert "Observation" not in rig.refresher.state.status(TENANT).server_denied_types
    assert rig.poller().run(_job(2, detect=False)).status == "done"  # still polled
