"""Bulk Data `$export` for the sandbox EHR (FHIR Bulk Data Access IG, async request pattern).

Kick-off (system or Group) answers 202 + Content-Location; the status URL answers 202 with
``Retry-After`` a few times, then the manifest (``transactionTime``, one NDJSON file per type). With
``redirect_files`` (Oracle Health) a file GET answers 307 to a storage URL that refuses any request
carrying an Authorization header, as S3 presigned URLs do.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ehrbridge.sandbox.server import IssuedToken, SandboxEHR


@dataclass
class ExportJob:
    client_id: str
    transaction_time: str
    files: dict[str, list[dict[str, Any]]]
    polls_left: int
    request: str
    signature: str = field(default_factory=lambda: secrets.token_urlsafe(12))


class BulkExports:
    def __init__(self, sandbox: SandboxEHR, *, status_polls: int = 2, redirect_files: bool = False,
                 retry_after_s: int = 1) -> None:
        self.sandbox = sandbox
        self.status_polls, self.redirect_files, self.retry_after_s = status_polls, redirect_files, retry_after_s
        self.jobs: dict[str, ExportJob] = {}
        self._lock = threading.Lock()

    def kickoff(self, token: IssuedToken, query: dict[str, list[str]], prefer: str | None, group: str | None
                ) -> tuple[int, dict[str, Any], dict[str, str]]:
        from ehrbridge.sandbox.server import _date_matches, _outcome

        if "respond-async" not in (prefer or ""):
            return 400, _outcome("invalid", "Prefer: respond-async is required"), {}
        types = [t for v in query.get("_type", []) for t in v.split(",") if t] or self.sandbox.supported_types()
        for resource_type in types:
            denied = self.sandbox._access(token, resource_type, "r")
            if denied:
                return *denied, {}
        since = (query.get("_since") or [None])[0]
        transaction_time = self.sandbox.next_stamp()
        files: dict[str, list[dict[str, Any]]] = {}
        with self.sandbox._lock:
            for resource_type in types:
                items = [json.loads(json.dumps(r)) for r in self.sandbox.resources.get(resource_type, [])
                         if (since is None or _date_matches(r["meta"]["lastUpdated"], f"gt{since}"))
                         and _date_matches(r["meta"]["lastUpdated"], f"le{transaction_time}")]
                if group is not None and resource_type != "Patient":
                    items = [r for r in items if r.get("subject", {}).get("reference", "").startswith("Patient/")]
                if items:
                    files[resource_type] = items
        job_id = secrets.token_urlsafe(10)
        with self._lock:
            self.jobs[job_id] = ExportJob(token.client_id, transaction_time, files, self.status_polls,
                                          request=f"{self.sandbox.fhir_base_url}/$export")
        return 202, _outcome("informational", "accepted", severity="information"), {
            "Content-Location": f"{self.sandbox.base_url}/bulk/status/{job_id}"}

    def status(self, token: IssuedToken, job_id: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        from ehrbridge.sandbox.server import _outcome

        with self._lock:
            job = self.jobs.get(job_id)
            if job is None or job.client_id != token.client_id:
                return 404, _outcome("not-found", "no such export"), {}
            if job.polls_left > 0:
                job.polls_left -= 1
                return 202, {}, {"Retry-After": str(self.retry_after_s), "X-Progress": "in progress"}
        base = self.sandbox.base_url
        return 200, {"transactionTime": job.transaction_time, "request": job.request, "requiresAccessToken": True,
                     "output": [{"type": t, "url": f"{base}/bulk/files/{job_id}/{t}.ndjson", "count": len(items)}
                                for t, items in sorted(job.files.items())],
                     "error": []}, {}

    def file(self, token: IssuedToken, job_id: str, name: str) -> tuple[int, bytes, dict[str, str]]:
        job, resource_type = self._file(job_id, name)
        if job is None or job.client_id != token.client_id:
            return 404, b"", {}
        if self.redirect_files:
            return 307, b"", {"Location": f"{self.sandbox.base_url}/bulk/store/{job_id}/{name}?sig={job.signature}"}
        return 200, _ndjson(job.files[resource_type]), {}

    def stored(self, job_id: str, name: str, signature: str | None, authorization: str | None
               ) -> tuple[int, bytes, dict[str, str]]:
        job, resource_type = self._file(job_id, name)
        if authorization:
            return 400, b"only one auth mechanism allowed (the signed URL); drop the Authorization header", {}
        if job is None or signature != job.signature:
            return 403, b"signature does not match", {}
        return 200, _ndjson(job.files[resource_type]), {}

    def _file(self, job_id: str, name: str) -> tuple[ExportJob | None, str]:
        resource_type = name.removesuffix(".ndjson")
        with self._lock:
            job = self.jobs.get(job_id)
        if job is None or resource_type not in job.files:
            return None, resource_type
        return job, resource_type


def _ndjson(items: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in items).encode()
