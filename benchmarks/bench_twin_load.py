"""The local twin under load: real traffic through `bridge serve --workers 2` with the pipeline running.

What a new user would do, as processes: ``ehrbridge local up --run-functions`` (the twin: hardened moto
in its own process, the pipeline's consumers in the CLI's process), ``ehrbridge bridge serve --workers
2`` pointed at it (durable ACK store on, the default write-behind), and an independent MLLP/TLS load
generator: ``--messages`` (2,000) ~2 KB ORU^R01 messages over ``--connections`` (4) TLS connections,
each sender waiting for its ACK before the next message, as MLLP senders do. Loopback only.

Before the measured load, a warm-up (``--warmup`` messages over 8 connections, reported apart): a fresh
worker creates its boto3 clients on its first call, which on a loaded machine can pass the ACK store's
1 s timeout. Prints: msg/s, ACK p50/p99, ACK codes, ACK-store failures and commit failures (the
bridge's own counters, flushed as EMF every 5 s and at its drain; attributed to warm-up or measurement
by their timestamps), emulator errors (5xx answers and exceptions counted by the
twin, ``/_twin/stats``), the hl7-inbound/normalize/identity depth over time, throughput of the first
vs the last 500 ACKs, and how long the pipeline took to drain into the lake afterwards.

Baseline, same run, same bridge and load generator: moto as shipped (``local up --stock-emulator``),
stopped after ``--baseline-seconds`` (it slows down as the queue fills and would take many minutes);
its msg/s covers only the messages it got through, at the shallowest depths, so the ratio flatters it.
``--baseline-seconds 0`` skips it.

    python benchmarks/bench_twin_load.py [--messages 2000] [--connections 4] [--baseline-seconds 90]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "layers" / "core"))

TENANT = REPO / "events" / "tenants" / "demo-health.yaml"
QUEUES = ("hl7-inbound", "normalize", "identity")
SURNAMES = ("SMITH", "JOHNSON", "WILLIAMS", "BROWN", "JONES", "GARCIA", "MILLER", "DAVIS", "LOPEZ", "WILSON")
GIVEN = ("JAMES", "MARY", "ROBERT", "PATRICIA", "JOHN")
METRICS_INTERVAL_S = 5  # the bridge's EMF flush: failures are attributed to warm-up or measurement by timestamp


def oru_message(run: str, conn: int, n: int) -> bytes:
    """~2 KB ORU^R01 from DEMOLAB (the demo tenant's lab source); 50 patients, each with their own name,
    birth date and sex (identity matching blocks on those: one shared birth date would put every
    patient in one block and make the matcher, not the twin, the slow part)."""
    p = (conn * 7 + n) % 50
    dob, sex = f"19{40 + p:02d}{1 + p % 12:02d}{1 + p % 28:02d}", "FM"[p % 2]
    head = (f"MSH|^~\\&|DEMOLAB|LABFAC|EHRBRIDGE|HOSP|20240102030405||ORU^R01^ORU_R01|{run}C{conn}N{n}|P|2.5.1\r"
            f"PID|1||MRN{p:05d}^^^MRN^MR||{SURNAMES[p % 10]}^{GIVEN[p // 10]}^Q||{dob}|{sex}|||{p} MAIN ST^^TOWN^ST\r"
            f"PV1|1|O|LAB^^^HOSP||||1234^WELBY^MARCUS\r"
            f"ORC|RE|ORD{conn}-{n}|FIL{conn}-{n}\r"
            f"OBR|1|ORD{conn}-{n}|FIL{conn}-{n}|58410-2^CBC panel^LN|||20240102030000\r")
    obx = "".join(f"OBX|{i}|NM|{718 + i}-7^Analyte {i}^LN||{10 + i}.{n % 10}|g/dL|12-16|N|||F|||20240102030000\r"
                  for i in range(1, 20))
    return (head + obx).encode("ascii")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def drain_lines(stream: Any, sink: list[str]) -> threading.Thread:
    """Keep reading a child's pipe (a full pipe would block it)."""
    def run() -> None:
        for line in stream:
            sink.append(line)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def stop(proc: subprocess.Popen[str], timeout: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class RunResult:
    label: str
    sent: int = 0
    acks: dict[str, int] = field(default_factory=dict)
    done_at: list[float] = field(default_factory=list)  # monotonic, per ACK, in completion order
    latency_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    ack_store_failed: dict[str, int] = field(default_factory=dict)
    commit_failed: int = 0
    warmup_acks: dict[str, int] = field(default_factory=dict)
    warmup_store_failed: dict[str, int] = field(default_factory=dict)
    emulator: dict[str, Any] | None = None
    depth: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    drain_s: float | None = None
    lake_objects: int = 0
    stopped_early: bool = False

    def rate(self, first: int, last: int) -> float:
        """msg/s over ACKs first..last (1-based, completion order)."""
        if len(self.done_at) < last or last <= first:
            return 0.0
        span = self.done_at[last - 1] - (self.done_at[first - 2] if first > 1 else self.started)
        return (last - first + 1) / span if span > 0 else 0.0

    started: float = 0.0


async def load(port: int, ca: Path, run: str, messages: int, connections: int, deadline: float,
               result: RunResult) -> None:
    from ehrbridge.mllp.client import MllpClient
    from ehrbridge.mllp.tls import client_context

    ctx = client_context(ca)
    per_conn = messages // connections

    async def sender(conn: int) -> None:
        try:
            async with MllpClient("127.0.0.1", port, ssl_context=ctx, server_hostname="localhost",
                                  timeout=30) as client:
                for n in range(per_conn):
                    if time.monotonic() > deadline:
                        result.stopped_early = True
                        return
                    started = time.monotonic()
                    ack = await client.send(oru_message(run, conn, n))
                    now = time.monotonic()
                    result.sent += 1
                    result.done_at.append(now)
                    result.latency_ms.append((now - started) * 1000)
                    result.acks[ack.code or "-"] = result.acks.get(ack.code or "-", 0) + 1
        except Exception as err:  # a sender that times out or is dropped is a finding, not a crash
            result.errors.append(f"connection {conn}: {type(err).__name__}: {err}"[:200])

    result.started = time.monotonic()
    await asyncio.gather(*(sender(c) for c in range(connections)))
    result.elapsed_s = time.monotonic() - result.started


def sample_depth(env: dict[str, str], result: RunResult, stop_event: threading.Event, every_s: float) -> None:
    from ehrbridge.local.twin import local_client

    sqs = local_client("sqs", env["AWS_ENDPOINT_URL"])
    urls = {name: env[f"EHRBRIDGE_QUEUE_{name.upper().replace('-', '_')}_URL"] for name in QUEUES}
    while not stop_event.is_set():
        depths: dict[str, int] = {}
        for name, url in urls.items():
            try:
                attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
                    "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
                depths[name] = int(attrs["ApproximateNumberOfMessages"]) + int(
                    attrs["ApproximateNumberOfMessagesNotVisible"])
            except Exception:  # the stock emulator can be too slow to answer; the gap shows in the timeline
                depths[name] = -1
        result.depth.append((time.monotonic(), depths))
        stop_event.wait(every_s)


def emf_totals(lines: list[str], since_ms: int, until_ms: int | None = None) -> tuple[dict[str, int], int]:
    """Sum the bridge workers' MllpAckStoreFailed (by failure code) and MllpCommitFailed EMF counters
    flushed from ``since_ms`` (epoch ms) on, and before ``until_ms``."""
    failed: dict[str, int] = {}
    commit = 0
    for line in lines:
        if not line.startswith("{") or '"_aws"' not in line:
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue
        stamp = int(doc["_aws"].get("Timestamp", 0))
        if stamp < since_ms or (until_ms is not None and stamp >= until_ms):
            continue
        if "MllpAckStoreFailed" in doc:
            code = str(doc.get("message_type", ""))
            failed[code] = failed.get(code, 0) + int(doc["MllpAckStoreFailed"])
        if "MllpCommitFailed" in doc:
            commit += int(doc["MllpCommitFailed"])
    return failed, commit


def wait_ready(health_port: int, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("bridge exited early")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("bridge never became ready")


def run_once(label: str, *, stock: bool, messages: int, connections: int, budget_s: float, drain_s: float,
             pki: Any, sample_every_s: float, warmup: int) -> RunResult:
    result = RunResult(label)
    exe = str(Path(sys.executable).with_name("ehrbridge"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EHRBRIDGE_"))}
    twin_cmd = [exe, "local", "up", "--run-functions", "--json"] + (["--stock-emulator"] if stock else [])
    twin = subprocess.Popen(twin_cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    bridge: subprocess.Popen[str] | None = None
    sampler_stop = threading.Event()
    try:
        assert twin.stdout is not None
        info = json.loads(twin.stdout.readline())
        drain_lines(twin.stdout, [])
        twin_env = {**env, **info["env"]}
        port, health = free_port(), free_port()
        bridge = subprocess.Popen(
            [exe, "bridge", "serve", "--cert", str(pki.server.cert), "--key", str(pki.server.key),
             "--tenant", str(TENANT), "--host", "127.0.0.1", "--port", str(port), "--health-port", str(health),
             "--workers", "2", "--metrics-interval", str(METRICS_INTERVAL_S)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=twin_env)
        bridge_out: list[str] = []
        assert bridge.stdout is not None
        reader = drain_lines(bridge.stdout, bridge_out)
        wait_ready(health, bridge)
        run = f"{label[:1].upper()}{int(time.time()) % 100000}"
        # Warm-up, not measured: each fresh worker creates its boto3 clients on its first store/queue call,
        # which on a loaded machine can pass the ACK store's 1 s timeout. 8 connections reach both workers
        # (SO_REUSEPORT) but for a 1-in-128 chance. Then one metrics interval passes, so the workers flush
        # the warm-up's counters before the measured load starts.
        warm = RunResult("warm-up")
        warm_started_ms = int(time.time() * 1000)
        asyncio.run(load(port, pki.ca.cert, f"W{run}", warmup, 8, time.monotonic() + 120, warm))
        result.warmup_acks = warm.acks
        time.sleep(METRICS_INTERVAL_S + 2.5)
        measure_ms = int(time.time() * 1000)
        sampler = threading.Thread(target=sample_depth, args=(info["env"], result, sampler_stop, sample_every_s),
                                   daemon=True)
        sampler.start()
        asyncio.run(load(port, pki.ca.cert, run, messages, connections, time.monotonic() + budget_s, result))
        stop(bridge)  # drain: the last ACK-store writes, then the EMF counters
        reader.join(timeout=10)
        result.warmup_store_failed, _ = emf_totals(bridge_out, warm_started_ms, measure_ms)
        result.ack_store_failed, result.commit_failed = emf_totals(bridge_out, measure_ms)
        if not stock:
            started = time.monotonic()
            while time.monotonic() - started < drain_s:
                if result.depth and all(v == 0 for v in result.depth[-1][1].values()):
                    result.drain_s = time.monotonic() - started
                    break
                time.sleep(1)
            result.lake_objects = count_lake(info)
            with urllib.request.urlopen(f"{info['endpoint']}/_twin/stats", timeout=10) as response:  # noqa: S310
                result.emulator = json.loads(response.read())
    finally:
        sampler_stop.set()
        if bridge is not None:
            stop(bridge)
        stop(twin)
    return result


def count_lake(info: dict[str, Any]) -> int:
    from ehrbridge.local.twin import local_client

    s3 = local_client("s3", info["endpoint"])
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=info["buckets"]["lake"], Prefix="lake/"):
        count += len(page.get("Contents", []))
    return count


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(result: RunResult, messages: int) -> None:
    print(f"-- {result.label}")
    rate = result.sent / result.elapsed_s if result.elapsed_s else 0.0
    print(f"   ACKed {result.sent}/{messages} in {result.elapsed_s:.1f} s: {rate:.1f} msg/s"
          + ("  (stopped at the time budget)" if result.stopped_early else ""))
    p50, p99 = percentile(result.latency_ms, 0.5), percentile(result.latency_ms, 0.99)
    print(f"   ACK latency p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {max(result.latency_ms, default=0):.0f} ms;"
          f" ACK codes {dict(sorted(result.acks.items()))}")
    slow = [i for i, ms in enumerate(result.latency_ms, start=1) if ms > 1000]
    if slow:
        print(f"   ACKs slower than 1 s: {len(slow)} (in completion order #{slow[0]}..#{slow[-1]}); p99 without the"
              f" first 50 ACKs (workers' cold start): {percentile(result.latency_ms[50:], 0.99):.0f} ms")
    chunks = [(start, min(start + 499, result.sent)) for start in range(1, result.sent + 1, 500)]
    print("   per 500 ACKs (msg/s, ACK p99 ms): " + ", ".join(
        f"{a}-{b}: {result.rate(a, b):.1f}, {percentile(result.latency_ms[a - 1:b], 0.99):.0f}" for a, b in chunks))
    print(f"   warm-up before the measurement: ACK codes {result.warmup_acks}, ACK-store failures "
          f"{sum(result.warmup_store_failed.values())} {result.warmup_store_failed or ''}")
    print(f"   ACK-store failures: {sum(result.ack_store_failed.values())} {result.ack_store_failed or ''}; "
          f"commit failures: {result.commit_failed}; sender errors: {len(result.errors)}")
    for error in result.errors[:4]:
        print(f"     {error}")
    if result.emulator is not None:
        print(f"   emulator errors (5xx + exceptions): {result.emulator['errors_total']}"
              f"  requests {result.emulator['requests']}  max lock wait ms {result.emulator['lock_wait_ms_max']}")
    else:
        print("   emulator errors: not counted (moto as shipped has no counter; see the failures above)")
    if result.depth:
        t0 = result.started or result.depth[0][0]
        step = max(1, len(result.depth) // 12)
        line = "; ".join(f"{t - t0:.0f}s " + "/".join(str(d[q]) for q in QUEUES) for t, d in result.depth[::step])
        peak = {q: max(d[q] for _, d in result.depth) for q in QUEUES}
        print(f"   queue depth ({'/'.join(QUEUES)}, visible + in flight): {line}")
        print(f"   peak depth: {peak}")
    if result.emulator is not None:
        drained = f"{result.drain_s:.0f} s after the last ACK" if result.drain_s is not None else "not within the bound"
        print(f"   pipeline drained: {drained}; lake objects written: {result.lake_objects}")


def main() -> int:
    parser = argparse.ArgumentParser(description="The local twin under load (bridge serve --workers 2).")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--budget-seconds", type=float, default=900, help="Stop the twin run after this long.")
    parser.add_argument("--baseline-seconds", type=float, default=90,
                        help="Time budget of the stock-moto baseline (0: skip it).")
    parser.add_argument("--drain-seconds", type=float, default=300,
                        help="How long to wait for the pipeline to drain after the last ACK.")
    parser.add_argument("--sample-every", type=float, default=2.0)
    parser.add_argument("--warmup", type=int, default=40,
                        help="Messages over 8 connections before the measured load (not measured; reported).")
    args = parser.parse_args()

    from ehrbridge.mllp.certs import make_test_pki

    with tempfile.TemporaryDirectory(prefix="bench-twin-") as tmp:
        pki = make_test_pki(Path(tmp))
        twin = run_once("twin (hardened emulator)", stock=False, messages=args.messages,
                        connections=args.connections, budget_s=args.budget_seconds, drain_s=args.drain_seconds,
                        pki=pki, sample_every_s=args.sample_every, warmup=args.warmup)
        report(twin, args.messages)
        baseline = None
        if args.baseline_seconds > 0:
            baseline = run_once("baseline: moto as shipped", stock=True, messages=args.messages,
                                connections=args.connections, budget_s=args.baseline_seconds, drain_s=0,
                                pki=pki, sample_every_s=args.sample_every, warmup=args.warmup)
            report(baseline, args.messages)
    twin_rate = twin.sent / twin.elapsed_s if twin.elapsed_s else 0.0
    first, last = twin.rate(1, 500), twin.rate(args.messages - 499, args.messages)
    flat = last / first if first else 0.0
    store_failures = sum(twin.ack_store_failed.values())
    emulator_errors = (twin.emulator or {}).get("errors_total", -1)
    print("== summary")
    print(f"twin: {twin_rate:.1f} msg/s, ACK p99 {percentile(twin.latency_ms, 0.99):.0f} ms, "
          f"last 500 / first 500 throughput = {flat:.2f} (acceptance 0.70-1.30), "
          f"ACK-store failures {store_failures}, emulator errors {emulator_errors}, "
          f"non-AA {sum(v for k, v in twin.acks.items() if k != 'AA')}, sender errors {len(twin.errors)}")
    if baseline is not None and baseline.elapsed_s:
        base_rate = baseline.sent / baseline.elapsed_s
        ratio = f"{twin_rate / base_rate:.1f}x" if base_rate else "n/a"
        print(f"baseline (moto as shipped, first {baseline.sent} messages only): {base_rate:.1f} msg/s, "
              f"ACK p99 {percentile(baseline.latency_ms, 0.99):.0f} ms, ACK-store failures "
              f"{sum(baseline.ack_store_failed.values())}; twin / baseline msg/s = {ratio}")
    correct = (twin.sent == args.messages and store_failures == 0 and emulator_errors == 0
               and set(twin.acks) == {"AA"} and not twin.errors)
    print("correctness (all ACKed AA, 0 ACK-store failures, 0 emulator errors): " + ("PASS" if correct else "FAIL"))
    print("flatness (last 500 vs first 500 within 30 %): " + ("PASS" if 0.7 <= flat <= 1.3 else "FAIL")
          + " (timing on a shared machine: noisy)")
    return 0 if correct else 1


if __name__ == "__main__":
    raise SystemExit(main())
