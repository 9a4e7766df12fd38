"""Vendor quirks from the profile table, against the sandbox speaking each vendor's dialect."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.poll.poller import PollSettings
from tests.integration.poll.conftest import Rig
from tests.integration.poll.test_poller_faults import crawl, job

pytestmark = pytest.mark.integration


def test_epic_without_last_updated_crawls_per_patient_from_the_roster(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("epic", patients=6, settings=PollSettings(page_size=3))
    poller = rig.poller()
    assert poller.mode_for("Patient") == "full" and poller.mode_for("Observation") == "per_patient"
    assert crawl(rig, "Patient") == ["done"]
    assert len(rig.cursors.roster("poll-health")) == 6  # Patient polls feed the roster
    assert crawl(rig, "Observation") == ["done"]
    assert set(rig.sink.delivered) == rig.sandbox.current_versions(["Patient", "Observation"])
    searches = [r for r in rig.sandbox.fhir_requests("Observation") if r.status == 200]
    assert searches and all(r.status != 400 for r in rig.sandbox.fhir_requests("Observation"))


def test_epic_paging_session_expiry_restarts_the_window(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("epic", patients=9, settings=PollSettings(page_size=3))
    recorder = rig.sink

    class ExpiringSink:
        """After the first page, the server forgets every paging session (Epic 4113 / HTTP 410)."""

        def __init__(self) -> None:
            self.calls = 0

        def deliver(self, tenant: TenantConfig, resources: Sequence[dict[str, Any]]) -> None:
            self.calls += 1
            if self.calls == 1:
                rig.sandbox._sessions.clear()
            recorder.deliver(tenant, resources)

    rig.sink = ExpiringSink()  # type: ignore[assignment]
    outcome = rig.poller().run(job("Patient"))
    assert outcome.status == "done"
    assert any(r.status == 410 for r in rig.sandbox.fhir_requests())
    assert set(recorder.delivered) == rig.sandbox.current_versions(["Patient"])


def test_athena_sends_ah_practice_on_every_search(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("athena", patients=5, settings=PollSettings(page_size=4))
    assert crawl(rig, "Patient") == ["done"]
    assert crawl(rig, "Observation") == ["done"]  # per patient (athena needs patient=), with _lastUpdated
    assert set(rig.sink.delivered) == rig.sandbox.current_versions(["Patient", "Observation"])
    assert not [r for r in rig.sandbox.fhir_requests() if r.status == 400]


def test_epic_with_a_bulk_group_exports_instead_of_crawling(make_rig: Callable[..., Rig]) -> None:
    """No _lastUpdated, Group-level Bulk Data: each window is one $export spread over job steps."""
    import random

    rig = make_rig("epic", patients=5, bulk_status_polls=2,
                   tenant_overrides={"vendor_context": {"bulk_group_id": "ehrbridge-cohort"}})
    poller = rig.poller()
    assert poller.mode_for("Observation") == "bulk" and poller.mode_for("Patient") == "bulk"
    first = poller.run(job("Observation"))
    assert first.status == "continue" and first.delay_s >= 0  # kicked off; the server said wait
    assert rig.cursors.get("poll-health", "Observation").watermark is None  # never past an open window
    statuses = crawl(rig, "Observation")
    assert statuses[-1] == "done" and len(statuses) == 2  # one more 202, then the manifest
    assert set(rig.sink.delivered) == rig.sandbox.current_versions(["Observation"])
    cursor = rig.cursors.get("poll-health", "Observation")
    exports = [r for r in rig.sandbox.requests if r.path.endswith("/Group/ehrbridge-cohort/$export")]
    assert len(exports) == 1 and cursor.watermark is not None
    assert rig.metrics.requests >= 4  # kick-off, 3 status polls, the file: counted like searches
    # The next window exports with _since = transactionTime - overlap: only what changed.
    changed = rig.sandbox.mutate("Observation", 2, random.Random(5))
    rig.sink.delivered.clear()
    assert crawl(rig, "Observation")[-1] == "done"
    assert {rid for _, rid, v in rig.sink.delivered if v == "2"} == set(changed)
