"""Add up the figures every fuzz process wrote (``EHRBRIDGE_FUZZ_STATS``) and print them.

Usage: ``python -m tests.fuzz.summary DIR``. Exit 1 if any target saw an uncaught exception, an invalid
``ok`` bundle or a frame without an answer (the acceptance figures of issue 13).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.fuzz.stats import merge, report

FAILURES = ("uncaught_exceptions", "invalid_ok_bundles", "frames_unanswered", "split_mismatches",
            "ack_unparseable", "answered_twice")


def main(directory: str) -> int:
    total: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(directory).glob("stats-*.json")):
        merge(total, json.loads(path.read_text()))
    for line in report(total):
        print(line)
    bad = {f"{t}.{k}": v for t, f in total.items() for k, v in f.items() if k in FAILURES and v}
    print("acceptance:", "FAILED " + json.dumps(bad) if bad else "0 uncaught exceptions, 0 invalid ok bundles, "
          "0 frames without an answer")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
