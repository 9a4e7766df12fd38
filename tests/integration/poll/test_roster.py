"""ADT-fed roster entries (identifier only) resolved by the poller to Patient ids, then crawled, over real HTTP."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable

import pytest

from ehrbridge.poll.jobs import PollJob
from ehrbridge.poll.metrics import PollMetrics
from ehrbridge.poll.poller import PollSettings
from ehrbridge.sandbox.data import MRN_SYSTEM
from ehrbridge.sandbox.faults import Faults
from tests.integration.poll.conftest import Rig
from tests.integration.poll.test_poller_faults import crawl

pytestmark = pytest.mark.integration


def mrn_of(patient: dict[str, object]) -> str:
    return next(i["value"] for i in patient["identifier"] if i.get("system") == MRN_SYSTEM)  # type: ignore[attr-defined,index]


def test_epic_resolves_adt_identifiers_and_crawls_only_those_patients(make_rig: Callable[..., Rig]) -> None:
    # A 429 now and then: resolution goes through the same rate-limited, retrying calls as the crawl.
    rig = make_rig("epic", patients=6, settings=PollSettings(page_size=3),
                   faults=Faults(throttle_rate=0.2, retry_after_s=0, retry_after_forms=("delta",), seed=5))
    stream = io.StringIO()
    rig.metrics = PollMetrics(rig.tenant.tenant_id, stream=stream)
    patients = rig.sandbox.resources["Patient"]
    admitted = patients[:2]
    for patient in admitted:  # what two ADTs left on the roster (no Patient poll has run)
        assert rig.cursors.add_roster_identifier("poll-health", MRN_SYSTEM, mrn_of(patient))
    assert not rig.cursors.add_roster_identifier("poll-health", MRN_SYSTEM, mrn_of(admitted[0]))  # re-delivery
    rig.cursors.add_roster_identifier("poll-health", MRN_SYSTEM, "NOT-IN-THE-EHR-YET")

    assert rig.poller().mode_for("Observation") == "per_patient"
    assert crawl(rig, "Observation") == ["done"]

    ids = {p["id"] for p in admitted}
    assert set(rig.cursors.roster("poll-health")) == ids  # resolved ids cached onto the roster
    expected = {v for v in rig.sandbox.current_versions(["Observation"])
                if any(o["id"] == v[1] and o["subject"]["reference"] in {f"Patient/{i}" for i in ids}
                       for o in rig.sandbox.resources["Observation"])}
    assert expected and set(rig.sink.delivered) == expected  # exactly the admitted patients' records
    [pending] = rig.cursors.pending_roster_identifiers("poll-health")
    assert pending.value == "NOT-IN-THE-EHR-YET" and pending.attempts == 1  # kept for retry, counted
    searches = [r for r in rig.sandbox.fhir_requests("Patient") if r.status == 200]
    assert len(searches) == 3

    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    roster = [x for x in lines if x.get("endpoint") == "roster" and "PollRosterResolved" in x]
    assert [(x["PollRosterResolved"], x["PollRosterUnresolved"]) for x in roster] == [(2.0, 1.0)]
    assert any(x.get("endpoint") == "roster" and "PollCalls" in x for x in lines)  # the calls are counted too
    text = stream.getvalue()
    assert "NOT-IN-THE-EHR-YET" not in text and not any(mrn_of(p) in text for p in admitted)

    # Next window right away: resolved entries are not searched again, and the unknown one waits (backoff).
    before = len(rig.sandbox.fhir_requests("Patient"))
    assert crawl(rig, "Observation") == ["done"]
    assert [r for r in rig.sandbox.fhir_requests("Patient")[before:] if r.status == 200] == []
    # A window 6 minutes later: the unknown one is retried (still kept, counted).
    later = rig.poller()
    later.clock = lambda: time.time() + 360
    assert later.run(PollJob(tenant_id="poll-health", resource_type="Observation", job_id="o-later")).status == "done"
    assert len([r for r in rig.sandbox.fhir_requests("Patient")[before:] if r.status == 200]) == 1
    assert rig.cursors.pending_roster_identifiers("poll-health")[0].attempts == 2


def test_a_failing_resolution_does_not_fail_the_types_crawl(make_rig: Callable[..., Rig]) -> None:
    # The client may not read Patient (403 from the server): the entry stays pending, Observation goes on.
    rig = make_rig("epic", patients=3, settings=PollSettings(page_size=3))
    rig.sandbox.clients["poll-client"].policy_denied_types = {"Patient"}
    rig.cursors.add_to_roster("poll-health", {rig.sandbox.resources["Patient"][0]["id"]})
    rig.cursors.add_roster_identifier("poll-health", MRN_SYSTEM, mrn_of(rig.sandbox.resources["Patient"][1]))
    assert crawl(rig, "Observation") == ["done"]
    [pending] = rig.cursors.pending_roster_identifiers("poll-health")
    assert pending.attempts == 1
    assert rig.sink.delivered  # the already known patient was crawled
