"""Queue publisher: sends envelopes to a FIFO queue with group and dedup ids, claim-checking big bodies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ehrbridge.aws.clients import client
from ehrbridge.contracts.claim_check import ClaimCheck
from ehrbridge.contracts.envelope import Envelope

SQS_BATCH_MAX = 10


class PublishError(RuntimeError):
    """Some envelopes were not accepted by the queue; their message ids are listed."""

    def __init__(self, failed: dict[str, str]) -> None:
        self.failed = failed  # message_id -> SQS error code
        super().__init__(f"{len(failed)} message(s) not accepted: " + ", ".join(sorted(set(failed.values()))))


class Publisher(Protocol):
    def publish(self, envelopes: Sequence[Envelope]) -> None: ...


class SqsPublisher:
    def __init__(self, queue_url: str, claim_check: ClaimCheck | None = None, sqs: Any = None) -> None:
        self.queue_url = queue_url
        self.claim_check = claim_check
        self._sqs = sqs

    @property
    def sqs(self) -> Any:
        return self._sqs or client("sqs")

    def publish(self, envelopes: Sequence[Envelope]) -> None:
        """Send all envelopes; raise PublishError naming any the queue did not take."""
        failed: dict[str, str] = {}
        for start in range(0, len(envelopes), SQS_BATCH_MAX):
            chunk = envelopes[start:start + SQS_BATCH_MAX]
            entries = []
            for index, env in enumerate(chunk):
                out = self.claim_check.outbound(env) if self.claim_check else env
                entry = {"Id": str(index), "MessageBody": out.to_json()}
                if self.queue_url.endswith(".fifo"):
                    entry["MessageGroupId"] = env.group_id
                    entry["MessageDeduplicationId"] = env.message_id
                entries.append(entry)
            response = self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            for failure in response.get("Failed", []):
                failed[chunk[int(failure["Id"])].message_id] = failure.get("Code", "unknown")
        if failed:
            raise PublishError(failed)


class InMemoryPublisher:
    """Collects what would be sent, for unit tests."""

    def __init__(self) -> None:
        self.sent: list[Envelope] = []

    def publish(self, envelopes: Sequence[Envelope]) -> None:
        self.sent.extend(envelopes)
