"""The normalizer stage: normalize envelope -> one canonical Bundle envelope on identity, or quarantine.

Output contract (docs/normalization.md): one envelope per source message,
``envelope.derive(kind=<input kind>, body=<Bundle JSON>, body_encoding="json")``; patient_key kept
(set from the normalized patient when the input had none); attributes add ``source_event_time``,
``structure`` and counts. Metrics per tenant and message type: Normalized, UnmappedSegments,
CodeRepairs; quarantines are counted by ``Quarantine.put`` per tenant and reason class.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

from ehrbridge.aws import settings
from ehrbridge.aws.sqs import Publisher
from ehrbridge.contracts.envelope import Envelope, stable_id
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.contracts.tenant_store import DynamoTenantStore, TenantNotFound
from ehrbridge.hl7.message import split_messages
from ehrbridge.normalize.engine import NormalizeResult, normalize_hl7
from ehrbridge.normalize.roster import RosterFeed, feeds_roster, merged_identifiers, roster_identifier
from ehrbridge.observability import emit_metric, logger
from ehrbridge.observability.names import reason_class

__all__ = ["STAGE", "NormalizerStage", "build_normalizer_stage", "normalize_envelope", "reason_class"]
from ehrbridge.pipeline.consumer import Consumer
from ehrbridge.pipeline.stages import Quarantine
from ehrbridge.pipeline.wiring import stage_io

STAGE = "normalizer"


def normalize_envelope(envelope: Envelope, tenant: TenantConfig) -> NormalizeResult:
    body = envelope.body_bytes()
    if envelope.source == "fhir":
        from ehrbridge.normalize.fhir_input import normalize_fhir

        return normalize_fhir(body, tenant, message_id=envelope.message_id)
    return normalize_hl7(body, tenant, source_id=envelope.attributes.get("source_id"),
                         message_id=envelope.message_id)


class NormalizerStage:
    """Domain step, independent of Lambda: the handler wires it to SQS through Consumer."""

    def __init__(self, tenants: Callable[[str], TenantConfig], out: Publisher, quarantine: Quarantine,
                 roster: RosterFeed | None = None) -> None:
        self.tenants = tenants
        self.out = out
        self.quarantine = quarantine
        self.roster = roster

    def __call__(self, envelope: Envelope) -> NormalizeResult:
        try:
            tenant = self.tenants(envelope.tenant_id)
        except TenantNotFound:
            self.quarantine.put(envelope, ["tenant is not configured"], STAGE)
            return NormalizeResult("quarantined", kind=envelope.kind, reasons=["tenant is not configured"])
        if envelope.source == "hl7v2":
            messages = split_messages(envelope.body_bytes())
            if len(messages) > 1:
                # A batch that was not split upstream: one output (or quarantine) per message, never a drop.
                results = [self._one(self._part(envelope, i, m), tenant) for i, m in enumerate(messages)]
                return next((r for r in results if not r.ok), results[0])
        return self._one(envelope, tenant)

    @staticmethod
    def _part(envelope: Envelope, index: int, message: bytes) -> Envelope:
        return envelope.model_copy(update={
            "message_id": stable_id(envelope.message_id, "part", str(index)),
            "body": base64.b64encode(message).decode("ascii"), "body_encoding": "base64"})

    def _one(self, envelope: Envelope, tenant: TenantConfig) -> NormalizeResult:
        result = normalize_envelope(envelope, tenant)
        tenant_id = envelope.tenant_id
        if not result.ok:
            self.quarantine.put(envelope, result.reasons, STAGE)  # counts Quarantined per tenant and reason
            return result
        if self.roster is not None and envelope.source == "hl7v2" and feeds_roster(tenant, result.kind):
            self._feed_roster(tenant_id, result)
        attributes = {"source_event_time": result.source_event_time, "structure": result.structure,
                      "unmapped": str(len(result.unmapped)), "repairs": str(len(result.repairs))}
        body = result.bundle_json or json.dumps(result.bundle, separators=(",", ":"))
        out = envelope.derive(kind=envelope.kind, body=body,
                              body_encoding="json", patient_key=envelope.patient_key or result.patient_key,
                              attributes=attributes)
        self.out.publish([out])
        emit_metric("Normalized", tenant=tenant_id, message_type=envelope.kind)
        if result.unmapped:
            emit_metric("UnmappedSegments", tenant=tenant_id, value=len(result.unmapped), message_type=envelope.kind)
        if result.repairs:
            emit_metric("CodeRepairs", tenant=tenant_id, value=len(result.repairs), message_type=envelope.kind)
        logger.info("normalized", extra={"message_type": result.structure,
                                         "resource_count": len((result.bundle or {}).get("entry", [])),
                                         "unmapped": len(result.unmapped), "repairs": len(result.repairs)})
        return result


    def _feed_roster(self, tenant_id: str, result: NormalizeResult) -> None:
        """Stored before the message is acknowledged (a failed write fails the message; SQS retries it)."""
        identifier = roster_identifier(result.bundle)
        if identifier is None:
            emit_metric("RosterFeedSkipped", tenant=tenant_id, message_type=result.kind)
            return
        if self.roster is not None and self.roster.add_roster_identifier(tenant_id, *identifier):
            emit_metric("RosterFed", tenant=tenant_id, message_type=result.kind)
        for merged in merged_identifiers(result.bundle):  # A40: the merged-away patient is crawled no more
            if self.roster is not None and self.roster.retire_roster_identifier(tenant_id, *merged):
                emit_metric("RosterRetired", tenant=tenant_id, message_type=result.kind)


def build_normalizer_stage() -> Consumer:
    from ehrbridge.poll.cursor import DynamoCursorStore

    io = stage_io()
    store = DynamoTenantStore(settings.table_name("state"))
    stage = NormalizerStage(store.get, io.publisher("identity"), io.quarantine,
                            roster=DynamoCursorStore(settings.table_name("state")))

    def handle(envelope: Envelope) -> None:
        stage(io.claim_check.inbound(envelope))

    return Consumer(STAGE, handle, consumes="normalize", idempotency_table=settings.table_name("idempotency"))
