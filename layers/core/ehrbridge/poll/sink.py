"""Where polled resources go: one envelope per resource version on ``normalize`` (or NDJSON files).

The envelope's message id is stable for (tenant, type, id, version): the overlap window and a
redelivered job produce the same ids, and the FIFO deduplication plus the normalizer's idempotency
table absorb them. Bodies over the claim-check threshold go to S3 through the publisher.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from ehrbridge.contracts.envelope import Envelope, new_envelope, patient_key_for
from ehrbridge.contracts.tenant import TenantConfig

_PATIENT_PATHS = ("subject", "patient", "beneficiary", "individual")


def version_of(resource: dict[str, Any]) -> str:
    meta = resource.get("meta") or {}
    return str(meta.get("versionId") or meta.get("lastUpdated") or "")


def resource_key(resource: dict[str, Any]) -> tuple[str, str, str]:
    """(type, id, versionId | lastUpdated): what dedupe and the acceptance tests compare."""
    return str(resource.get("resourceType")), str(resource.get("id")), version_of(resource)


def patient_id_of(resource: dict[str, Any]) -> str | None:
    if resource.get("resourceType") == "Patient":
        return str(resource.get("id")) if resource.get("id") else None
    for path in _PATIENT_PATHS:
        ref = (resource.get(path) or {}).get("reference") if isinstance(resource.get(path), dict) else None
        if isinstance(ref, str) and "Patient/" in ref:
            return ref.rstrip("/").split("Patient/")[-1].split("/")[0] or None
    return None


def resource_envelope(tenant: TenantConfig, resource: dict[str, Any], *, received_at: datetime | None = None
                      ) -> Envelope:
    resource_type, resource_id, version = resource_key(resource)
    patient = patient_id_of(resource)
    # Same key as the normalizer computes for a vendor Patient, so one patient's events share a group.
    patient_key = _patient_key(tenant.tenant_id, tenant.vendor, patient) if patient else None
    return new_envelope(tenant_id=tenant.tenant_id, source="fhir", kind=resource_type,
                        body=json.dumps(resource, separators=(",", ":")),
                        natural_key=["resource", resource_type, resource_id, version], patient_key=patient_key,
                        received_at=received_at or datetime.now(UTC), attributes={"origin": "poll"})


@lru_cache(maxsize=8192)
def _patient_key(tenant_id: str, vendor: str, patient_id: str) -> str:
    return patient_key_for(tenant_id, vendor, patient_id)  # a hash: many resources share one patient


class ResourceSink(Protocol):
    def deliver(self, tenant: TenantConfig, resources: Sequence[dict[str, Any]]) -> None:
        """Durably hand over every resource (raise if any was not taken)."""
        ...


class QueueSink:
    """Envelopes to a publisher (SqsPublisher to ``normalize`` in Lambda, with the claim check)."""

    def __init__(self, publisher: Any) -> None:
        self.publisher = publisher

    def deliver(self, tenant: TenantConfig, resources: Sequence[dict[str, Any]]) -> None:
        if resources:
            now = datetime.now(UTC)
            self.publisher.publish([resource_envelope(tenant, r, received_at=now) for r in resources])


class NdjsonSink:
    """One NDJSON file per resource type under ``directory`` (the CLI). Versions already in a file are
    not written again, so repeated runs append only what is new."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._known: dict[str, set[tuple[str, str, str]]] = {}
        self._lock = threading.Lock()
        self.written: dict[str, int] = {}

    def _keys(self, resource_type: str) -> set[tuple[str, str, str]]:
        if resource_type not in self._known:
            keys: set[tuple[str, str, str]] = set()
            path = self.directory / f"{resource_type}.ndjson"
            if path.exists():
                with path.open(encoding="utf-8") as handle:
                    for line in handle:
                        if line.strip():
                            keys.add(resource_key(json.loads(line)))
            self._known[resource_type] = keys
        return self._known[resource_type]

    def deliver(self, tenant: TenantConfig, resources: Sequence[dict[str, Any]]) -> None:
        with self._lock:
            by_type: dict[str, list[dict[str, Any]]] = {}
            for resource in resources:
                key = resource_key(resource)
                known = self._keys(key[0])
                if key in known:
                    continue
                known.add(key)
                by_type.setdefault(key[0], []).append(resource)
            for resource_type, items in by_type.items():
                with (self.directory / f"{resource_type}.ndjson").open("a", encoding="utf-8") as handle:
                    handle.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in items)
                    handle.flush()
                self.written[resource_type] = self.written.get(resource_type, 0) + len(items)
