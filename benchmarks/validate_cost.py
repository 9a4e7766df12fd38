"""What the fast validator costs inside normalization, measured paired in one process.

The shared machine's load moves ``bench_normalize`` figures by +-15 % between runs, more than the
10 % regression budget, so a change to ``normalize/validate.py`` is hard to judge from them alone.
Here batches of ``bench_normalize.ours`` alternate with ``check_bundle`` on and off (replaced by a
function returning no problems) in the same process, and the medians are compared: the difference
is the check's cost per message, in the same minutes for both sides. Not run by ``make bench``
(a diagnostic, not a target). Run it on another checkout with that checkout's path:

    python benchmarks/validate_cost.py [--rounds 14] [--root <checkout>]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=14)
    parser.add_argument("--batch", type=int, default=60)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    sys.path[:0] = [str(args.root / "layers" / "core"), str(args.root / "benchmarks")]
    import bench_normalize

    from ehrbridge.normalize import validate

    def no_check(bundle: dict[str, Any]) -> list[str]:
        return []

    real = validate.check_bundle
    n = 0
    for label, make in (("ORU^R01 10 OBX", bench_normalize.oru), ("ADT^A01", bench_normalize.adt)):
        for i in range(30):  # warm up: imports, the element table, the "seen" sets
            bench_normalize.ours(make(10_000_000 + i))
        on: list[float] = []
        off: list[float] = []
        for _ in range(args.rounds):
            for check, times in ((real, on), (no_check, off)):
                validate.check_bundle = check
                start = time.process_time()
                for _ in range(args.batch):
                    bench_normalize.ours(make(n))
                    n += 1
                times.append((time.process_time() - start) / args.batch * 1e6)
        validate.check_bundle = real
        with_check, without = statistics.median(on), statistics.median(off)
        print(f"  {label:16} with check {with_check:6.0f} us/msg   without {without:6.0f} us/msg   "
              f"check {with_check - without:5.0f} us/msg ({(with_check - without) / with_check:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
