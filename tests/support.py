"""Helpers shared by tests of several capabilities."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tests.conftest import REPO

if TYPE_CHECKING:
    from ehrbridge.mllp.commit import Entry


def handler_import_modules(function: str) -> set[str]:
    """Import functions/<function>/handler.py in a clean interpreter, as Lambda would; return sys.modules.

    Cold-start budgets are enforced by what a handler imports, not by timing (the machine is shared).
    """
    handler = str(REPO / "functions" / function / "handler.py")
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('handler', {handler!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "assert callable(module.lambda_handler)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "POWERTOOLS_TRACE_DISABLED": "1", "AWS_DEFAULT_REGION": "us-east-1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
                         cwd=REPO, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def heavy_modules(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden))


def drain_queue(twin, name: str, limit: int = 200) -> list[dict]:  # type: ignore[no-untyped-def]
    """Every message currently in a twin queue, as parsed JSON bodies (deleted as read: a FIFO queue holds
    a group back while one of its messages is in flight)."""
    from ehrbridge.local.twin import local_client

    sqs = local_client("sqs", twin.endpoint)
    out: list[dict] = []
    for _ in range(limit):
        got = sqs.receive_message(QueueUrl=twin.queues[name], MaxNumberOfMessages=10, VisibilityTimeout=300,
                                  WaitTimeSeconds=0).get("Messages", [])
        if not got:
            break
        out.extend(json.loads(msg["Body"]) for msg in got)
        sqs.delete_message_batch(QueueUrl=twin.queues[name], Entries=[
            {"Id": str(i), "ReceiptHandle": msg["ReceiptHandle"]} for i, msg in enumerate(got)])
    return out


class RecordingTransport(asyncio.Transport):
    """An in-memory transport for the bridge's per-frame path: records what is written, closed, paused."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class RecordingSink:
    """The bridge's queue sink in memory: keeps every committed entry, fails none."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []

    async def send_batch(self, entries: Sequence[Entry]) -> dict[str, str]:
        self.entries.extend(entries)
        return {}
