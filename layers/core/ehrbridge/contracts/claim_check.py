"""Claim check: bodies too large for SQS go to S3 and the envelope carries a pointer."""

from __future__ import annotations

import hashlib
from typing import Protocol

from ehrbridge.contracts.envelope import CLAIM_CHECK_THRESHOLD_BYTES, Envelope, S3Ref


class BlobStore(Protocol):
    """The slice of S3 the pipeline needs; S3BlobStore and in-memory fakes implement it."""

    bucket: str

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    def get(self, key: str) -> bytes: ...


class ClaimCheckError(RuntimeError):
    pass


class ClaimCheck:
    def __init__(self, store: BlobStore, threshold: int = CLAIM_CHECK_THRESHOLD_BYTES) -> None:
        self.store = store
        self.threshold = threshold

    def outbound(self, envelope: Envelope) -> Envelope:
        """Move the body to S3 when the serialized envelope would exceed the threshold."""
        if envelope.body is None or len(envelope.to_json().encode("utf-8")) <= self.threshold:
            return envelope
        data = envelope.body.encode("utf-8")
        key = f"claim-check/{envelope.tenant_id}/{envelope.message_id}"
        self.store.put(key, data)
        ref = S3Ref(bucket=self.store.bucket, key=key, sha256=hashlib.sha256(data).hexdigest(),
                    size=len(data))
        return envelope.model_copy(update={"body": None, "body_ref": ref})

    def inbound(self, envelope: Envelope) -> Envelope:
        """Resolve a claim-checked envelope back to an inline body (integrity checked)."""
        if envelope.body_ref is None:
            return envelope
        ref = envelope.body_ref
        data = self.store.get(ref.key)
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise ClaimCheckError(f"claim-check body {ref.key} failed its sha256 check")
        return envelope.model_copy(update={"body": data.decode("utf-8"), "body_ref": None})
