"""The two polling functions (handlers as Lambda runs them) on the local twin, against the sandbox EHR.

The dispatcher enqueues due pairs on poll-jobs; the poller crawls them onto normalize through SQS;
every current version on the server arrives as exactly one envelope id; a second dispatch within the
interval enqueues nothing.
"""

from __future__ import annotations

import pytest

from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.local.polling import dispatch_once, expected_correlation_ids, onboard_sandbox_tenant, poller_mapping
from ehrbridge.local.runner import PipelineRunner
from ehrbridge.sandbox.faults import Faults
from ehrbridge.sandbox.server import SandboxEHR
from tests.support import drain_queue

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("moto")]


def test_dispatcher_and_poller_functions_put_every_version_on_normalize(twin) -> None:  # type: ignore[no-untyped-def]
    faults = Faults(throttle_rate=0.1, retry_after_s=0, retry_after_forms=("delta",), error_rate=0.05,
                    truncate_rate=0.05, expire_tokens_every=7, seed=21)
    with SandboxEHR("generic", patients=8, faults=faults, paging_style="offset") as sandbox:
        base = TenantConfig.model_validate({"tenant_id": "twin-health", "vendor": "generic",
                                            "rate_limits": {"requests_per_second": 100}})
        tenant = onboard_sandbox_tenant(sandbox, base, workflows=("labs",))
        counts = dispatch_once()
        assert counts["enqueued"] == 3  # Patient, Observation, DiagnosticReport (not granted: skipped by the poller)
        mapping = poller_mapping(twin, timeout_s=60)
        assert PipelineRunner([mapping]).run_until_drained(timeout_s=90)
        assert mapping.stats.batch_errors == 0
        bodies = drain_queue(twin, "normalize", limit=500)
        delivered = {b["message_id"] for b in bodies}
        expected = expected_correlation_ids(tenant.tenant_id, sandbox.current_versions(["Patient", "Observation"]))
        assert delivered == set(expected)
        assert len(bodies) == len(delivered)  # FIFO deduplication absorbed any repeat
        assert {b["source"] for b in bodies} == {"fhir"} and all(b.get("patient_key") for b in bodies)
        assert dispatch_once()["enqueued"] == 0  # every pair polled, none due again yet


def test_dynamo_cursor_writes_are_conditional_and_roster_pages(twin) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from ehrbridge.poll.cursor import Cursor, CursorConflict, DynamoCursorStore, Window

    store = DynamoCursorStore(twin.tables["state"])
    first = store.put(Cursor("twin-health", "Observation", window=Window(since="2026-01-01T00:00:00.000Z")))
    second = store.put(replace(first, watermark="2026-01-02T00:00:00.000Z", window=None))
    with pytest.raises(CursorConflict):
        store.put(replace(first, watermark="2030-01-01T00:00:00.000Z"))  # stale: never past the other writer
    with pytest.raises(CursorConflict):
        store.put(Cursor("twin-health", "Observation"))  # a second "first write" loses too
    assert store.get("twin-health", "Observation") == second
    store.add_to_roster("twin-health", {f"p{i:03d}" for i in range(60)})
    assert store.roster("twin-health") == [f"p{i:03d}" for i in range(60)]


def test_invalid_poll_job_goes_straight_to_the_dlq(twin) -> None:  # type: ignore[no-untyped-def]
    from ehrbridge.local.runner import PipelineRunner
    from ehrbridge.local.twin import local_client

    sqs = local_client("sqs", twin.endpoint)
    sqs.send_message(QueueUrl=twin.queues["poll-jobs"], MessageBody='{"tenant_id": "x", "resource_type": 5}',
                     MessageGroupId="g", MessageDeduplicationId="bad-1")
    mapping = poller_mapping(twin, timeout_s=30)
    assert PipelineRunner([mapping]).run_until_drained(timeout_s=30)
    dead = sqs.receive_message(QueueUrl=twin.dlqs["poll-jobs"], MessageAttributeNames=["All"]).get("Messages", [])
    assert len(dead) == 1 and "poll job" in dead[0]["MessageAttributes"]["reason"]["StringValue"]
    assert mapping.stats.invocations == 1  # not retried five times first


def test_shared_rate_limiter_holds_a_tenant_to_its_rate_across_instances(twin) -> None:  # type: ignore[no-untyped-def]
    from ehrbridge.poll.limits import SharedRateLimiter

    now = [1000.2]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    # Two "Lambda instances" of one tenant, 3 requests/s between them.
    one, two = (SharedRateLimiter(twin.tables["state"], "twin-health", 3, clock=lambda: now[0], sleep=sleep)
                for _ in range(2))
    for limiter in (one, two, one):
        assert limiter.acquire() == 0.0
    assert two.acquire() > 0 and int(now[0]) == 1001  # the 4th waits for the next second
    other = SharedRateLimiter(twin.tables["state"], "other-tenant", 3, clock=lambda: now[0], sleep=sleep)
    assert other.acquire() == 0.0  # tenants do not share a budget
