"""The one definition of the pipeline's AWS resources.

The CDK app (infra/) and the local twin (ehrbridge.local) both build from these specs, so the
queues, tables, buckets and keys that run locally are the ones that deploy. Handlers learn
physical names from environment variables whose names are derived here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

KMS_KEY_ALIAS = "alias/ehrbridge"
DEFAULT_PREFIX = "ehrbridge"
# Redrives can come days later; dedupe must outlive queue retention (14 days).
IDEMPOTENCY_TTL_S = 15 * 24 * 3600


@dataclass(frozen=True)
class QueueSpec:
    name: str
    purpose: str
    fifo: bool = True
    # Six times the consumer's timeout is AWS's advice for Lambda event source mappings.
    visibility_timeout_s: int = 180
    max_receive_count: int = 5
    retention_days: int = 14
    batch_size: int = 10

    def physical_name(self, prefix: str = DEFAULT_PREFIX) -> str:
        return f"{prefix}-{self.name}" + (".fifo" if self.fifo else "")

    def dlq_physical_name(self, prefix: str = DEFAULT_PREFIX) -> str:
        return f"{prefix}-{self.name}-dlq" + (".fifo" if self.fifo else "")

    @property
    def url_env(self) -> str:
        return "EHRBRIDGE_QUEUE_" + self.name.upper().replace("-", "_") + "_URL"

    @property
    def dlq_url_env(self) -> str:
        return "EHRBRIDGE_QUEUE_" + self.name.upper().replace("-", "_") + "_DLQ_URL"


@dataclass(frozen=True)
class IndexSpec:
    name: str
    partition_key: str
    sort_key: str | None = None


@dataclass(frozen=True)
class TableSpec:
    name: str
    purpose: str
    partition_key: str
    sort_key: str | None = None
    ttl_attribute: str | None = None
    indexes: tuple[IndexSpec, ...] = ()

    def physical_name(self, prefix: str = DEFAULT_PREFIX) -> str:
        return f"{prefix}-{self.name}"

    @property
    def name_env(self) -> str:
        return "EHRBRIDGE_TABLE_" + self.name.upper().replace("-", "_")


@dataclass(frozen=True)
class BucketSpec:
    name: str
    purpose: str
    # Raw messages and quarantined input are evidence: keep versions, expire late.
    expire_days: int | None = None

    def physical_name(self, prefix: str = DEFAULT_PREFIX, account: str = "000000000000") -> str:
        return f"{prefix}-{self.name}-{account}"

    @property
    def name_env(self) -> str:
        return "EHRBRIDGE_BUCKET_" + self.name.upper().replace("-", "_")


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    purpose: str
    consumes: str | None  # queue name, or None for scheduled functions
    produces: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    buckets: tuple[str, ...] = ()
    timeout_s: int = 30
    memory_mb: int = 1024
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def handler_module(self) -> str:
        return f"functions/{self.name}/handler.py"


QUEUES: tuple[QueueSpec, ...] = (
    QueueSpec("hl7-inbound", "raw HL7 v2 from the MLLP bridge, committed before the ACK"),
    QueueSpec("normalize", "HL7 v2 messages and vendor FHIR resources to normalize"),
    QueueSpec("identity", "canonical FHIR bundles awaiting patient identity resolution"),
    QueueSpec("quarantine", "messages that could not be mapped, with their reasons"),
    QueueSpec("poll-jobs", "due (tenant, resource type) polling jobs", visibility_timeout_s=900,
              batch_size=1),
)

TABLES: tuple[TableSpec, ...] = (
    TableSpec("idempotency", "Powertools idempotency records keyed by message_id", "id",
              ttl_attribute="expiration"),
    TableSpec("state", "poll cursors, token-refresh locks, resend ACKs, resource versions", "pk", "sk",
              ttl_attribute="expires_at"),
    TableSpec("mpi", "enterprise patients, blocking keys, links, review items", "pk", "sk",
              indexes=(IndexSpec("gsi1", "gsi1pk", "gsi1sk"),)),
)

BUCKETS: tuple[BucketSpec, ...] = (
    BucketSpec("archive", "raw source messages and claim-checked bodies"),
    BucketSpec("quarantine", "input that could not be mapped, with the reason"),
    BucketSpec("lake", "canonical FHIR NDJSON per tenant and resource type"),
)

FUNCTIONS: tuple[FunctionSpec, ...] = (
    FunctionSpec("hl7_ingest", "parse, dedupe, split batches, archive raw, route to normalize",
                 consumes="hl7-inbound", produces=("normalize", "quarantine"),
                 tables=("idempotency",), buckets=("archive", "quarantine")),
    FunctionSpec("normalizer", "HL7 v2 / vendor FHIR to canonical, validated FHIR R4",
                 consumes="normalize", produces=("identity", "quarantine"),
                 tables=("idempotency", "state"), buckets=("archive", "quarantine")),
    FunctionSpec("identity_matcher", "resolve patients, rewrite references, write the lake",
                 consumes="identity", produces=("quarantine",), tables=("idempotency", "mpi"),
                 buckets=("archive", "lake", "quarantine")),
    FunctionSpec("token_refresh", "refresh each SMART tenant's access token before it expires (scheduled)",
                 consumes=None, tables=("state",), timeout_s=60, memory_mb=512),
)

# FHIR polling (infra: constructs/polling.py builds both, with the poll-jobs queue's event source).
POLLING_FUNCTIONS: tuple[FunctionSpec, ...] = (
    FunctionSpec("poll_dispatcher", "decide which (tenant, resource type) pairs are due; enqueue poll jobs "
                 "(scheduled)", consumes=None, produces=("poll-jobs",), tables=("state",), timeout_s=60,
                 memory_mb=512),
    # The poll-jobs visibility timeout (900 s) is six times this timeout, as for every queue consumer.
    FunctionSpec("fhir_poller", "crawl one (tenant, resource type) window from the EHR's FHIR API onto normalize",
                 consumes="poll-jobs", produces=("normalize", "poll-jobs"), tables=("state",),
                 buckets=("archive",), timeout_s=150, memory_mb=1024),
)


_T = TypeVar("_T", bound=Any)


def queue(name: str) -> QueueSpec:
    return _by_name(QUEUES, name)


def table(name: str) -> TableSpec:
    return _by_name(TABLES, name)


def bucket(name: str) -> BucketSpec:
    return _by_name(BUCKETS, name)


def function(name: str) -> FunctionSpec:
    return _by_name(FUNCTIONS + POLLING_FUNCTIONS, name)


def _by_name(items: tuple[_T, ...], name: str) -> _T:
    for item in items:
        if item.name == name:
            return item
    raise KeyError(f"no resource named {name!r}")
