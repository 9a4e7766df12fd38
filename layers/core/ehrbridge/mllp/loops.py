"""Which event loop runs the bridge: uvloop when installed (the image installs it), else asyncio's own.

Same asyncio API, same ``ssl.SSLContext`` (OpenSSL enforces the TLS version and the client
certificate either way); uvloop's transports and TLS layer are compiled instead of pure Python,
which is where most of the bridge's per-message CPU went (docs/runbooks/mllp-bridge.md,
"Benchmark figures"). The integration tests run the bridge on both loops.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

LOOP_NAMES: tuple[str, ...] = ("auto", "uvloop", "asyncio")
T = TypeVar("T")


class LoopUnavailable(RuntimeError):
    """The requested event loop is not installed."""


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolve(name: str) -> str:
    """``auto`` -> ``uvloop`` when installed, else ``asyncio``; an explicit name must be available."""
    if name not in LOOP_NAMES:
        raise ValueError(f"unknown event loop {name!r} (one of {', '.join(LOOP_NAMES)})")
    if name == "auto":
        return "uvloop" if uvloop_installed() else "asyncio"
    if name == "uvloop" and not uvloop_installed():
        raise LoopUnavailable("uvloop is not installed (pip install 'ehrbridge[bridge]')")
    return name


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if resolve(name) == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], loop: str = "auto") -> T:
    """``asyncio.run(main)`` on the chosen event loop."""
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(main)


def running_loop_name() -> str:
    """``uvloop`` or ``asyncio``: what the current coroutine runs on (logged at start)."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
