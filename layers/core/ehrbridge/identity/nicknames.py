"""Nickname equivalence from the maintained `nicknames` package (Carlton Northern's hand-curated list,
Apache-2.0), read from the CSV the wheel ships, offline.

We read ``names.csv`` directly instead of importing the package: its ``__init__`` pulls in
``importlib.metadata`` (~35 ms), which the identity handler's cold start does not need.
"""

from __future__ import annotations

import csv
import importlib.util
from functools import cache
from pathlib import Path

# Pairs the list lacks that registration data shows often (kept short, documented in docs/identity.md).
_EXTRA = (("ELIZABETH", "BETH"), ("KATHERINE", "KATE"), ("MARGARET", "PEGGY"), ("ROBERT", "BOB"),
          ("WILLIAM", "BILL"), ("RICHARD", "DICK"), ("JOHN", "JACK"), ("JAMES", "JIM"), ("CHARLES", "CHUCK"))


def _csv_path() -> Path | None:
    spec = importlib.util.find_spec("nicknames")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "names.csv"
    return path if path.is_file() else None


@cache
def _groups() -> dict[str, frozenset[str]]:
    """name -> the names it is equivalent to: its nicknames, its formal names, and its formal names' nicknames.

    Two formal names that merely share a nickname (ALBERT, ALFRED via AL) stay distinct.
    """
    nicks: dict[str, set[str]] = {}
    formals: dict[str, set[str]] = {}

    def add(formal: str, nick: str) -> None:
        nicks.setdefault(formal, set()).add(nick)
        formals.setdefault(nick, set()).add(formal)

    path = _csv_path()
    if path is not None:
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row.get("relationship") == "has_nickname":
                    add(row["name1"].strip().upper(), row["name2"].strip().upper())
    for formal, nick in _EXTRA:
        add(formal, nick)
    closed: dict[str, frozenset[str]] = {}
    for name in set(nicks) | set(formals):
        group = set(nicks.get(name, ())) | formals.get(name, set())
        for formal in formals.get(name, ()):
            group |= nicks.get(formal, set())
        group.discard(name)
        closed[name] = frozenset(group)
    return closed


def are_nicknames(a: str, b: str) -> bool:
    if not a or not b or a == b:
        return False
    group = _groups().get(a)
    return group is not None and b in group


def equivalents(name: str) -> frozenset[str]:
    """The names the curated list makes equivalent to this one (empty when it does not know it)."""
    return _groups().get(name, frozenset())


def source_available() -> bool:
    return _csv_path() is not None


def is_listed(name: str) -> bool:
    """The curated list knows this name (as a formal name or a nickname): a real name, not a misspelling."""
    return bool(name) and name in _groups()
