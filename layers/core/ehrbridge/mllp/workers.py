"""Several bridge processes on one task: Python runs one core per process, a Fargate task has several.

Each worker is a full bridge (its own event loop, batches and metrics) bound to the same ports with
SO_REUSEPORT, so the kernel spreads new connections across them. The parent only forwards signals
(SIGTERM/SIGINT: every worker drains; SIGHUP: every worker reloads its certificate) and, if a worker
dies unexpectedly, stops the others and exits non-zero so ECS replaces the task.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable

from ehrbridge.observability import logger


def run_workers(count: int, run_one: Callable[[int], int]) -> int:
    """Fork ``count`` workers running ``run_one(index)``; return the first non-zero exit code (or 0)."""
    children: dict[int, int] = {}
    for index in range(count):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                code = run_one(index)
            finally:
                os._exit(code)
        children[pid] = index
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    exit_code = 0
    while children:
        pid, status = os.wait()
        index = children.pop(pid, None)
        if index is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if code != 0 and exit_code == 0:
            exit_code = code if code > 0 else 1
        if not stopping:
            logger.error("bridge worker exited; stopping the others", extra={"code": code, "count": len(children)})
            stopping = True
            for other in list(children):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(other, signal.SIGTERM)
            if exit_code == 0:
                exit_code = 1
    return exit_code
