"""Tenant configuration: one health system. Non-secret config only; credentials live in Secrets Manager."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from ehrbridge.contracts.envelope import ContractError, TenantId
from ehrbridge.contracts.vendors import Vendor, VendorProfile, profile_for

Workflow = Literal["labs", "demographics", "encounters", "medications", "immunizations",
                   "conditions", "documents", "appointments", "orders"]
Algorithm = Literal["RS384", "ES384"]
ResourceType = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Za-z]{1,63}$")]

SECRET_PREFIX = "ehrbridge/tenants"  # noqa: S105 - a name prefix, not a secret


def credentials_secret_name(tenant_id: str) -> str:
    return f"{SECRET_PREFIX}/{tenant_id}/credentials"


def token_secret_name(tenant_id: str) -> str:
    return f"{SECRET_PREFIX}/{tenant_id}/token"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, frozen=True)


class MllpSource(_Strict):
    """One sending system allowed on the MLLP bridge (matched on MSH-3/MSH-4)."""

    source_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    sending_application: str = Field(min_length=1, max_length=227)
    sending_facility: str | None = Field(default=None, max_length=227)
    # HL7 table 0211 value (or a common alias) used when MSH-18 is empty.
    default_charset: str = "ASCII"
    # Sender's local time zone for HL7 TS values without an offset.
    timezone: str | None = None
    # Client certificate subject (CN) or SHA-256 fingerprint bound to this source (mutual TLS).
    client_cert_fingerprint: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None


    @field_validator("default_charset")
    @classmethod
    def _known_charset(cls, value: str) -> str:
        from ehrbridge.hl7.wire import is_supported_charset

        if not is_supported_charset(value):
            raise ValueError("not an HL7 table 0211 character set we support (e.g. ASCII, 8859/1, UNICODE UTF-8)")
        return value


class PollPlan(_Strict):
    resource_type: ResourceType
    interval_s: int = Field(default=300, ge=60, le=86400)
    overlap_s: int = Field(default=300, ge=0, le=3600)
    # Opt-in: after each window, count the type's hard deletions from its _history (where the server
    # offers it). Counted and logged only: the envelope contract cannot carry a deletion downstream.
    detect_deletions: bool = False


class RateLimits(_Strict):
    requests_per_second: float = Field(default=5.0, gt=0)
    token_requests_per_minute: int | None = Field(default=None, gt=0)


class MessageLimits(_Strict):
    """Per-message bounds in the normalizer, against amplification: a small input must never become an
    out-of-memory or a timeout that loops into the DLQ. Over a limit the message is quarantined with the
    limit named. The defaults leave room for the largest real messages (a 16 MiB MLLP frame with a
    base64 document) while a 1 MB message repeating one field half a million times is stopped before
    mapping (it would build a ~111 MB bundle in ~900 MB of memory: the function has 1,024 MB).
    """

    max_segments: int = Field(default=10_000, ge=1)
    max_repetitions_per_field: int = Field(default=1_000, ge=1)
    max_repetitions_per_message: int = Field(default=50_000, ge=1)
    max_resources_per_bundle: int = Field(default=5_000, ge=1)
    # Serialized bundle (compact JSON): twice the bridge's 16 MiB frame cap.
    max_output_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)


class TerminologyPolicy(_Strict):
    # A code failing its check is never emitted under the standard system: quarantine the
    # message, or keep the code under the sender's local system with a data-quality marker.
    on_invalid_code: Literal["quarantine", "keep_local"] = "keep_local"


class TenantConfig(_Strict):
    schema_version: Literal[1] = 1
    tenant_id: TenantId
    display_name: str | None = Field(default=None, max_length=200)
    vendor: Vendor
    fhir_base_url: AnyHttpUrl | None = None
    token_url: AnyHttpUrl | None = None  # discovered from .well-known/smart-configuration if absent
    client_id: str | None = Field(default=None, min_length=1, max_length=256)
    key_id: str | None = Field(default=None, min_length=1, max_length=256)
    algorithm: Algorithm = "RS384"
    workflows: tuple[Workflow, ...] = ()
    poll_plan: tuple[PollPlan, ...] = ()
    mllp_sources: tuple[MllpSource, ...] = ()
    rate_limits: RateLimits = RateLimits()
    # Sender's time zone (IANA) for HL7 timestamps without an offset.
    timezone: str = "UTC"
    # Assigning authority (CX-4 / facility) -> identifier system URI.
    identifier_systems: dict[str, str] = Field(default_factory=dict)
    # Local code system id -> {local code -> LOINC}, applied as FHIR ConceptMaps.
    code_maps: dict[str, dict[str, str]] = Field(default_factory=dict)
    terminology: TerminologyPolicy = TerminologyPolicy()
    # Normalizer bounds per message (amplification guard); safe defaults, raise per tenant if needed.
    limits: MessageLimits = MessageLimits()
    # For the CLI and local use only: a PEM path instead of Secrets Manager.
    private_key_file: Path | None = None
    # Vendor-specific context (athena practice id, Oracle tenant path, ...).
    vendor_context: dict[str, str] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown IANA time zone") from None
        return value

    @model_validator(mode="after")
    def _smart_fields_together(self) -> TenantConfig:
        if self.workflows and (self.fhir_base_url is None or self.client_id is None):
            raise ValueError("workflows need fhir_base_url and client_id")
        return self

    @property
    def profile(self) -> VendorProfile:
        return profile_for(self.vendor)

    @property
    def credentials_secret(self) -> str:
        return credentials_secret_name(self.tenant_id)

    @property
    def token_secret(self) -> str:
        return token_secret_name(self.tenant_id)

    # ---- loading ---------------------------------------------------------------
    @classmethod
    def parse_obj(cls, data: Any) -> TenantConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ContractError.from_validation_error("tenant config", err) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> TenantConfig:
        import yaml  # the CLI reads YAML; the functions read tenants from the state table

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ContractError("tenant config", [f"{path.name}: not valid YAML{where}"]) from None
        if not isinstance(data, dict):
            raise ContractError("tenant config", [f"{path.name}: expected a mapping at the top level"])
        if data.get("private_key_file") and not Path(data["private_key_file"]).is_absolute():
            data["private_key_file"] = str((path.parent / data["private_key_file"]).resolve())
        return cls.parse_obj(data)
