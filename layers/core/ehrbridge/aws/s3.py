"""S3 blob store adapter (claim checks, raw archive, quarantine, lake)."""

from __future__ import annotations

from typing import Any

from ehrbridge.aws.clients import client


class S3BlobStore:
    def __init__(self, bucket: str, s3: Any = None) -> None:
        self.bucket = bucket
        self._s3 = s3

    @property
    def s3(self) -> Any:
        return self._s3 or client("s3")

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream",
            metadata: dict[str, str] | None = None) -> None:
        # Default bucket encryption is SSE-KMS; ask for it explicitly so a misconfigured bucket fails loudly.
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type,
                           ServerSideEncryption="aws:kms", Metadata=metadata or {})

    def metadata(self, key: str) -> dict[str, str]:
        return self.s3.head_object(Bucket=self.bucket, Key=key).get("Metadata", {})

    def get(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
        except self.s3.exceptions.ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def list_keys(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys


class InMemoryBlobStore:
    """Same interface for unit tests and CLI runs without AWS."""

    def __init__(self, bucket: str = "memory") -> None:
        self.bucket = bucket
        self.objects: dict[str, bytes] = {}
        self.object_metadata: dict[str, dict[str, str]] = {}

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream",
            metadata: dict[str, str] | None = None) -> None:
        self.objects[key] = data
        self.object_metadata[key] = dict(metadata or {})

    def metadata(self, key: str) -> dict[str, str]:
        return self.object_metadata[key]

    def get(self, key: str) -> bytes:
        return self.objects[key]

    def exists(self, key: str) -> bool:
        return key in self.objects

    def list_keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))
