"""The identity stage: a canonical FHIR transaction Bundle in, enterprise-linked resources out.

For each envelope: resolve every active Patient (one at a time, in bundle order), apply an ADT^A40
merge if the bundle carries one (survivor ``link.type = replaces``), rewrite ``Patient/<source id>``
references in the other resources to ``Patient/<enterprise id>``, write the lake (NDJSON per tenant /
resource type), then publish one event per link change. Works on dicts: no fhir.resources import.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ehrbridge.contracts.envelope import Envelope
from ehrbridge.identity.events import LinkEventSink
from ehrbridge.identity.model import Model, Thresholds
from ehrbridge.identity.resolver import LinkChange, Resolution, ResolveError, Resolver
from ehrbridge.identity.store import MpiStore
from ehrbridge.observability import MetricUnit, emit_metric, logger

ENTERPRISE_SYSTEM = "urn:ehrbridge:enterprise-patient"
SETTINGS_TTL_S = 300.0


class BundleError(ValueError):
    """The body is not a usable FHIR Bundle. PHI-free text."""


class TenantThresholds:
    """Per-tenant thresholds from the MPI settings item, cached per container for a few minutes."""

    def __init__(self, store: MpiStore, model: Model, ttl_s: float = SETTINGS_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.model, self.ttl_s, self.clock = store, model, ttl_s, clock
        self._cache: dict[str, tuple[float, Thresholds]] = {}

    def __call__(self, tenant: str) -> Thresholds:
        hit = self._cache.get(tenant)
        now = self.clock()
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        found = self.store.settings(tenant)
        thresholds = self.model.thresholds
        if found and isinstance(found.get("thresholds"), dict):
            try:
                thresholds = Thresholds(**{**thresholds.model_dump(), **found["thresholds"]})
            except ValueError:
                logger.error("invalid identity thresholds for tenant; using the model's", extra={"tenant": tenant})
        self._cache[tenant] = (now, thresholds)
        return thresholds


def _patient_ref_id(ref: Any) -> str | None:
    if not isinstance(ref, str):
        return None
    head, _, tail = ref.rpartition("Patient/")
    # "Patient/<id>" or "<absolute base>/Patient/<id>"; never "Group/Patient/..." or versioned forms.
    if not tail or "/" in tail or (head and not ("://" in head and head.endswith("/"))):
        return None
    return tail


def rewrite_references(node: Any, mapping: dict[str, str]) -> int:
    """Point every Reference to a resolved source Patient at its enterprise patient, in place."""
    count = 0
    if isinstance(node, dict):
        ref = node.get("reference")
        pid = _patient_ref_id(ref)
        if pid is not None and pid in mapping:
            node["reference"] = f"Patient/{mapping[pid]}"
            count += 1
        for key, value in node.items():
            if key != "reference":
                count += rewrite_references(value, mapping)
    elif isinstance(node, list):
        for item in node:
            count += rewrite_references(item, mapping)
    return count


def _links(patient: dict[str, Any], link_type: str) -> list[str]:
    out = []
    for link in patient.get("link") or []:
        if isinstance(link, dict) and link.get("type") == link_type:
            pid = _patient_ref_id((link.get("other") or {}).get("reference"))
            if pid:
                out.append(pid)
    return out


class IdentityStage:
    def __init__(self, resolver: Resolver, lake: Any, events: LinkEventSink) -> None:
        self.resolver = resolver
        self.lake = lake
        self.events = events
        self._touched: set[str] = set()

    def handle(self, envelope: Envelope, bundle: dict[str, Any]) -> list[Resolution]:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise BundleError(f"identity: body is not a FHIR Bundle (kind {envelope.kind})")
        entries = [e for e in bundle.get("entry") or [] if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
        resources = [e["resource"] for e in entries]
        patients = [r for r in resources if r.get("resourceType") == "Patient"]
        retired_ids = {pid for p in patients for pid in _links(p, "replaces")}
        tenant = envelope.tenant_id
        mapping: dict[str, str] = {}
        results: list[Resolution] = []
        changes: list[LinkChange] = []
        started = time.perf_counter()
        for patient in patients:
            pid = patient.get("id")
            if not isinstance(pid, str) or not pid:
                raise BundleError("identity: a Patient entry has no id")
            if pid in retired_ids:
                continue  # the merged-away patient of an A40: handled by the merge below
            res = self.resolver.resolve(tenant, patient, message_id=envelope.message_id)
            mapping[pid] = res.enterprise_id
            results.append(res)
            changes.extend(res.changes)
            self._metrics(tenant, res)
        by_id = {p.get("id"): p for p in patients}
        for survivor in patients:
            for retired_id in _links(survivor, "replaces"):
                merged = self.resolver.merge(tenant, survivor["id"], retired_id, retired_patient=by_id.get(retired_id),
                                             message_id=envelope.message_id)
                changes.extend(merged)
                if survivor["id"] in mapping:
                    mapping[retired_id] = mapping[survivor["id"]]
                for change in merged:
                    emit_metric("IdentityMergeChanges" if change.change != "merge-refused"
                                else "IdentityMergeRefused", tenant=tenant)
        if patients:
            emit_metric("IdentityResolveLatency", tenant=tenant, unit=MetricUnit.Milliseconds,
                        value=(time.perf_counter() - started) * 1000 / max(1, len(patients)))

        rewrite_references([r for r in resources if r.get("resourceType") != "Patient"], mapping)
        by_type: dict[str, list[dict[str, Any]]] = {}
        for resource in resources:
            if resource.get("resourceType") == "Patient" and resource.get("id") in mapping:
                resource = self._linked_patient(resource, mapping[resource["id"]])
            by_type.setdefault(resource.get("resourceType", "Unknown"), []).append(resource)
        for pid, eid in sorted(mapping.items()):
            by_type.setdefault("Patient", []).append(self._enterprise_patient(eid, pid))
        self.lake.write(envelope, by_type)
        if changes:
            self.events.publish(changes, message_id=envelope.message_id, correlation_id=envelope.correlation_id)
            emit_metric("IdentityLinkEvents", tenant=tenant, value=len(changes))
        self._touched.add(tenant)
        counts: dict[str, int] = {"link_changes": len(changes)}
        for r in results:
            counts[r.decision] = counts.get(r.decision, 0) + 1
        # Only allow-listed, PHI-free keys survive the log filter: counts and the model version.
        logger.info("identity resolved", extra={"count": len(results), "counts": counts,
                                                "model_version": self.resolver.model.version})
        return results

    @staticmethod
    def _linked_patient(patient: dict[str, Any], eid: str) -> dict[str, Any]:
        out = dict(patient)
        out["identifier"] = [*(patient.get("identifier") or []),
                             {"use": "secondary", "system": ENTERPRISE_SYSTEM, "value": eid}]
        out["link"] = [*(patient.get("link") or []), {"other": {"reference": f"Patient/{eid}"}, "type": "refer"}]
        return out

    @staticmethod
    def _enterprise_patient(eid: str, source_id: str) -> dict[str, Any]:
        # A pointer record for the enterprise patient: the lake's references resolve to something.
        return {"resourceType": "Patient", "id": eid,
                "identifier": [{"use": "official", "system": ENTERPRISE_SYSTEM, "value": eid}],
                "link": [{"other": {"reference": f"Patient/{source_id}"}, "type": "seealso"}],
                "meta": {"tag": [{"system": ENTERPRISE_SYSTEM, "code": "enterprise"}]}}

    @staticmethod
    def _metrics(tenant: str, res: Resolution) -> None:
        # Score histogram: high-resolution, percent, so CloudWatch percentiles show the distribution.
        emit_metric("IdentityMatchScore", tenant=tenant, value=round(res.score * 100, 3), unit=MetricUnit.Percent,
                    high_resolution=True)
        # Decisions by band as 0/1 per record: Sum counts them, Average is the band's rate (alarmed on).
        for decision, name in (("link", "IdentityLinked"), ("review", "IdentityReview"), ("new", "IdentityNew")):
            emit_metric(name, tenant=tenant, value=1.0 if res.decision == decision else 0.0)
        emit_metric("IdentityCandidates", tenant=tenant, value=res.candidates)
        emit_metric("IdentityStoreRoundTrips", tenant=tenant, value=res.round_trips)

    def flush_backlog_metrics(self, now: datetime | None = None) -> None:
        """Review queue depth and age, once per invocation per tenant seen (off the per-record path)."""
        now = now or datetime.now(UTC)
        for tenant in sorted(self._touched):
            try:
                count, oldest = self.resolver.store.review_backlog(tenant)
            except Exception as err:  # metrics must never fail the batch
                logger.warning("review backlog metric failed", extra={"error_type": type(err).__name__})
                continue
            age = (now - datetime.fromisoformat(oldest)).total_seconds() if oldest else 0.0
            emit_metric("IdentityReviewBacklog", tenant=tenant, value=count)
            emit_metric("IdentityReviewOldestAge", tenant=tenant, value=max(0.0, age), unit=MetricUnit.Seconds)
        self._touched.clear()


def parse_bundle(envelope: Envelope) -> dict[str, Any]:
    try:
        data = json.loads(envelope.body_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BundleError(f"identity: body is not JSON (kind {envelope.kind})") from None
    if not isinstance(data, dict):
        raise BundleError(f"identity: body is not a FHIR Bundle (kind {envelope.kind})")
    return data


def build_identity_consumer(stage_name: str = "identity_matcher") -> tuple[Any, IdentityStage]:
    """Wire the stage to AWS: MPI on DynamoDB, lake on S3, events on EventBridge, quarantine."""
    from ehrbridge.aws import settings
    from ehrbridge.aws.s3 import S3BlobStore
    from ehrbridge.identity.dynamo_store import DynamoMpiStore
    from ehrbridge.identity.events import EventBridgeLinkEvents
    from ehrbridge.identity.model import default_model
    from ehrbridge.pipeline.consumer import Consumer
    from ehrbridge.pipeline.stages import LakeWriter
    from ehrbridge.pipeline.wiring import stage_io

    model = default_model()
    store = DynamoMpiStore(settings.table_name("mpi"))
    resolver = Resolver(store, model, thresholds=TenantThresholds(store, model))
    stage = IdentityStage(resolver, LakeWriter(S3BlobStore(settings.bucket_name("lake"))), EventBridgeLinkEvents())
    io = stage_io()  # the quarantine is built on first use (cached): most batches never need it

    def handle(envelope: Envelope) -> None:
        envelope = io.claim_check.inbound(envelope)
        try:
            stage.handle(envelope, parse_bundle(envelope))
        except (BundleError, ResolveError) as err:
            # Unresolvable input is kept with its reason, never dropped and never retried forever.
            io.quarantine.put(envelope, [str(err)], stage_name)

    consumer = Consumer(stage_name, handle, consumes="identity", idempotency_table=settings.table_name("idempotency"))
    return consumer, stage
