"""`ehrbridge status`: the pipeline on one screen - queues and DLQs (depth, in flight, oldest age),
tokens per tenant (time left against the tenant's own lifetime, refresh failures), data staleness per
tenant and resource type (newest object in the lake), the identity review backlog, the open
quarantine. Read-only; the same calls work against AWS and the local twin.

Oldest-message age comes from CloudWatch (``ApproximateAgeOfOldestMessage``) for source queues:
looking at a source queue's messages would count as a receive toward its DLQ. A DLQ has no
redrive policy, so its oldest message is looked at directly (made visible again at once).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ehrbridge import resources


@dataclass
class QueueStatus:
    name: str
    visible: int | None = None
    in_flight: int | None = None
    oldest_age_s: float | None = None
    dlq_visible: int | None = None
    dlq_oldest_age_s: float | None = None
    error: str | None = None


@dataclass
class TenantStatus:
    tenant_id: str
    vendor: str
    token_seconds_left: float | None = None
    token_lifetime_s: float | None = None
    token_remaining_ratio: float | None = None
    refresh_mode: str | None = None  # how the token is kept fresh: scheduled / on demand
    refresh_failures: int = 0
    last_failure: str | None = None
    review_open: int | None = None
    review_oldest: str | None = None
    quarantine_open: int = 0
    newest_data: dict[str, float] = field(default_factory=dict)  # resource type -> seconds since the last write


@dataclass
class Status:
    at: str
    queues: list[QueueStatus] = field(default_factory=list)
    tenants: list[TenantStatus] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def queue_status(sqs: Any, cloudwatch: Any, spec: resources.QueueSpec, url: str | None, dlq_url: str | None,
                 now: float) -> QueueStatus:
    out = QueueStatus(spec.name)
    try:
        if url:
            attrs = _attrs(sqs, url)
            out.visible = int(attrs.get("ApproximateNumberOfMessages", 0))
            out.in_flight = int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0))
            out.oldest_age_s = _cloudwatch_oldest(cloudwatch, url.rsplit("/", 1)[-1], now)
        if dlq_url:
            out.dlq_visible = int(_attrs(sqs, dlq_url).get("ApproximateNumberOfMessages", 0))
            if out.dlq_visible:
                out.dlq_oldest_age_s = _peek_oldest(sqs, dlq_url, now)
    except Exception as err:  # one unreachable queue must not hide the rest of the screen
        out.error = f"{type(err).__name__}"
    return out


def _attrs(sqs: Any, url: str) -> dict[str, str]:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]


def _cloudwatch_oldest(cloudwatch: Any, queue_name: str, now: float) -> float | None:
    end = datetime.fromtimestamp(now, UTC)
    try:
        data = cloudwatch.get_metric_data(MetricDataQueries=[{
            "Id": "age", "MetricStat": {
                "Metric": {"Namespace": "AWS/SQS", "MetricName": "ApproximateAgeOfOldestMessage",
                           "Dimensions": [{"Name": "QueueName", "Value": queue_name}]},
                "Period": 60, "Stat": "Maximum"}}],
            StartTime=end - timedelta(minutes=10), EndTime=end, ScanBy="TimestampDescending")
    except Exception:  # no CloudWatch (or no permission): the age is unknown, not zero
        return None
    values = data.get("MetricDataResults", [{}])[0].get("Values", [])
    return float(values[0]) if values else None


def _peek_oldest(sqs: Any, url: str, now: float) -> float | None:
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=30,
                                   AttributeNames=["SentTimestamp"]).get("Messages", [])
    if not messages:
        return None
    sqs.change_message_visibility_batch(QueueUrl=url, Entries=[
        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0} for i, m in enumerate(messages)])
    oldest = min(int(m["Attributes"]["SentTimestamp"]) for m in messages) / 1000
    return max(0.0, now - oldest)


def newest_lake_writes(s3: Any, bucket: str, tenant_id: str, now: float) -> dict[str, float]:
    """Seconds since the newest lake object per resource type, walking the newest date folders only
    (``lake/<tenant>/<type>/<YYYY>/<MM>/<DD>/``), so it stays a handful of requests per type."""
    out: dict[str, float] = {}
    for type_prefix in _folders(s3, bucket, f"lake/{tenant_id}/"):
        prefix = type_prefix
        for _ in range(3):  # year, month, day
            folders = _folders(s3, bucket, prefix)
            if not folders:
                break
            prefix = max(folders)
        newest = None
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                stamp = obj["LastModified"].timestamp()
                newest = stamp if newest is None else max(newest, stamp)
        if newest is not None:
            out[type_prefix.rstrip("/").rsplit("/", 1)[-1]] = round(max(0.0, now - newest), 1)
    return out


def _folders(s3: Any, bucket: str, prefix: str) -> list[str]:
    folders: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        folders.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
    return folders


def collect(*, sqs: Any, cloudwatch: Any, s3: Any, queue_urls: dict[str, str], dlq_urls: dict[str, str],
            tenants: list[Any], tokens: Any, refresh_state: Any, mpi: Any | None, lake_bucket: str | None,
            quarantine: Any | None, now: float | None = None) -> Status:
    now = time.time() if now is None else now
    from ehrbridge.auth.tokens import kept_warm

    status = Status(at=datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"))
    for spec in resources.QUEUES:
        status.queues.append(queue_status(sqs, cloudwatch, spec, queue_urls.get(spec.name), dlq_urls.get(spec.name),
                                          now))
    open_items: dict[str, int] = {}
    if quarantine is not None:
        for item in quarantine.items():
            open_items[item.tenant_id] = open_items.get(item.tenant_id, 0) + 1
    for tenant in tenants:
        row = TenantStatus(tenant.tenant_id, tenant.vendor, quarantine_open=open_items.get(tenant.tenant_id, 0))
        token = tokens.get(tenant.tenant_id, fresh=True)
        if token is not None:
            row.token_seconds_left = round(max(0.0, token.remaining(now)), 1)
            row.token_lifetime_s = round(token.lifetime_s, 1)
            row.token_remaining_ratio = round(token.remaining_ratio(now), 3)
            row.refresh_mode = "scheduled" if kept_warm(token.lifetime_s) else "on demand"
        refresh = refresh_state.status(tenant.tenant_id)
        row.refresh_failures, row.last_failure = refresh.consecutive_failures, refresh.last_failure_reason
        if mpi is not None:
            row.review_open, row.review_oldest = mpi.review_backlog(tenant.tenant_id)
        if lake_bucket:
            row.newest_data = newest_lake_writes(s3, lake_bucket, tenant.tenant_id, now)
        status.tenants.append(row)
    status.problems = problems(status)
    return status


def problems(status: Status) -> list[str]:
    """What an operator should look at first (each maps to a runbook section)."""
    out = []
    for q in status.queues:
        if q.error:
            out.append(f"queue {q.name}: not readable ({q.error})")
        if q.dlq_visible:
            out.append(f"{q.name} DLQ holds {q.dlq_visible} message(s): docs/runbooks/dlq-redrive.md")
        if q.oldest_age_s is not None and q.oldest_age_s > 900 and q.name != "quarantine":
            out.append(f"{q.name}: oldest message {q.oldest_age_s / 60:.0f} min old: docs/runbooks/alarms.md#queue-age")
    for t in status.tenants:
        if t.refresh_failures >= 3:
            out.append(f"tenant {t.tenant_id}: {t.refresh_failures} token refreshes failed in a row ({t.last_failure})")
        if t.refresh_mode == "scheduled" and t.token_remaining_ratio is not None and t.token_remaining_ratio < 0.05:
            out.append(f"tenant {t.tenant_id}: token nearly expired ({t.token_seconds_left:.0f} s left) and it "
                       f"should be kept warm: is token_refresh running?")
        if t.quarantine_open:
            out.append(f"tenant {t.tenant_id}: {t.quarantine_open} open quarantine item(s): ehrbridge quarantine list")
    return out
