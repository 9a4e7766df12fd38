"""Wire the bridge to AWS: the hl7-inbound queue, the claim-check bucket, the quarantine, the ACK store.

Physical names come from the same environment variables every function uses
(``ehrbridge.aws.settings``), so the container, the local demo and the tests build it one way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ehrbridge.aws import settings as aws_settings
from ehrbridge.aws.clients import client
from ehrbridge.aws.s3 import S3BlobStore
from ehrbridge.aws.sqs import SqsPublisher
from ehrbridge.contracts.claim_check import ClaimCheck
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.mllp.ack_store import DurableAcks, DynamoAckStore
from ehrbridge.mllp.commit import GroupCommitter, SqsSink
from ehrbridge.mllp.metrics import ACK_STORE_LATENCY, SQS_BATCH_LATENCY, BridgeMetrics
from ehrbridge.mllp.server import BridgeSettings, MllpBridge, QuarantineWriter
from ehrbridge.pipeline.stages import Quarantine


@dataclass(frozen=True)
class AwsTargets:
    inbound_queue_url: str
    archive_bucket: str | None = None  # claim-checked bodies
    quarantine_bucket: str | None = None
    quarantine_queue_url: str | None = None
    state_table: str | None = None  # durable ACK store for resends; without it, replay is per worker only

    @classmethod
    def from_env(cls) -> AwsTargets:
        def optional(fn, name: str) -> str | None:  # type: ignore[no-untyped-def]
            try:
                return fn(name)
            except aws_settings.MissingSetting:
                return None

        return cls(inbound_queue_url=aws_settings.queue_url("hl7-inbound"),
                   archive_bucket=optional(aws_settings.bucket_name, "archive"),
                   quarantine_bucket=optional(aws_settings.bucket_name, "quarantine"),
                   quarantine_queue_url=optional(aws_settings.queue_url, "quarantine"),
                   state_table=optional(aws_settings.table_name, "state"))


def write_linger_for(settings: BridgeSettings) -> float:
    """Write-behind writes can wait to fill a batch (no ACK waits on them); write-through ones go out at the
    end of the current event-loop pass, since every ACK of the batch waits for them."""
    return settings.ack_store_write_linger_s if settings.ack_store_write_behind else 0.0


def warm_clients(targets: AwsTargets) -> list[str]:
    """Create the bridge's AWS clients before it listens: loading botocore's service models inside the first
    message's ACK-store/commit deadline (1 s by default) made a fresh worker's first answers AE on a busy host."""
    services = ["sqs"]
    if targets.state_table:
        services.append("dynamodb")
    if targets.archive_bucket or targets.quarantine_bucket:
        services.append("s3")
    for service in services:
        client(service)
    return services


def build_bridge(settings: BridgeSettings, tenants: list[TenantConfig], targets: AwsTargets, *,
                 metrics: BridgeMetrics | None = None,
                 tenant_loader: Callable[[], list[TenantConfig]] | None = None) -> MllpBridge:
    metrics = metrics or BridgeMetrics(interval=settings.metrics_interval_s)
    warm_clients(targets)
    claim_check = ClaimCheck(S3BlobStore(targets.archive_bucket)) if targets.archive_bucket else None
    quarantine = None
    if targets.quarantine_bucket and targets.quarantine_queue_url:
        quarantine = QuarantineWriter(Quarantine(S3BlobStore(targets.quarantine_bucket),
                                                 SqsPublisher(targets.quarantine_queue_url)))

    def on_batch(size: int, elapsed_ms: float, failed: int) -> None:
        metrics.observe(SQS_BATCH_LATENCY, "all", elapsed_ms)

    committer = GroupCommitter(SqsSink(targets.inbound_queue_url), claim_check=claim_check,
                               linger_s=settings.linger_s, on_batch=on_batch)
    ack_store = None
    if targets.state_table:
        def on_store_batch(kind: str, size: int, elapsed_ms: float, failed: int) -> None:
            metrics.observe(ACK_STORE_LATENCY, "all", elapsed_ms)

        ack_store = DurableAcks(DynamoAckStore(targets.state_table, ttl_s=settings.ack_store_ttl_s,
                                               conditional=settings.ack_store_conditional),
                                linger_s=settings.linger_s, timeout_s=settings.ack_store_timeout_s,
                                write_linger_s=write_linger_for(settings),
                                on_batch=on_store_batch)
    return MllpBridge(settings, tenants, committer, quarantine=quarantine, metrics=metrics,
                      tenant_loader=tenant_loader, ack_store=ack_store)
