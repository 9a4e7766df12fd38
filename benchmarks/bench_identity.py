"""Identity resolution latency: p50/p99 per record against an in-memory MPI of 100k and 1M patients,
store round trips per record against moto DynamoDB, the handler's import time, and baselines
measured in the same run (a naive scan-and-compare with the same model, and recordlinkage's
Compare on the same candidates).

  .venv/bin/python benchmarks/bench_identity.py [--sizes 100000,1000000] [--queries 2000] [--quick]

Every query runs the full resolver path (blocking read, candidate read, scoring, decision, commit)
with the candidate-person cache off, so each candidate is decoded as it would be from DynamoDB.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "layers" / "core"))

from ehrbridge.identity.blocking import record_keys  # noqa: E402
from ehrbridge.identity.model import default_model  # noqa: E402
from ehrbridge.identity.normalize import Person, person_from_patient  # noqa: E402
from ehrbridge.identity.resolver import Resolver, enterprise_id, fingerprint  # noqa: E402
from ehrbridge.identity.store import InMemoryMpiStore, SourceRecord  # noqa: E402
from ehrbridge.identity.synth import Synth  # noqa: E402

T = "bench"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def build(n: int, seed: int = 1) -> tuple[InMemoryMpiStore, list[Any], Synth, float]:
    t0 = time.perf_counter()
    synth = Synth(seed)
    people = synth.population(n)
    store = InMemoryMpiStore()

    def records() -> Any:
        for i, p in enumerate(people):
            person = person_from_patient(synth.patient(p, f"a{i}", "urn:oid:2.16.840.1.113883.3.999.1"))
            data = person.to_dict()
            yield SourceRecord(source_key=f"a{i}", eid=enterprise_id(T, f"a{i}"), person=data,
                               keys=record_keys(person), fingerprint=fingerprint(data), link_source="new")

    store.bulk_load(T, records())
    return store, people, synth, time.perf_counter() - t0


def queries(people: list[Any], synth: Synth, count: int) -> list[dict[str, Any]]:
    rng = random.Random(5)
    out = []
    extra = synth.population(count // 4)
    for i in range(count - len(extra)):
        q, _ = synth.corrupt(rng.choice(people))
        out.append(synth.patient(q, f"q{i}", "urn:oid:2.16.840.1.113883.3.999.2"))
    for j, p in enumerate(extra):
        out.append(synth.patient(p, f"n{j}", "urn:oid:2.16.840.1.113883.3.999.2"))
    rng.shuffle(out)
    for p in out:
        p.pop("truth", None)
    return out


def bench_memory(n: int, n_queries: int, scan_queries: int) -> dict[str, Any]:
    gc.collect()
    store, people, synth, build_s = build(n)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model = default_model()
    resolver = Resolver(store, model, person_cache=0)
    qs = queries(people, synth, n_queries)
    # Warm-up (imports, nickname table), not measured.
    for p in qs[:20]:
        resolver.resolve(T, dict(p, id="w" + p["id"]))
    lat, cpu, cands, decisions = [], [], [], {"link": 0, "review": 0, "new": 0}
    gc.disable()
    try:
        for p in qs:
            t0, c0 = time.perf_counter(), time.process_time()
            res = resolver.resolve(T, p)
            lat.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
            cands.append(res.candidates)
            decisions[res.decision] += 1
    finally:
        gc.enable()
    # Baseline 1: no index, compare the query with every stored record using the same model.
    stored = [Person.from_dict(r.person) for r in list(store._records.values())]
    scan = []
    for p in qs[:scan_queries]:
        person = person_from_patient(p)
        t0 = time.perf_counter()
        best = max((model.score(person, other).weight for other in stored), default=0.0)
        scan.append((time.perf_counter() - t0) * 1000)
        assert best is not None
    return {"n": n, "build_s": build_s, "rss_mb": rss_mb, "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99),
            "cpu_p50_ms": pct(cpu, 0.5), "cpu_p99_ms": pct(cpu, 0.99),
            "mean_ms": statistics.fmean(lat), "candidates_p50": pct(cands, 0.5), "candidates_p99": pct(cands, 0.99),
            "decisions": decisions, "scan_ms": statistics.fmean(scan) if scan else None, "scan_queries": len(scan),
            "queries": len(qs)}


def bench_recordlinkage(n_queries: int = 200) -> dict[str, Any] | None:
    """recordlinkage's Compare (jellyfish per pair) on the same candidates our index returns."""
    try:
        import pandas as pd
        import recordlinkage
    except ImportError:
        return None
    store, people, synth, _ = build(20_000, seed=3)
    resolver = Resolver(store, default_model(), person_cache=0)
    qs = queries(people, synth, n_queries)
    ours, theirs = [], []
    for p in qs:
        person = person_from_patient(p)
        t0 = time.perf_counter()
        resolver.resolve(T, p)
        ours.append((time.perf_counter() - t0) * 1000)
        from ehrbridge.identity.blocking import query_keys

        buckets = store.blocks(T, query_keys(person))
        cand_keys = sorted({k for b in buckets.values() for k in b.members if k != p["id"]})[:99]
        if not cand_keys:
            continue
        cand = store.records(T, cand_keys)
        t0 = time.perf_counter()
        left = pd.DataFrame([person.to_dict()])
        right = pd.DataFrame([r.person for r in cand.values()])
        for col in ("given", "family", "dob", "street", "city", "postcode", "phone", "ssn", "sex", "house"):
            for frame in (left, right):
                if col not in frame:
                    frame[col] = None
        pairs = pd.MultiIndex.from_product([left.index, right.index])
        comp = recordlinkage.Compare()
        comp.string("given", "given", method="jarowinkler", label="given")
        comp.string("family", "family", method="jarowinkler", label="family")
        comp.exact("dob", "dob", label="dob")
        comp.exact("sex", "sex", label="sex")
        comp.exact("house", "house", label="house")
        comp.string("street", "street", method="jarowinkler", label="street")
        comp.exact("city", "city", label="city")
        comp.exact("postcode", "postcode", label="postcode")
        comp.exact("phone", "phone", label="phone")
        comp.exact("ssn", "ssn", label="ssn")
        comp.compute(pairs, left, right)
        theirs.append((time.perf_counter() - t0) * 1000)
    return {"ours_p50_ms": pct(ours, 0.5), "rl_compare_p50_ms": pct(theirs, 0.5), "queries": len(theirs)}


