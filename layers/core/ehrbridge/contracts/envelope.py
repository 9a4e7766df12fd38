"""The envelope: the one message contract that travels on every queue.

Versioned with ``schema_version``; validated at every boundary. Bodies larger than the
claim-check threshold leave the envelope and go to S3 (``body_ref``), because an SQS
message is limited to 256 KB and we keep headroom for attributes.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

SCHEMA_VERSION = 1
# 200 KB: below the SQS 256 KiB limit with room for message attributes.
CLAIM_CHECK_THRESHOLD_BYTES = 200 * 1024

TenantId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]
OpaqueId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
Source = Literal["hl7v2", "fhir"]
BodyEncoding = Literal["utf-8", "base64", "json"]


class ContractError(ValueError):
    """A message or config broke its contract. The text names fields, never values (PHI)."""

    def __init__(self, what: str, problems: list[str]) -> None:
        self.what = what
        self.problems = problems
        super().__init__(f"invalid {what}: " + "; ".join(problems))

    @classmethod
    def from_validation_error(cls, what: str, err: ValidationError) -> ContractError:
        problems = []
        # include_input=False: pydantic's default message would echo the offending value.
        for e in err.errors(include_input=False, include_url=False, include_context=False):
            loc = ".".join(str(p) for p in e["loc"]) or "(root)"
            problems.append(f"{loc}: {e['msg']}")
        return cls(what, problems)


class S3Ref(BaseModel):
    """Pointer to a claim-checked body."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    bucket: Annotated[str, StringConstraints(min_length=3, max_length=63)]
    key: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    size: int = Field(ge=0)


class Envelope(BaseModel):
    """What every queue carries between stages."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    tenant_id: TenantId
    message_id: OpaqueId
    correlation_id: OpaqueId
    source: Source
    kind: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    received_at: AwareDatetime
    # Opaque (hashed) key that orders one patient's events; never a raw MRN.
    patient_key: OpaqueId | None = None
    body: str | None = None
    body_encoding: BodyEncoding = "utf-8"
    body_ref: S3Ref | None = None
    # Small, PHI-free facts a stage wants to pass on (e.g. MSH-10, charset, source id).
    attributes: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _exactly_one_body(self) -> Envelope:
        if (self.body is None) == (self.body_ref is None):
            raise ValueError("exactly one of body or body_ref must be set")
        return self

    # ---- construction helpers -------------------------------------------------
    @classmethod
    def parse_json(cls, raw: str | bytes) -> Envelope:
        try:
            return cls.model_validate_json(raw)
        except ValidationError as err:
            raise ContractError("envelope", _problems_or_json(err)) from None

    @classmethod
    def parse_obj(cls, data: Any) -> Envelope:
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ContractError.from_validation_error("envelope", err) from None

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)

    def body_bytes(self) -> bytes:
        """The inline body as bytes (claim-checked bodies are resolved by ClaimCheck)."""
        if self.body is None:
            raise ValueError("body is claim-checked; resolve it with ClaimCheck.load_body")
        if self.body_encoding == "base64":
            return base64.b64decode(self.body)
        return self.body.encode("utf-8")

    @property
    def group_id(self) -> str:
        """SQS FIFO MessageGroupId: tenant + patient, so one patient's events stay ordered."""
        return f"{self.tenant_id}:{self.patient_key or self.message_id}"[:128]

    def derive(self, *, kind: str, body: str, body_encoding: BodyEncoding = "utf-8",
               message_id: str | None = None, patient_key: str | None = None,
               attributes: dict[str, str] | None = None) -> Envelope:
        """A child envelope for the next stage; correlation_id follows the lineage."""
        return Envelope(
            tenant_id=self.tenant_id,
            message_id=message_id or stable_id(self.message_id, kind),
            correlation_id=self.correlation_id,
            source=self.source,
            kind=kind,
            received_at=self.received_at,
            patient_key=patient_key if patient_key is not None else self.patient_key,
            body=body,
            body_encoding=body_encoding,
            attributes={**self.attributes, **(attributes or {})},
        )


def _problems_or_json(err: ValidationError) -> list[str]:
    problems = ContractError.from_validation_error("envelope", err).problems
    return problems or ["not valid JSON"]


def stable_id(*parts: str | bytes) -> str:
    """A deterministic id: the same inputs always give the same id (dedupe across retries)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:40]


def patient_key_for(tenant_id: str, assigning_authority: str, identifier: str) -> str:
    """Opaque ordering key for a patient: hashed, so an MRN never travels as an SQS group id."""
    return "pk-" + stable_id("patient", tenant_id, assigning_authority.upper(), identifier)[:32]


def new_envelope(*, tenant_id: str, source: Source, kind: str, body: str | bytes,
                 natural_key: list[str | bytes], patient_key: str | None = None,
                 received_at: datetime | None = None, correlation_id: str | None = None,
                 attributes: dict[str, str] | None = None) -> Envelope:
    """Build an envelope whose message_id is stable for the same natural key."""
    message_id = stable_id(tenant_id, source, *natural_key)
    if isinstance(body, bytes):
        text, encoding = base64.b64encode(body).decode("ascii"), "base64"
    else:
        text, encoding = body, "utf-8"
    try:
        return Envelope(
            tenant_id=tenant_id,
            message_id=message_id,
            correlation_id=correlation_id or message_id,
            source=source,
            kind=kind,
            received_at=received_at or datetime.now(UTC),
            patient_key=patient_key,
            body=text,
            body_encoding=encoding,  # type: ignore[arg-type]
            attributes=attributes or {},
        )
    except ValidationError as err:
        raise ContractError.from_validation_error("envelope", err) from None
