"""Roster hygiene over real HTTP (sandbox as Epic): entries expire without activity, data flowing keeps a
patient on, a merged-away Patient leaves the roster for its survivor, and identifiers that keep failing
show in the PollRosterStuck gauge (the unresolved-roster alarm's metric)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import pytest

from ehrbridge.poll.cursor import STUCK_AFTER_S, InMemoryCursorStore
from ehrbridge.poll.metrics import PollMetrics
from ehrbridge.poll.poller import PollSettings
from ehrbridge.sandbox.data import MRN_SYSTEM
from tests.integration.poll.conftest import Rig
from tests.integration.poll.test_poller_faults import crawl

pytestmark = pytest.mark.integration

DAY = 86_400.0
T0 = 1_900_000_000.0
TENANT = "poll-health"


def test_entries_expire_without_activity_and_new_records_keep_a_patient_on(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("epic", patients=3, settings=PollSettings(page_size=5))
    now = [T0]
    rig.cursors = InMemoryCursorStore(roster_expiry_s=90 * DAY, clock=lambda: now[0])
    real = [p["id"] for p in rig.sandbox.resources["Patient"][:2]]
    rig.cursors.add_to_roster(TENANT, {*real, "gone-elsewhere"})  # the last one has no records at this EHR

    now[0] = T0 + 80 * DAY  # a crawl inside the expiry: records for the real ones, nothing for the other
    assert crawl(rig, "Observation") == ["done"]
    asked = {r.params.get("patient") for r in rig.sandbox.fhir_requests("Observation")}
    assert asked == {*real, "gone-elsewhere"}

    now[0] = T0 + 100 * DAY  # past the first expiry: only the patients whose data kept flowing remain
    assert rig.cursors.roster(TENANT) == sorted(real)
    before = len(rig.sandbox.fhir_requests("Observation"))
    assert crawl(rig, "Observation") == ["done"]
    assert {r.params.get("patient") for r in rig.sandbox.fhir_requests("Observation")[before:]} == set(real)

    now[0] = T0 + 300 * DAY  # nothing for a long time: the roster empties itself
    assert rig.cursors.roster(TENANT) == []


def test_a_merged_away_patient_leaves_the_roster_for_its_survivor(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("epic", patients=4, settings=PollSettings(page_size=5))
    assert crawl(rig, "Patient") == ["done"]
    patients = rig.sandbox.resources["Patient"]
    retired, survivor = patients[1], patients[2]
    assert retired["id"] in rig.cursors.roster(TENANT)

    # The EHR merges: the old record gets a new version, inactive, replaced-by the survivor (FHIR Patient.link).
    merged = json.loads(json.dumps(retired))
    merged["meta"] = {"versionId": str(int(retired["meta"]["versionId"]) + 1), "lastUpdated": rig.sandbox.next_stamp()}
    merged["active"] = False
    merged["link"] = [{"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"}]
    rig.sandbox.add_resource(merged)
    assert crawl(rig, "Patient") == ["done"]

    roster = rig.cursors.roster(TENANT)
    assert retired["id"] not in roster and survivor["id"] in roster
    before = len(rig.sandbox.fhir_requests("Observation"))
    assert crawl(rig, "Observation") == ["done"]
    asked = {r.params.get("patient") for r in rig.sandbox.fhir_requests("Observation")[before:]}
    assert retired["id"] not in asked and survivor["id"] in asked


def test_identifiers_that_keep_failing_show_in_the_stuck_gauge(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("epic", patients=2, settings=PollSettings(page_size=5))
    rig.cursors = InMemoryCursorStore(clock=lambda: T0)
    rig.cursors.add_roster_identifier(TENANT, MRN_SYSTEM, "NOT-IN-THE-EHR")
    rig.cursors.add_roster_identifier(TENANT, "urn:wrong-system", "ALSO-UNKNOWN")
    known = next(i["value"] for i in rig.sandbox.resources["Patient"][0]["identifier"] if i["system"] == MRN_SYSTEM)
    rig.cursors.add_roster_identifier(TENANT, MRN_SYSTEM, known)
    gauges = []
    for step, at in enumerate((T0 + 60, T0 + 600, T0 + STUCK_AFTER_S + 60, T0 + STUCK_AFTER_S + 600)):
        stream = io.StringIO()
        rig.metrics = PollMetrics(TENANT, stream=stream)
        poller = rig.poller()
        poller.clock = lambda at=at: at
        poller.run(_job(step))
        [line] = [json.loads(x) for x in stream.getvalue().splitlines() if "PollRosterStuck" in x]
        gauges.append((line["PollRosterResolved"], line["PollRosterUnresolved"], line["PollRosterStuck"]))
    # Young failures are not stuck; after an hour and 3 attempts both unknown identifiers are; the resolved
    # one never counts.
    assert gauges == [(1.0, 2.0, 0.0), (0.0, 2.0, 0.0), (0.0, 2.0, 2.0), (0.0, 2.0, 2.0)]
    assert "NOT-IN-THE-EHR" not in stream.getvalue()


def _job(step: int):  # type: ignore[no-untyped-def]
    from ehrbridge.poll.jobs import PollJob

    return PollJob(tenant_id=TENANT, resource_type="Observation", job_id=f"o-{step}")


def test_an_identifier_search_answering_with_the_merged_record_resolves_to_the_survivor(
        make_rig: Callable[..., Rig]) -> None:
    """After a merge the EHR may still find the old record by the old or the shared MRN: it stands for its
    survivor, so the entry resolves (instead of staying 'ambiguous' forever)."""
    rig = make_rig("epic", patients=3, settings=PollSettings(page_size=5))
    old, survivor = rig.sandbox.resources["Patient"][0], rig.sandbox.resources["Patient"][1]
    mrn = next(i["value"] for i in old["identifier"] if i["system"] == MRN_SYSTEM)
    merged = json.loads(json.dumps(old))
    merged["meta"] = {"versionId": "2", "lastUpdated": rig.sandbox.next_stamp()}
    merged["link"] = [{"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"}]
    rig.sandbox.add_resource(merged)
    shared = json.loads(json.dumps(survivor))  # the survivor carries the old MRN too: two matches
    shared["identifier"] = [*survivor["identifier"], {"system": MRN_SYSTEM, "value": mrn}]
    rig.sandbox.add_resource(shared)
    rig.cursors.add_roster_identifier(TENANT, MRN_SYSTEM, mrn)
    assert crawl(rig, "Observation") == ["done"]
    assert rig.cursors.pending_roster_identifiers(TENANT) == []
    assert rig.cursors.roster(TENANT) == [survivor["id"]]
