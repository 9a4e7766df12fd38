"""`ehrbridge local demo`: every sample in events/ through the real pipeline on the local twin.

Nothing is assumed: every input is traced by its correlation id to where it ended (the lake,
the quarantine, a DLQ). An input found nowhere is counted as lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from ehrbridge import resources
from ehrbridge.contracts.envelope import ContractError, Envelope, new_envelope
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.local.runner import EventSourceMapping, PipelineRunner, load_handler
from ehrbridge.local.twin import MotoServer, TwinResources, activate, local_client, provision

REPO_ROOT = Path(__file__).resolve().parents[4]
DEFAULT_EVENTS = REPO_ROOT / "events"
DEFAULT_TENANT = DEFAULT_EVENTS / "tenants" / "demo-health.yaml"
FUNCTIONS_DIR = REPO_ROOT / "functions"


@dataclass
class DemoSummary:
    messages_in: int = 0
    acks: dict[str, int] = field(default_factory=dict)
    returned_to_sender: int = 0
    resources_out: int = 0
    delivered: int = 0
    quarantined: int = 0
    dead_lettered: int = 0
    lost: int = 0
    in_flight: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    resources_by_type: dict[str, int] = field(default_factory=dict)
    quarantine_reasons: list[str] = field(default_factory=list)
    stages: dict[str, dict[str, int]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    output_dir: str = ""
    drained: bool = True

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class _Input:
    correlation_id: str
    kind: str


def sample_files(events_dir: Path) -> tuple[list[Path], list[Path]]:
    hl7 = sorted(p for p in (events_dir / "hl7").glob("*") if p.suffix.lower() in {".hl7", ".txt"})
    fhir = sorted((events_dir / "fhir").glob("*.json"))
    return hl7, fhir


def _publish(sqs: Any, queue_url: str, envelope: Envelope) -> None:
    sqs.send_message(QueueUrl=queue_url, MessageBody=envelope.to_json(), MessageGroupId=envelope.group_id,
                     MessageDeduplicationId=envelope.message_id)


def inject_fhir(twin: TwinResources, tenant: TenantConfig, files: Iterable[Path]) -> list[_Input]:
    """Vendor FHIR resources go straight to normalize, as the poller sends them."""
    sqs = local_client("sqs", twin.endpoint)
    inputs = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        try:
            kind = str(json.loads(text).get("resourceType", "Unknown"))
        except (json.JSONDecodeError, AttributeError):
            kind = "Unknown"
        envelope = new_envelope(tenant_id=tenant.tenant_id, source="fhir", kind=kind[:64], body=text,
                                natural_key=[path.name, text])
        _publish(sqs, twin.queues["normalize"], envelope)
        inputs.append(_Input(envelope.correlation_id, envelope.kind))
    return inputs


def pipeline_mappings(twin: TwinResources) -> list[EventSourceMapping]:
    sqs = local_client("sqs", twin.endpoint)
    mappings = []
    for fn in resources.FUNCTIONS:
        if fn.consumes is None:
            continue
        handler = load_handler(FUNCTIONS_DIR / fn.name / "handler.py")
        mappings.append(EventSourceMapping(
            sqs, queue_url=twin.queues[fn.consumes], queue_arn=twin.queue_arns[fn.consumes], handler=handler,
            function_name=fn.name, batch_size=resources.queue(fn.consumes).batch_size, timeout_s=fn.timeout_s))
    return mappings


def account(twin: TwinResources, inputs: list[_Input], summary: DemoSummary, output_dir: Path | None) -> None:
    """Trace every input to its terminal state; whatever is found nowhere is lost."""
    s3 = local_client("s3", twin.endpoint)
    sqs = local_client("sqs", twin.endpoint)
    delivered: set[str] = set()
    lake = twin.buckets["lake"]
    for key in _keys(s3, lake, "lake/"):
        head = s3.head_object(Bucket=lake, Key=key)
        meta = head.get("Metadata", {})
        delivered.add(meta.get("correlation-id", ""))
        body = s3.get_object(Bucket=lake, Key=key)["Body"].read()
        lines = [line for line in body.splitlines() if line.strip()]
        summary.resources_out += len(lines)
        resource_type = key.split("/")[2]
        summary.resources_by_type[resource_type] = summary.resources_by_type.get(resource_type, 0) + len(lines)
        if output_dir is not None:
            target = output_dir / "lake" / key.split("/", 1)[1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
    quarantined: set[str] = set()
    bucket = twin.buckets["quarantine"]
    for key in _keys(s3, bucket, "quarantine/"):
        if key.endswith(".reason.json"):
            record = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            quarantined.add(record.get("correlation_id", ""))
            summary.quarantine_reasons.extend(record.get("reasons", []))
    dead: set[str] = set()
    for name, url in twin.dlqs.items():
        if name == "quarantine":
            continue
        for body in _drain(sqs, url):
            try:
                dead.add(Envelope.parse_json(body).correlation_id)
            except ContractError:
                dead.add(f"invalid-envelope-{len(dead)}")
    ids = {i.correlation_id for i in inputs}
    summary.delivered = len(ids & delivered)
    summary.quarantined = len(ids & quarantined - delivered)
    summary.dead_lettered = len(ids & dead - delivered - quarantined)
    summary.lost = len(ids - delivered - quarantined - dead)


def _keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return sorted(keys)


def _drain(sqs: Any, url: str) -> list[str]:
    bodies: list[str] = []
    for _ in range(100):  # bounded: a DLQ in the demo holds a handful of messages
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=300,
                                       WaitTimeSeconds=0).get("Messages", [])
        if not messages:
            break
        bodies.extend(m["Body"] for m in messages)
    return bodies


def run_demo(*, events_dir: Path = DEFAULT_EVENTS, tenant_file: Path = DEFAULT_TENANT,
             output_dir: Path | None = None, timeout_s: float = 180.0) -> DemoSummary:
    tenant = TenantConfig.from_yaml(tenant_file)
    hl7_files, fhir_files = sample_files(events_dir)
    summary = DemoSummary(output_dir=str(output_dir or ""))
    saved_env = dict(os.environ)
    log_dir = output_dir or Path(tempfile.mkdtemp(prefix="ehrbridge-demo-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    # The functions' JSON logs and EMF metrics go to a file, so stdout carries only the summary.
    with (open(log_dir / "pipeline.log", "w", encoding="utf-8") as log_file, pipeline_output_to(log_file),
          MotoServer() as server, contextlib.ExitStack() as stack):
        twin = provision(server.endpoint, visibility_timeout_s=1)
        activate(twin)
        try:
            from ehrbridge.contracts.tenant_store import DynamoTenantStore

            DynamoTenantStore(twin.tables["state"]).put(tenant)
            summary.extras.update(_token_flow(twin, tenant_file))
            inputs = _feed_hl7(twin, tenant, hl7_files, summary) + inject_fhir(twin, tenant, fhir_files)
            polled, poller = _start_polling(twin, tenant, stack, summary)
            inputs += polled
            summary.messages_in = len(inputs) + summary.returned_to_sender
            for item in inputs:
                summary.by_kind[item.kind] = summary.by_kind.get(item.kind, 0) + 1
            mappings = [poller, *pipeline_mappings(twin)]
            summary.drained = PipelineRunner(mappings).run_until_drained(timeout_s=timeout_s)
            for mapping in mappings:
                summary.stages[mapping.function_name] = {
                    "invocations": mapping.stats.invocations, "succeeded": mapping.stats.succeeded,
                    "failed": mapping.stats.failed}
                visible, invisible = mapping.depth()
                summary.in_flight += visible + invisible
            account(twin, inputs, summary, output_dir)
            summary.extras.update(_poll_figures(twin, tenant.tenant_id, summary))
            summary.extras.update(_identity_figures(twin, tenant.tenant_id))
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
    return summary


@contextmanager
def pipeline_output_to(stream: TextIO) -> Iterator[None]:
    """The functions' JSON logs, EMF metrics (stdout) and warnings to ``stream``, process-wide."""
    from ehrbridge.observability import logger

    handler = logger.registered_handler
    previous = handler.setStream(stream) if isinstance(handler, logging.StreamHandler) else None
    try:
        with redirect_stdout(stream), warnings.catch_warnings():
            # Powertools warns when an invocation emitted no metric; noise in a local run.
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        if previous is not None and isinstance(handler, logging.StreamHandler):
            handler.setStream(previous)


