"""boto3 clients, created once per process (reused across Lambda invocations).

boto3 honours AWS_ENDPOINT_URL, which is how local mode and the tests point every client,
including the ones Powertools creates, at the moto server on 127.0.0.1.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import boto3
from botocore.config import Config

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=20)


@cache
def client(service: str) -> Any:
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.session.Session().client(service, region_name=region, config=_CONFIG)  # type: ignore[call-overload]


def reset_clients() -> None:
    """Forget cached clients (tests and the local twin change AWS_ENDPOINT_URL)."""
    client.cache_clear()