def bench_dynamodb(n_records: int) -> dict[str, Any]:
    from ehrbridge.identity.dynamo_store import DynamoMpiStore
    from ehrbridge.identity.synth import household_linkage_set
    from ehrbridge.local.twin import MotoServer, local_client, provision

    with MotoServer() as server:
        twin = provision(server.endpoint)
        store = DynamoMpiStore(twin.tables["mpi"], client=local_client("dynamodb", server.endpoint))
        resolver = Resolver(store, default_model())
        a, b = household_linkage_set(max(10, n_records // 2), seed=8)
        rts, lat = [], []
        for p in (a + b)[:n_records]:
            p = {k: v for k, v in p.items() if k not in ("truth", "case")}
            t0 = time.perf_counter()
            res = resolver.resolve(T, p)
            lat.append((time.perf_counter() - t0) * 1000)
            rts.append(res.round_trips)
    return {"records": len(rts), "rt_mean": statistics.fmean(rts), "rt_max": max(rts),
            "rt_hist": {k: rts.count(k) for k in sorted(set(rts))}, "moto_p50_ms": pct(lat, 0.5)}


def import_times(runs: int = 3) -> dict[str, float]:
    handler = REPO / "functions" / "identity_matcher" / "handler.py"
    code = ("import importlib.util, time; t = time.perf_counter(); "
            "import ehrbridge.observability, ehrbridge.pipeline.consumer, ehrbridge.aws.s3, ehrbridge.aws.sqs; "
            "o = time.perf_counter() - t; "
            f"s = importlib.util.spec_from_file_location('h', {str(handler)!r}); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
            "print(o * 1000, (time.perf_counter() - t) * 1000)")
    obs, total = [], []
    for _ in range(runs):  # a clean environment, as a Lambda cold start has
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                             env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "layers" / "core"),
                                  "AWS_DEFAULT_REGION": "us-east-1"})
        a, b = (float(x) for x in out.stdout.split())
        obs.append(a)
        total.append(b)
    return {"handler_ms": statistics.median(total), "observability_ms": statistics.median(obs),
            "identity_ms": statistics.median(t - o for t, o in zip(total, obs, strict=True))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--moto-records", type=int, default=120)
    ap.add_argument("--quick", action="store_true", help="10k patients, 500 queries, 40 moto records")
    args = ap.parse_args()
    sizes = [10_000] if args.quick else [int(x) for x in args.sizes.split(",")]
    n_queries = 500 if args.quick else args.queries
    print("== identity: per-record resolve, in-memory MPI (full resolver path, candidate cache off)")
    for n in sizes:
        r = bench_memory(n, n_queries, scan_queries=10 if n <= 100_000 else 3)
        print(f"  {n:>9,} patients: build {r['build_s']:.0f} s (peak RSS {r['rss_mb']:.0f} MB); "
              f"{r['queries']} queries wall p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  "
              f"(CPU p50 {r['cpu_p50_ms']:.3f} p99 {r['cpu_p99_ms']:.3f}); "
              f"candidates p50 {r['candidates_p50']} p99 {r['candidates_p99']}; decisions {r['decisions']}")
        if r["scan_ms"]:
            print(f"      baseline naive scan-and-compare (same model, {r['scan_queries']} queries): "
                  f"{r['scan_ms']:.1f} ms/record -> ratio {r['scan_ms'] / r['p50_ms']:.0f}x slower than our p50")
        print(json.dumps({"bench": "identity_memory", **r}), flush=True)
    rl = bench_recordlinkage(100 if args.quick else 300)
    if rl:
        print(f"  baseline recordlinkage Compare on the same candidates (20k MPI, {rl['queries']} queries): "
              f"p50 {rl['rl_compare_p50_ms']:.2f} ms vs our whole resolve p50 {rl['ours_p50_ms']:.3f} ms "
              f"-> ratio {rl['rl_compare_p50_ms'] / rl['ours_p50_ms']:.0f}x")
    d = bench_dynamodb(40 if args.quick else args.moto_records)
    print(f"  moto DynamoDB: {d['records']} records, store round trips per record mean {d['rt_mean']:.2f} "
          f"max {d['rt_max']} (histogram {d['rt_hist']}); moto latency p50 {d['moto_p50_ms']:.1f} ms "
          "(a local emulator, not DynamoDB)")
    imp = import_times()
    print(f"  handler import {imp['handler_ms']:.0f} ms (target <= 300), of which the foundation (observability, "
          f"consumer, S3/SQS adapters) {imp['observability_ms']:.0f} ms and identity {imp['identity_ms']:.0f} ms")


if __name__ == "__main__":
    main()
