"""Foundation stages used until a capability supplies its own: archive + forward, and the lake sink.

They are real (they store, forward and count); the capability stages replace them one by one.
"""

from __future__ import annotations

import json

from ehrbridge.aws import settings
from ehrbridge.aws.s3 import S3BlobStore
from ehrbridge.aws.sqs import SqsPublisher
from ehrbridge.contracts.claim_check import ClaimCheck
from ehrbridge.contracts.envelope import Envelope
from ehrbridge.observability import emit_metric
from ehrbridge.pipeline.consumer import Consumer
from ehrbridge.pipeline.stages import LakeWriter, Quarantine, archive_key


def _publisher(queue: str) -> SqsPublisher:
    return SqsPublisher(settings.queue_url(queue), ClaimCheck(S3BlobStore(settings.bucket_name("archive"))))


def build_forward_stage(stage_name: str, consumes: str, produces: str) -> Consumer:
    """Archive the inbound body and hand the envelope on to the next queue."""
    archive = S3BlobStore(settings.bucket_name("archive"))
    claim_check = ClaimCheck(archive)
    out = _publisher(produces)

    def handle(envelope: Envelope) -> None:
        envelope = claim_check.inbound(envelope)
        archive.put(archive_key(envelope), envelope.body_bytes())
        out.publish([envelope])
        emit_metric("Forwarded", tenant=envelope.tenant_id, message_type=envelope.kind)

    return Consumer(stage_name, handle, consumes=consumes, idempotency_table=settings.table_name("idempotency"))


def build_sink_stage(stage_name: str, consumes: str) -> Consumer:
    """Write FHIR bundles to the lake; anything else is quarantined with the reason."""
    archive = S3BlobStore(settings.bucket_name("archive"))
    claim_check = ClaimCheck(archive)
    lake = LakeWriter(S3BlobStore(settings.bucket_name("lake")))
    quarantine = Quarantine(S3BlobStore(settings.bucket_name("quarantine")), _publisher("quarantine"))

    def handle(envelope: Envelope) -> None:
        envelope = claim_check.inbound(envelope)
        try:
            bundle = json.loads(envelope.body_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError):
            bundle = None
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            quarantine.put(envelope, [f"{stage_name}: body is not a FHIR Bundle (kind {envelope.kind})"],
                           stage_name)
            return
        by_type: dict[str, list[dict]] = {}
        for entry in bundle.get("entry", []):
            resource = entry.get("resource") or {}
            by_type.setdefault(resource.get("resourceType", "Unknown"), []).append(resource)
        written = lake.write(envelope, by_type)
        emit_metric("ResourcesWritten", tenant=envelope.tenant_id, value=written)

    return Consumer(stage_name, handle, consumes=consumes, idempotency_table=settings.table_name("idempotency"))
