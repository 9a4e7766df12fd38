"""What every queue-driven stage is wired to: the archive (claim checks), publishers, the quarantine.

One place builds them from the environment (ehrbridge.aws.settings), so the stages differ only in
their own logic.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ehrbridge.aws import settings
from ehrbridge.aws.s3 import S3BlobStore
from ehrbridge.aws.sqs import SqsPublisher
from ehrbridge.contracts.claim_check import ClaimCheck
from ehrbridge.pipeline.stages import Quarantine


@dataclass(frozen=True)
class StageIO:
    archive: S3BlobStore
    claim_check: ClaimCheck

    def publisher(self, queue: str) -> SqsPublisher:
        """A publisher to one of the pipeline queues; large bodies are claim-checked into the archive."""
        return SqsPublisher(settings.queue_url(queue), self.claim_check)

    @cached_property
    def quarantine(self) -> Quarantine:
        return Quarantine(S3BlobStore(settings.bucket_name("quarantine")), self.publisher("quarantine"))


def stage_io() -> StageIO:
    archive = S3BlobStore(settings.bucket_name("archive"))
    return StageIO(archive=archive, claim_check=ClaimCheck(archive))
