"""Fuzz profiles and figures.

- ``short`` (default, part of ``make test``): a few hundred derandomized inputs per target, so CI is
  stable and fast; any failure prints the hypothesis reproduction blob.
- ``long`` (``make fuzz``): ``EHRBRIDGE_FUZZ_EXAMPLES`` hypothesis examples per target, each feeding
  ``EHRBRIDGE_FUZZ_FANOUT`` inputs (the drawn one and PRNG mutants of it, ``strategies.fan_out``),
  random, with the seed given on the command line (``--hypothesis-seed``) and printed by ``make fuzz``,
  so a failure reproduces with the same seed.

Each target counts what it saw in ``stats``; at the end of the session the figures are printed and,
with ``EHRBRIDGE_FUZZ_STATS=<dir>``, written there as JSON (one file per process; ``summary.py`` adds
them up).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from . import stats

LONG = os.environ.get("EHRBRIDGE_FUZZ_PROFILE") == "long"
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
           HealthCheck.large_base_example]
settings.register_profile("short", max_examples=int(os.environ.get("EHRBRIDGE_FUZZ_EXAMPLES", "200")),
                          derandomize=True, deadline=None, database=None, print_blob=True,
                          suppress_health_check=_HEALTH)
settings.register_profile("long", max_examples=int(os.environ.get("EHRBRIDGE_FUZZ_EXAMPLES", "100000")),
                          derandomize=False, deadline=None, database=None, print_blob=True,
                          suppress_health_check=_HEALTH,
                          phases=[Phase.explicit, Phase.generate, Phase.shrink])


@pytest.fixture(autouse=True, scope="session")
def _fuzz_profile() -> None:
    settings.load_profile("long" if LONG else "short")


def pytest_configure(config: pytest.Config) -> None:
    settings.load_profile("long" if LONG else "short")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = os.environ.get("EHRBRIDGE_FUZZ_STATS")
    if out and stats.FIGURES:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"stats-{os.getpid()}.json").write_text(json.dumps(stats.FIGURES, indent=1, sort_keys=True))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if stats.FIGURES:
        terminalreporter.section("fuzz figures")
        for line in stats.report(stats.FIGURES):
            terminalreporter.write_line(line)
