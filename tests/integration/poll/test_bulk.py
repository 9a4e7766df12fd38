"""Bulk Data $export against the sandbox over HTTP: kick-off, status polling with Retry-After, streamed
NDJSON, Oracle's 307 to storage followed without the token, a token expiring mid-export."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ehrbridge.poll.bulk import BulkExporter
from ehrbridge.poll.poller import PollSettings
from tests.integration.poll.conftest import Rig

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("vendor", ["generic", "oracle_health"])
def test_export_delivers_every_resource_and_sets_since(make_rig: Callable[..., Rig], vendor: str) -> None:
    rig = make_rig(vendor, patients=15, bulk_status_polls=2)
    exporter = BulkExporter(rig.tenant, rig.refresher, rig.sink, sleep=lambda s: None)
    rig.sandbox.expire_tokens()  # the first request meets a dead token: one refresh, one retry
    result = exporter.export(["Patient", "Observation"])
    assert result.status_polls == 3 and result.errors == 0
    expected = rig.sandbox.current_versions(["Patient", "Observation"])
    assert set(rig.sink.delivered) == expected and len(rig.sink.delivered) == len(expected)
    assert result.resources == {"Patient": 15, "Observation": len(expected) - 15}
    store = [r for r in rig.sandbox.requests if r.path == "/bulk/store"]
    assert (len(store) == 2 and all(r.status == 200 for r in store)) if vendor == "oracle_health" else not store
    # Next _since = transactionTime: a second export returns only what changed after it.
    import random

    changed = rig.sandbox.mutate("Observation", 4, random.Random(3))
    rig.sink.delivered.clear()
    again = exporter.export(["Patient", "Observation"], since=result.transaction_time)
    assert again.resources == {"Observation": 4}
    assert {rid for _, rid, _ in rig.sink.delivered} == set(changed)


def test_group_export_then_incremental_poll_continues(make_rig: Callable[..., Rig], tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ehrbridge.poll.oneshot import run_once

    rig = make_rig("generic", patients=6, settings=PollSettings(page_size=50))
    summary = run_once(rig.tenant, rig.refresher, tmp_path, resource_types=["Patient"], bulk=True,
                       group_id="all-patients")
    assert summary.bulk is not None and summary.bulk["resources"] == {"Patient": 6}
    assert any(r.path.endswith("/Group/all-patients/$export") for r in rig.sandbox.requests)
    # The poll after the export starts at its transactionTime (minus the overlap): nothing new to write.
    assert summary.new == {"Patient": 6} and summary.watermark["Patient"] is not None
    search = [r for r in rig.sandbox.fhir_requests("Patient") if r.status == 200]
    assert len(search) == 1