def _start_polling(twin: TwinResources, tenant: TenantConfig, stack: contextlib.ExitStack, summary: DemoSummary
                   ) -> tuple[list[_Input], EventSourceMapping]:
    """The sandbox EHR (FHIR R4, with 429s and 5xx switched on) as the demo tenant's server: onboard
    it, run the dispatcher once; the fhir_poller runs with the other functions until drained."""
    from ehrbridge.local.polling import dispatch_once, expected_correlation_ids, onboard_sandbox_tenant, poller_mapping
    from ehrbridge.sandbox.faults import Faults
    from ehrbridge.sandbox.server import SandboxEHR

    # Every 2nd FHIR request is refused with a 429 (deterministic, so the demo always shows a retry).
    faults = Faults(throttle_every=2, retry_after_s=0, retry_after_forms=("delta",), error_rate=0.05, seed=3)
    sandbox = stack.enter_context(SandboxEHR("generic", patients=4, observations_per_patient=(2, 4), faults=faults,
                                             paging_style="offset"))
    polled_tenant = onboard_sandbox_tenant(sandbox, tenant, workflows=("labs",))
    summary.extras["FHIR poll jobs dispatched"] = dispatch_once()["enqueued"]
    summary.extras["_sandbox"] = sandbox  # read back after the run (removed before printing)
    expected = expected_correlation_ids(polled_tenant.tenant_id, sandbox.current_versions(["Patient", "Observation"]))
    summary.extras["FHIR resources polled"] = len(expected)
    return [_Input(cid, f"FHIR {kind}") for cid, kind in sorted(expected.items())], poller_mapping(twin, timeout_s=60)


