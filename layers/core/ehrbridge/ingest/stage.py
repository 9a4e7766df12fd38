"""hl7_ingest: from ``hl7-inbound`` (one envelope per MLLP frame) to ``normalize`` (one envelope per message).

Steps per inbound envelope:
1. resolve a claim-checked body; archive the raw bytes, untouched, under ``raw/<tenant>/<day>/<message_id>``;
2. split a batch file (FHS/BHS ... BTS/FTS) into its messages; a plain message stays one;
3. per message: read MSH, strictly decode in its charset (MSH-18, else the source default the bridge
   recorded), parse with ``hl7`` (python-hl7) to be sure it is structurally readable, compute the
   patient ordering key from PID-3;
4. publish every good message to ``normalize`` (body still the raw bytes, base64; attributes kept);
   every bad one goes to the quarantine with the reason.

Idempotency: the Consumer dedupes on the inbound message_id (Powertools); child ids are stable
(parent id + index + SHA-256 of the child bytes), so a retry republishes the same ids and the FIFO
deduplication drops the copies. A publish failure raises, so the record fails alone (partial batch
response) and SQS retries it, then the DLQ.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import hl7

from ehrbridge.aws.sqs import Publisher
from ehrbridge.contracts.claim_check import ClaimCheck
from ehrbridge.contracts.envelope import Envelope, stable_id
from ehrbridge.hl7.wire import WireError, decode_detailed, is_batch, normalize_segment_ends, read_msh, split_batch
from ehrbridge.mllp.message import patient_key
from ehrbridge.observability import emit_metric, logger
from ehrbridge.pipeline.stages import BlobStoreLike, Quarantine, archive_key, archive_metadata

STAGE = "hl7_ingest"


@dataclass(frozen=True)
class ChildResult:
    envelope: Envelope
    problem: str | None  # None: good, else the quarantine reason (PHI-free)


class Hl7Ingest:
    def __init__(self, *, archive: BlobStoreLike, claim_check: ClaimCheck | None, out: Publisher,
                 quarantine: Quarantine) -> None:
        self.archive = archive
        self.claim_check = claim_check
        self.out = out
        self.quarantine = quarantine

    def __call__(self, envelope: Envelope) -> None:
        if envelope.body_ref is not None:
            if self.claim_check is None:
                raise RuntimeError("claim-checked body but no claim-check store configured")
            envelope = self.claim_check.inbound(envelope)
        raw = self._raw_bytes(envelope)
        self.archive.put(archive_key(envelope), raw, "x-application/hl7-v2+er7", metadata=archive_metadata(envelope))
        results = self.split(envelope, raw)
        good = [r.envelope for r in results if r.problem is None]
        for result in results:
            if result.problem is not None:
                self.quarantine.put(result.envelope, [result.problem], STAGE)
        if good:
            self.out.publish(good)
        emit_metric("Hl7Ingested", tenant=envelope.tenant_id, value=len(good), message_type=envelope.kind)
        logger.info("hl7 ingested", extra={"count": len(good), "failed": len(results) - len(good),
                                           "batch_size": len(results)})

    @staticmethod
    def _raw_bytes(envelope: Envelope) -> bytes:
        if envelope.body_encoding == "base64":
            return envelope.body_bytes()
        # Tolerate a utf-8 body (e.g. a hand-made test event); the bytes are its UTF-8 encoding.
        return (envelope.body or "").encode("utf-8")

    def split(self, parent: Envelope, raw: bytes) -> list[ChildResult]:
        """One result per message in ``raw`` (a batch file gives several)."""
        batch = is_batch(raw)
        try:
            messages = split_batch(raw) if batch else [raw]
        except WireError as err:
            return [ChildResult(parent, f"{err.code}: {err.reason}")]
        if not messages:
            return [ChildResult(parent, "100: batch contains no message")]
        return [self._child(parent, message, index, len(messages), batch) for index, message in enumerate(messages)]

    def _child(self, parent: Envelope, message: bytes, index: int, total: int, batch: bool) -> ChildResult:
        attrs = dict(parent.attributes)
        source_id = attrs.get("source_id", "unknown")
        default_charset = attrs.get("charset") or "ASCII"
        if batch:
            message_id = stable_id(parent.message_id, str(index), hashlib.sha256(message).hexdigest())
            attrs.update(batch_index=str(index), batch_size=str(total), parent_message_id=parent.message_id)
        else:
            message_id = parent.message_id
        body = base64.b64encode(message).decode("ascii")
        kind = parent.kind
        try:
            header = read_msh(message)
            kind = header.kind[:64]
            attrs["msh10"] = header.control_id[:64]
            if header.version:
                attrs["version"] = header.version[:16]
            if header.charset:
                attrs["charset"] = header.charset
            text, _codec = decode_detailed(message, header.charset, default_charset)
            # python-hl7 wants CR-terminated segments; the bytes we forward stay as received.
            parsed = hl7.parse(normalize_segment_ends(text.encode("utf-8")).decode("utf-8"))
            if not len(parsed) or str(parsed.segments("MSH")[0][0]) != "MSH":
                raise WireError("no MSH segment", "100")
            key = patient_key(parent.tenant_id, source_id, text, header)
        except WireError as err:
            return ChildResult(parent.derive(kind=kind or "UNPARSEABLE", body=body, body_encoding="base64",
                                             message_id=message_id, attributes=attrs),
                               f"{err.code}: {err.reason}")
        except Exception as err:  # python-hl7 raises assorted errors on malformed input
            return ChildResult(parent.derive(kind=kind or "UNPARSEABLE", body=body, body_encoding="base64",
                                             message_id=message_id, attributes=attrs),
                               f"100: not parseable as HL7 v2 ({type(err).__name__})")
        child = parent.derive(kind=kind, body=body, body_encoding="base64", message_id=message_id,
                              patient_key=key, attributes=attrs)
        return ChildResult(child, None)


def ingest_results(stage: Hl7Ingest, envelope: Envelope) -> Sequence[ChildResult]:
    """For tests and tooling: what ingest would publish, without side effects."""
    return stage.split(envelope, Hl7Ingest._raw_bytes(envelope))


def build_hl7_ingest() -> Hl7Ingest:
    """The stage wired to the AWS resources named in the environment (ehrbridge.aws.settings)."""
    from ehrbridge.pipeline.wiring import stage_io

    io = stage_io()
    return Hl7Ingest(archive=io.archive, claim_check=io.claim_check, out=io.publisher("normalize"),
                     quarantine=io.quarantine)


def build_consumer():  # type: ignore[no-untyped-def]
    from ehrbridge.aws import settings
    from ehrbridge.pipeline.consumer import Consumer

    return Consumer(STAGE, build_hl7_ingest(), consumes="hl7-inbound",
                    idempotency_table=settings.table_name("idempotency"))
