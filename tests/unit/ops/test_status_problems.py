"""What `ehrbridge status` flags for attention, and what it must not flag."""

from __future__ import annotations

from ehrbridge.ops.status import QueueStatus, Status, TenantStatus, problems


def test_dlqs_stuck_queues_failing_refreshes_and_cold_warm_tokens_are_flagged() -> None:
    status = Status(at="now", queues=[
        QueueStatus("normalize", visible=3, in_flight=0, oldest_age_s=1200, dlq_visible=2),
        QueueStatus("quarantine", visible=40, in_flight=0, oldest_age_s=86400, dlq_visible=0),  # a work list
        QueueStatus("identity", visible=0, in_flight=0, oldest_age_s=30, dlq_visible=0),
        QueueStatus("poll-jobs", error="EndpointConnectionError"),
    ], tenants=[
        TenantStatus("warm-late", "epic", token_seconds_left=60, token_lifetime_s=3600, token_remaining_ratio=0.017,
                     refresh_mode="scheduled"),
        TenantStatus("short-lived", "generic", token_seconds_left=0, token_lifetime_s=30, token_remaining_ratio=0.0,
                     refresh_mode="on demand"),
        TenantStatus("failing", "athena", refresh_failures=4, last_failure="invalid_client: unknown client"),
        TenantStatus("healthy", "epic", token_seconds_left=3000, token_lifetime_s=3600, token_remaining_ratio=0.83,
                     refresh_mode="scheduled", quarantine_open=2),
    ])
    found = problems(status)
    assert any("normalize DLQ holds 2" in p and "dlq-redrive" in p for p in found)
    assert any(p.startswith("normalize: oldest message 20 min") for p in found)
    assert not any(p.startswith("quarantine:") for p in found)  # its age is not a pipeline problem
    assert any("poll-jobs: not readable" in p for p in found)
    assert any("warm-late: token nearly expired" in p for p in found)
    assert not any("short-lived" in p for p in found)  # on-demand tokens lapse between uses by design
    assert any("failing: 4 token refreshes failed" in p and "unknown client" in p for p in found)
    assert any("healthy: 2 open quarantine item(s)" in p for p in found)
    assert len(found) == 6