def _poll_figures(twin: TwinResources, tenant_id: str, summary: DemoSummary) -> dict[str, Any]:
    from ehrbridge.local.polling import poll_state

    sandbox = summary.extras.pop("_sandbox")
    requests = sandbox.fhir_requests()
    return {"FHIR requests to the sandbox EHR": len(requests),
            "FHIR 429/5xx answers retried": sum(1 for r in requests if r.status == 429 or r.status >= 500),
            "FHIR watermarks": ", ".join(f"{k} {v}" for k, v in sorted(poll_state(twin, tenant_id).items()) if v)}


def _identity_figures(twin: TwinResources, tenant_id: str) -> dict[str, int]:
    """What identity resolution did, read back from the MPI table (single-table layout, docs/identity.md)."""
    ddb = local_client("dynamodb", twin.endpoint)
    kinds = {"R": 0, "E": 0, "V": 0}
    prefix = f"T#{tenant_id}#"
    for page in ddb.get_paginator("scan").paginate(TableName=twin.tables["mpi"], ProjectionExpression="pk, sk"):
        for item in page.get("Items", []):
            if item["pk"]["S"].startswith(prefix) and item["sk"]["S"] in kinds:
                kinds[item["sk"]["S"]] += 1
    return {"patient records resolved": kinds["R"], "enterprise patients": kinds["E"],
            "linked to an existing enterprise patient": kinds["R"] - kinds["E"], "review items": kinds["V"]}


def _token_flow(twin: TwinResources, tenant_file: Path) -> dict[str, Any]:
    """SMART Backend Services against the sandbox EHR: onboarding, one scheduled refresh, workflow probes."""
    from ehrbridge.sandbox.demo import run_token_flow

    flow = run_token_flow(twin.env, tenant_yaml=tenant_file)
    return {
        "token obtained": flow.get("token_obtained"),
        "token lifetime (s)": flow.get("token_lifetime_s"),
        "scopes requested": " ".join(flow.get("requested_scopes", [])),
        "scopes granted": " ".join(flow.get("granted_scopes", [])),
        "resource types denied": " ".join(flow.get("denied_types", [])) or "none",
    }


def _feed_hl7(twin: TwinResources, tenant: TenantConfig, files: list[Path], summary: DemoSummary) -> list[_Input]:
    """Send the HL7 samples through the MLLP bridge over TLS (throwaway CA), as an interface engine would."""
    from ehrbridge.hl7.wire import WireError, read_msh
    from ehrbridge.mllp.local import feed_files_detailed, read_messages

    fed = feed_files_detailed(files, tenant=tenant, queue_url=twin.queues["hl7-inbound"],
                              archive_bucket=twin.buckets["archive"], quarantine_bucket=twin.buckets["quarantine"],
                              quarantine_queue_url=twin.queues["quarantine"])
    kinds: dict[tuple[str, int], str] = {}
    for path in files:
        for index, message in enumerate(read_messages(path), start=1):
            try:
                kinds[(path.name, index)] = read_msh(message).kind
            except WireError:
                kinds[(path.name, index)] = "UNPARSEABLE"
    inputs: list[_Input] = []
    for item in fed:
        summary.acks[item.code] = summary.acks.get(item.code, 0) + 1
        if item.code in ("AE", "CE"):
            # Not taken into custody: the sender keeps the message and retries.
            summary.returned_to_sender += 1
            continue
        inputs.append(_Input(item.correlation_id or f"no-correlation-{item.file}-{item.index}",
                             kinds.get((item.file, item.index), "UNKNOWN")))
    return inputs


def default_output_dir() -> Path:
    return Path.cwd() / "out" / datetime.now(UTC).strftime("demo-%Y%m%dT%H%M%SZ")
