"""Shared fixtures: a moto server on 127.0.0.1 per test session, provisioned per test from
ehrbridge.resources, exactly as the local twin does."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The HL7 v2 test corpus lives in the repository (origin and licence of each file: SOURCES.md there).
CORPUS = REPO / "tests" / "data" / "hl7corpus"

# No test may reach a real AWS endpoint: fake credentials and loopback only.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "1")
os.environ.setdefault("POWERTOOLS_DEV", "0")
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[object]:
    from ehrbridge.local.twin import MotoServer

    # A real moto server process on 127.0.0.1, as subprocesses under test (bridge, CLI) see it.
    server = MotoServer(separate_process=True).start()
    yield server
    server.stop()


@pytest.fixture()
def twin(moto_server, monkeypatch):  # type: ignore[no-untyped-def]
    """A freshly provisioned twin (reset moto, create every resource) with this process pointed at it."""
    from ehrbridge.aws.clients import reset_clients
    from ehrbridge.local.twin import provision

    moto_server.reset()
    resources = provision(moto_server.endpoint, visibility_timeout_s=1)
    for key, value in resources.env.items():
        monkeypatch.setenv(key, value)
    reset_clients()
    yield resources
    reset_clients()


@pytest.fixture()
def log_buffer() -> Iterator[io.StringIO]:
    """Everything the project's logger writes during the test (for the no-PHI-in-logs checks)."""
    from ehrbridge.observability import logger

    buffer = io.StringIO()
    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    previous = handler.setStream(buffer)
    yield buffer
    handler.setStream(previous)
