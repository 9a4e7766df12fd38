"""What the fast validator costs inside normalization, measured paired in one process.

The shared machine's load moves ``bench_normalize`` figures by +-15 % between runs, more than the
10 % regression budget, so a change to ``normalize/validate.py`` is hard to judge from them alone.
Here batches of ``bench_normalize.ours`` alternate with ``check_bundle`` on and off (replaced by a
function returning no problems) in the same process, and the medians are compared: the difference
is the check's cost per message, in the same minutes for both sides. Where the checkout has the
engine's ``_to_json`` (orjson, falling back to the standard library), the same pairing compares it with
the standard library's ``json.dumps`` of the bundle. Not run by ``make bench``
(a diagnostic, not a target). Run it on another checkout with that checkout's path:

    python benchmarks/validate_cost.py [--rounds 14] [--root <checkout>]
"""

from __future__ import annotations

import argparse
import json
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

    from ehrbridge.normalize import engine, validate

    def no_check(bundle: dict[str, Any]) -> list[str]:
        return []

    def stdlib_json(bundle: dict[str, Any]) -> str:
        return json.dumps(bundle, separators=(",", ":"))

    real = validate.check_bundle
    counter = [0]

    def paired(make: Any, patch: Any, a: Any, b: Any) -> tuple[float, float]:
        """Median us/msg of ours() with ``patch(a)`` and with ``patch(b)``, batches alternated."""
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(args.rounds):
            for value, out in ((a, times[0]), (b, times[1])):
                patch(value)
                start = time.process_time()
                for _ in range(args.batch):
                    bench_normalize.ours(make(counter[0]))
                    counter[0] += 1
                out.append((time.process_time() - start) / args.batch * 1e6)
        return statistics.median(times[0]), statistics.median(times[1])

    def set_check(check: Any) -> None:
        validate.check_bundle = check

    def set_encoder(encode: Any) -> None:
        engine._to_json = encode

    for label, make in (("ORU^R01 10 OBX", bench_normalize.oru), ("ADT^A01", bench_normalize.adt)):
        for i in range(30):  # warm up: imports, the element table, the "seen" sets
            bench_normalize.ours(make(10_000_000 + i))
        with_check, without = paired(make, set_check, real, no_check)
        set_check(real)
        print(f"  {label:16} with check {with_check:6.0f} us/msg   without {without:6.0f} us/msg   "
              f"check {with_check - without:5.0f} us/msg ({(with_check - without) / with_check:.0%})")
        encoder = getattr(engine, "_to_json", None)
        if encoder is not None:
            fast, slow = paired(make, set_encoder, encoder, stdlib_json)
            set_encoder(encoder)
            print(f"  {label:16} bundle JSON by _to_json {fast:6.0f} us/msg   by json.dumps {slow:6.0f} us/msg   "
                  f"saves {slow - fast:5.0f} us/msg ({(slow - fast) / slow:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
