"""Imported first by Lambda handlers: keeps optional command-line front ends out of a cold start.

httpx imports its own CLI (click, rich, pygments: ~70 ms of CPU here) whenever httpx is imported,
unless that import fails, in which case httpx installs a stub. Functions never run the httpx CLI, so
the import is made to fail the documented way (``None`` in ``sys.modules``). Nothing else changes:
typer and rich stay importable for ehrbridge's own CLI.
"""

from __future__ import annotations

import sys

if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[assignment]
