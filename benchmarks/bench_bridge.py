"""MLLP/TLS bridge benchmark: N concurrent TLS connections sending ~2 KB ORU^R01 messages.

Two servers, measured with the same load generator in the same run:
- baseline: a plain TLS echo server (reads each MLLP frame, writes it straight back), on asyncio's
  loop and on uvloop, with one process and with ``--workers``: the fastest of these is the baseline;
- bridge: the real MllpBridge (MSH parse, routing, strict charset check, envelope, dedupe, group
  commit in batches of <= 10 across connections, HAPI ACK) on the loop `bridge serve` uses
  (uvloop when installed; also measured on asyncio's loop, the fallback), with a store that
  simulates a 10 ms SQS SendMessageBatch round trip, and the durable ACK store (resend replay
  across tasks) with a simulated 5 ms DynamoDB round trip per batch, in its default write-behind
  mode: every message is new, so each one is committed, AA'd, and its ACK then written in the
  background (batched conditional write); as in production, the first 8 messages of each connection
  are also looked up first (batched), ``--lookup-first N`` changes that (a huge N: every message).
  Two variants run at one N for comparison: write-through (the ACK stored before the AA goes out:
  one DynamoDB round trip more per ACK) and memory only (no ACK store: replay from the worker's
  memory only). The boto3/botocore request cost is NOT included (see the note printed at the end).

Each server runs as ``--workers`` processes sharing the port (default: one per CPU, as the task
definition runs one bridge worker per vCPU), the load generator in another process (on uvloop when
installed: the cheaper it is, the more CPU the server under test gets); every sender waits for the
ACK before sending the next message, as MLLP senders do. Both servers are measured at each
connection count of ``--connections`` (default 200, 500 and 1000): an AA waits for the SQS round
trip, so N connections carry at most N / 10 ms (Little's law), and at N = 200 that ceiling is far
below half of what the echo reaches on a quiet machine; the sweep shows where the ratio stops
measuring the round trip and starts measuring the bridge. Prints msgs/s, ACK p50/p99, the ratio of
bridge to echo throughput and its ceiling at each N. Loopback (127.0.0.1) only. Runs in about six
minutes (two rounds).

    python benchmarks/bench_bridge.py [--connections 200,500,1000] [--workers 2] [--rounds 2] [--rate 2400]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "layers" / "core"))

SQS_ROUND_TRIP_S = 0.010
DYNAMODB_ROUND_TRIP_S = 0.005


def oru_message(conn: int, n: int) -> bytes:
    head = (f"MSH|^~\\&|DEMOLAB|LABFAC|EHRBRIDGE|HOSP|20240102030405||ORU^R01^ORU_R01|C{conn}N{n}|P|2.5.1\r"
            f"PID|1||MRN{conn % 50:05d}^^^MRN^MR||DOE^JANE^Q||19800101|F|||1 MAIN ST^^TOWN^ST^12345\r"
            f"PV1|1|O|LAB^^^HOSP||||1234^WELBY^MARCUS\r"
            f"ORC|RE|ORD{conn}-{n}|FIL{conn}-{n}\r"
            f"OBR|1|ORD{conn}-{n}|FIL{conn}-{n}|58410-2^CBC panel^LN|||20240102030000\r")
    obx = "".join(f"OBX|{i}|NM|{718 + i}-7^Analyte {i}^LN||{10 + i}.{n % 10}|g/dL|12-16|N|||F|||20240102030000\r"
                  for i in range(1, 20))
    return (head + obx).encode("ascii")


# ---- servers (each in its own process) --------------------------------------------------------
def run_echo(certfile: str, keyfile: str, loop: str, port: int, ready: mp.Queue,  # type: ignore[type-arg]
             stop: mp.Event, result: mp.Queue) -> None:  # type: ignore[type-arg]
    from ehrbridge.mllp import loops
    from ehrbridge.mllp.framing import MllpDecoder, frame
    from ehrbridge.mllp.tls import server_context

    echoed = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = MllpDecoder()
        try:
            while data := await reader.read(65536):
                for payload in decoder.feed(data):
                    writer.write(frame(payload))
                    echoed[0] += 1
                await writer.drain()
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=server_context(certfile, keyfile),
                                            backlog=1024, reuse_port=True)
        ready.put(server.sockets[0].getsockname()[1])
        cpu0 = time.process_time()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        result.put({"entries": echoed[0], "batches": 0, "cpu_s": time.process_time() - cpu0})
        server.close()

    loops.run(main(), loop)


def run_bridge(certfile: str, keyfile: str, loop: str, mode: str, lookup_first: int, port: int,
               ready: mp.Queue, stop: mp.Event, result: mp.Queue) -> None:  # type: ignore[type-arg]
    import io
    import logging

    from ehrbridge.contracts.tenant import MllpSource, TenantConfig
    from ehrbridge.mllp import loops
    from ehrbridge.mllp.ack_store import DurableAcks, InMemoryAckStore
    from ehrbridge.mllp.app import write_linger_for
    from ehrbridge.mllp.commit import GroupCommitter
    from ehrbridge.mllp.metrics import BridgeMetrics
    from ehrbridge.mllp.server import BridgeSettings, MllpBridge, settle_gc

    logging.getLogger("ehrbridge").setLevel(logging.WARNING)

    class SimulatedSqs:
        """SendMessageBatch with a 10 ms round trip; every entry accepted."""

        def __init__(self) -> None:
            self.batches = 0
            self.entries = 0

        async def send_batch(self, entries):  # type: ignore[no-untyped-def]
            await asyncio.sleep(SQS_ROUND_TRIP_S)
            self.batches += 1
            self.entries += len(entries)
            return {}

    class SimulatedDynamo(InMemoryAckStore):
        """BatchGetItem / TransactWriteItems with a 5 ms round trip each, in-memory semantics."""

        async def get_many(self, keys):  # type: ignore[no-untyped-def]
            await asyncio.sleep(DYNAMODB_ROUND_TRIP_S)
            return await super().get_many(keys)

        async def put_many(self, records):  # type: ignore[no-untyped-def]
            await asyncio.sleep(DYNAMODB_ROUND_TRIP_S)
            return await super().put_many(records)

    tenant = TenantConfig(tenant_id="bench", vendor="generic",
                          mllp_sources=(MllpSource(source_id="lab", sending_application="DEMOLAB"),))

    async def main() -> None:
        sink = SimulatedSqs()
        settings = BridgeSettings(certfile=Path(certfile), keyfile=Path(keyfile), host="127.0.0.1", port=port,
                                  health_port=None, metrics_interval_s=3600, reuse_port=True,
                                  ack_store_lookup_first=lookup_first,
                                  ack_store_write_behind=mode != "write-through")
        store = SimulatedDynamo()
        # As app.build_bridge wires it (write-behind writes linger to fill their batches).
        durable = DurableAcks(store, linger_s=settings.linger_s, write_linger_s=write_linger_for(settings),
                              timeout_s=settings.ack_store_timeout_s) if mode != "memory" else None
        bridge = MllpBridge(settings, [tenant], GroupCommitter(sink, linger_s=settings.linger_s),
                            metrics=BridgeMetrics(interval=3600, stream=io.StringIO()), ack_store=durable)
        await bridge.start()
        settle_gc()  # as MllpBridge.serve_forever does
        ready.put(bridge.port)
        cpu0 = time.process_time()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        cpu = time.process_time() - cpu0
        await bridge.drain()
        stats = durable.stats if durable else None
        result.put({"batches": sink.batches, "entries": sink.entries, "cpu_s": cpu,
                    "acks": bridge.metrics.total("MllpAcks", "AA"),
                    "store_calls": stats.get_batches + stats.put_batches if stats else 0,
                    "store_failed": stats.failed if stats else 0, "records": len(store.items) if stats else 0})

    loops.run(main(), loop)


# ---- load generator ---------------------------------------------------------------------------
class Template:
    """Message bytes with only MSH-10 varying: generating them must not cost the load generator CPU."""

    def __init__(self, conn: int) -> None:
        sample = oru_message(conn, 0)
        cut = sample.index(b"|C")
        end = sample.index(b"|", cut + 1)
        self.head, self.tail = sample[:cut + 1], sample[end:]
        self.prefix = f"C{conn}N".encode()

    def frame(self, n: int) -> bytes:
        return b"\x0b" + self.head + self.prefix + str(n).encode() + self.tail + b"\x1c\r"


def run_load(port: int, cafile: str, connections: int, warmup: float, seconds: float, rate: float,
             out: mp.Queue) -> None:  # type: ignore[type-arg]
    """``rate`` = messages/s per connection (paced, open loop); 0 = as fast as ACKs come back (closed loop)."""
    from ehrbridge.mllp import loops
    from ehrbridge.mllp.tls import client_context

    async def main() -> None:
        ctx = client_context(cafile)
        latencies: list[float] = []
        counts = {"errors": 0, "non_aa": 0}
        conns = []
        for i in range(connections):
            conns.append(await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"))
            if i % 50 == 49:
                await asyncio.sleep(0)
        start_at = time.perf_counter() + warmup
        stop_at = start_at + seconds
        cpu_marks: list[float] = []  # CPU time at the end of the warm-up: the measured window only
        asyncio.get_running_loop().call_later(warmup, lambda: cpu_marks.append(time.process_time()))

        async def sender(idx: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            template = Template(idx)
            interval = 1.0 / rate if rate else 0.0
            # Spread paced senders over the first interval so they do not fire in lock step.
            next_at = time.perf_counter() + (interval * idx / connections if rate else 0.0)
            n = 0
            buffer = b""
            while True:
                if rate:
                    delay = next_at - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_at += interval
                sent_at = time.perf_counter()
                if sent_at >= stop_at:
                    return
                n += 1
                try:
                    writer.write(template.frame(n))
                    while b"\x1c" not in buffer:
                        data = await reader.read(65536)
                        if not data:
                            raise ConnectionError("closed")
                        buffer += data
                except Exception:
                    counts["errors"] += 1
                    return
                end = buffer.index(b"\x1c")
                ack, buffer = buffer[:end], buffer[end + 2:]
                done = time.perf_counter()
                if sent_at >= start_at:
                    latencies.append(done - sent_at)
                    if b"\rMSA|" in ack and b"\rMSA|AA|" not in ack:  # echo replies carry no MSA
                        counts["non_aa"] += 1

        await asyncio.gather(*(sender(i, r, w) for i, (r, w) in enumerate(conns)))
        cpu = time.process_time() - (cpu_marks[0] if cpu_marks else 0.0)
        for _r, w in conns:
            w.close()
        out.put({"latencies": latencies, "client_cpu_s": cpu, **counts})

    # The cheapest loop available: the load generator shares the CPUs with the server under test, and
    # every microsecond it spends is one the server does not get (it caps the echo first).
    loops.run(main(), "auto")


def measure(target, args, label: str, connections: int, warmup: float, seconds: float,  # type: ignore[no-untyped-def]
            cafile: str, rate: float = 0.0, workers: int = 1, extra: mp.Queue | None = None) -> dict:  # type: ignore[type-arg]
    # Reserve a port with SO_REUSEPORT; every worker process binds it too (as `bridge serve --workers`).
    reserve = socket.socket()
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserve.bind(("127.0.0.1", 0))
    port = reserve.getsockname()[1]
    ready: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    stop = mp.Event()
    servers = [mp.Process(target=target, args=(*args, port, ready, stop, *([extra] if extra else [])), daemon=True)
               for _ in range(workers)]
    for server in servers:
        server.start()
    for _ in servers:
        ready.get(timeout=30)
    reserve.close()
    out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    load = mp.Process(target=run_load, args=(port, cafile, connections, warmup, seconds, rate, out), daemon=True)
    load.start()
    result = out.get(timeout=warmup + seconds + 60)
    load.join(10)
    stop.set()
    for server in servers:
        server.join(15)
    lat = sorted(result["latencies"])
    if not lat:
        raise SystemExit(f"{label}: no messages completed ({result})")
    return {"label": label, "msgs_per_s": len(lat) / seconds, "p50_ms": lat[len(lat) // 2] * 1000,
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, "errors": result["errors"],
            "non_aa": result["non_aa"], "count": len(lat), "client_cpu": result["client_cpu_s"] / seconds}


# Label -> ACK-store mode of the bridge ("bridge" = the default, write-behind).
MODES = {"bridge": "write-behind", "bridge write-through": "write-through", "bridge memory only": "memory"}


Step = tuple[int, str, str, int, str]  # (connections, server label, phase, server processes, event loop)


def plan(connection_counts: list[int], variants_at: int, workers: int, loop: str, loops: list[str]) -> list[Step]:
    """What is measured in each round.

    At every N: the bridge saturated (the ratio) and paced (ACK latency at a fixed offered rate) on
    ``loop`` (the bridge's default), and saturated on every other available loop too (what the
    fallback costs); the echo saturated on every available loop, with as many processes as the bridge
    AND with one (on a small machine an extra process competes with the load generator and can make
    the echo slower): the fastest echo is the baseline. The ACK-store variants run at one N only:
    they compare modes, not scale.
    """
    steps: list[Step] = []
    for n in connection_counts:
        steps += [(n, "echo", "saturated", w, lp) for lp in loops for w in sorted({1, workers})]
        steps += [(n, "bridge", "saturated", workers, loop), (n, "bridge", "paced", workers, loop)]
        steps += [(n, "bridge", "saturated", workers, lp) for lp in loops if lp != loop]
        if n == variants_at:
            steps += [(n, variant, phase, workers, loop) for variant in ("bridge write-through", "bridge memory only")
                      for phase in ("paced", "saturated")]
    return steps


def little_ceiling(connections: int, echo_msgs_per_s: float) -> float:
    """Best ratio any commit-then-ACK server can reach at N connections: each connection has one message
    in flight, which waits at least one SQS round trip, so throughput <= N / round trip (Little's law)."""
    return min(1.0, connections / SQS_ROUND_TRIP_S / echo_msgs_per_s)


def raise_fd_limit(connections: int) -> None:
    """Each process of the run holds up to ``connections`` sockets: lift a 1,024 soft limit (common default)."""
    needed = connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"--connections {connections} needs {needed} open files; the hard limit is {hard} "
                         "(raise it, e.g. `ulimit -Hn`, or measure fewer connections)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))  # inherited by the forked servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", default="200,500,1000",
                        help="comma-separated connection counts, each measured for both servers (all >= 200)")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved echo/bridge rounds; the best is kept")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="server processes per server, bridge and echo alike (default: one per CPU, as the "
                             "task definition sets EHRBRIDGE_MLLP_WORKERS to one per vCPU)")
    parser.add_argument("--rate", type=float, default=2400.0,
                        help="paced phase: messages/s offered in total, spread evenly over the connections")
    parser.add_argument("--lookup-first", type=int, default=8,
                        help="ACK-store lookups for the first N messages of each connection (production default 8)")
    parser.add_argument("--loop", default="auto", choices=("auto", "uvloop", "asyncio"),
                        help="the bridge's event loop (default as `bridge serve`: uvloop when installed)")
    parser.add_argument("--variants-at", type=int, default=None,
                        help="connection count at which the write-through and memory-only variants run "
                             "(default: the first)")
    args = parser.parse_args()
    counts = [int(c) for c in str(args.connections).split(",") if c.strip()]
    if not counts or min(counts) < 1:
        parser.error("--connections: give one or more positive counts, e.g. 200,500,1000")
    variants_at = args.variants_at if args.variants_at is not None else counts[0]
    raise_fd_limit(max(counts))

    from ehrbridge.mllp import loops
    from ehrbridge.mllp.certs import make_test_pki

    loop = loops.resolve(args.loop)
    available = ["asyncio", "uvloop"] if loops.uvloop_installed() else ["asyncio"]

    mp.set_start_method("fork")
    w, t = args.warmup, args.seconds
    runs: dict[Step, list[dict]] = {step: [] for step in plan(counts, variants_at, args.workers, loop, available)}
    with tempfile.TemporaryDirectory(prefix="bench-bridge-") as tmp:
        pki = make_test_pki(Path(tmp))
        cert, key, ca = str(pki.server.cert), str(pki.server.key), str(pki.ca.cert)
        print(f"bridge benchmark: {', '.join(map(str, counts))} TLS connections (TLS 1.3, ECDSA P-256), ORU^R01 "
              f"{len(oru_message(1, 1))} bytes, {args.workers} server process(es) per server (bridge and echo "
              f"alike), {t:g} s measured after {w:g} s warm-up per phase, {args.rounds} interleaved rounds; "
              f"{os.cpu_count()} CPUs shared by the servers, the load generator and other work on this machine; "
              f"the bridge on {loop}, the echo on {' and '.join(available)} (the fastest is the baseline), the "
              f"load generator on {loops.resolve('auto')}; "
              f"simulated SQS SendMessageBatch round trip {SQS_ROUND_TRIP_S * 1000:.0f} ms; durable ACK store "
              f"with a simulated DynamoDB round trip of {DYNAMODB_ROUND_TRIP_S * 1000:.0f} ms per batch (write; "
              f"lookup for the first {args.lookup_first} messages of each connection); 'bridge' = the default "
              "write-behind mode (AA, then the ACK stored), 'write-through' = ACK stored before the AA, "
              "'memory only' = the bridge without the ACK store")
        for _round in range(args.rounds):
            for step in runs:
                n, server, phase, workers, step_loop = step
                rate = args.rate / n if phase == "paced" else 0.0
                target = run_echo if server == "echo" else run_bridge
                stats: mp.Queue = mp.Queue()  # type: ignore[type-arg]
                is_bridge = target is run_bridge
                server_args = ((cert, key, step_loop, MODES[server], args.lookup_first) if is_bridge
                               else (cert, key, step_loop))
                row = measure(target, server_args, f"{server}, {phase}", n, w, t, ca, rate=rate,
                              workers=workers, extra=stats)
                servers = [stats.get(timeout=10) for _ in range(workers)]
                entries = sum(x["entries"] for x in servers)
                row["cpu_us"] = sum(x["cpu_s"] for x in servers) / max(1, entries) * 1e6
                if is_bridge:
                    row["batch"] = entries / max(1, sum(x["batches"] for x in servers))
                    row["store_calls"] = sum(x["store_calls"] for x in servers) / max(1, entries)
                    row["store_failed"] = sum(x["store_failed"] for x in servers)
                    row["records"] = sum(x["records"] for x in servers) / max(1, entries)
                runs[step].append(row)
    print(f"  paced: {args.rate:,.0f} msg/s offered in total, spread over the connections; saturated: each "
          "connection sends its next message as soon as its ACK arrives")

    def best(step: Step) -> dict:
        # Best round: paced by p99 (lowest), saturated by throughput (highest).
        key = (lambda r: r["p99_ms"]) if step[2] == "paced" else (lambda r: -r["msgs_per_s"])
        return sorted(runs[step], key=key)[0]

    def cpu(step: Step) -> float:  # mean over rounds: the best round is picked by latency
        return sum(r["cpu_us"] for r in runs[step]) / len(runs[step])

    for step, rows in runs.items():
        n, server, phase, workers, step_loop = step
        for i, r in enumerate(rows):
            extra = f"   server CPU/msg {r['cpu_us']:.0f} us" + (f"   batch {r['batch']:.1f}" if "batch" in r else "")
            if r.get("store_calls"):
                extra += f"   DynamoDB calls/msg {r['store_calls']:.2f}" + (
                    f" ({r['store_failed']} failed)" if r["store_failed"] else "") + f"   stored {r['records']:.0%}"
            mark = "*" if r is best(step) else " "
            label = f"N={n} {server} x{workers} {step_loop}, {phase}"
            print(f" {mark}{label:<50} round {i + 1}: {r['msgs_per_s']:>6.0f} msg/s   ACK p50 {r['p50_ms']:6.1f} ms   "
                  f"p99 {r['p99_ms']:6.1f} ms   errors {r['errors']}   non-AA {r['non_aa']}   "
                  f"load-gen CPU {r['client_cpu']:.0%}{extra}")
    met: dict[str, list[int]] = {"paced >= 2000 msg/s": [], "paced p99 <= 50 ms": [], "saturated >= 2000 msg/s": [],
                                 "ratio >= 0.5": []}
    w_n = args.workers
    echo_steps = {n: max((step for step in runs if step[:3] == (n, "echo", "saturated")),
                         key=lambda step: best(step)["msgs_per_s"]) for n in counts}
    for n in counts:
        echo_step = echo_steps[n]
        echo_s, bridge_s, bridge_p = best(echo_step), best((n, "bridge", "saturated", w_n, loop)), \
            best((n, "bridge", "paced", w_n, loop))
        ratio = bridge_s["msgs_per_s"] / echo_s["msgs_per_s"]
        others = "".join(f"; on {step[4]}: {best(step)['msgs_per_s']:.0f} msg/s, ratio "
                         f"{best(step)['msgs_per_s'] / echo_s['msgs_per_s']:.2f}, CPU/msg {cpu(step):.0f} us"
                         for step in runs if step[:3] == (n, "bridge", "saturated") and step[4] != loop)
        print(f"  result N={n} (* = best round): bridge paced {bridge_p['msgs_per_s']:.0f} msg/s, ACK p50 "
              f"{bridge_p['p50_ms']:.1f} ms, p99 {bridge_p['p99_ms']:.1f} ms; bridge saturated "
              f"{bridge_s['msgs_per_s']:.0f} msg/s vs TLS echo {echo_s['msgs_per_s']:.0f} msg/s "
              f"(x{echo_step[3]} {echo_step[4]}): ratio {ratio:.2f} (ceiling at this N: "
              f"{little_ceiling(n, echo_s['msgs_per_s']):.2f}); server CPU/msg (mean of rounds) bridge "
              f"{cpu((n, 'bridge', 'saturated', w_n, loop)):.0f} us, echo {cpu(echo_step):.0f} us{others}")
        for name, ok in (("paced >= 2000 msg/s", bridge_p["msgs_per_s"] >= 2000),
                         ("paced p99 <= 50 ms", bridge_p["p99_ms"] <= 50),
                         ("saturated >= 2000 msg/s", bridge_s["msgs_per_s"] >= 2000), ("ratio >= 0.5", ratio >= 0.5)):
            if ok:
                met[name].append(n)
    bridge_p = best((variants_at, "bridge", "paced", w_n, loop))
    for variant in ("bridge write-through", "bridge memory only"):
        paced, saturated = (variants_at, variant, "paced", w_n, loop), (variants_at, variant, "saturated", w_n, loop)
        var_p, var_s = best(paced), best(saturated)
        echo_s = best(echo_steps[variants_at])
        print(f"  {variant[7:]} (N={variants_at}, same run): paced {var_p['msgs_per_s']:.0f} msg/s, ACK p50 "
              f"{var_p['p50_ms']:.1f} ms, p99 {var_p['p99_ms']:.1f} ms; saturated {var_s['msgs_per_s']:.0f} msg/s, "
              f"ratio to echo {var_s['msgs_per_s'] / echo_s['msgs_per_s']:.2f}; default vs this: paced p99 "
              f"{bridge_p['p99_ms'] - var_p['p99_ms']:+.1f} ms, server CPU/msg (mean of rounds) paced "
              f"{cpu((variants_at, 'bridge', 'paced', w_n, loop)) - cpu(paced):+.0f} us, saturated "
              f"{cpu((variants_at, 'bridge', 'saturated', w_n, loop)) - cpu(saturated):+.0f} us")

    def where(ns: list[int]) -> str:
        missed = [n for n in counts if n not in ns]
        return ("met at every N" if not missed else
                f"met at N={','.join(map(str, ns)) or 'none'}, MISSED at N={','.join(map(str, missed))}")

    print("  targets: " + "; ".join(f"{name}: {where(ns)}" for name, ns in met.items()))
    print("  notes: the simulated store skips boto3's request signing/serialisation (~0.2-0.3 ms CPU per "
          "SendMessageBatch call, research/mllp.md section 7). The ceiling is Little's law: a sender waits for "
          "each ACK and an AA waits for the SQS round trip, so N connections carry at most N / 10 ms whatever "
          "the server does, while the echo answers at once; below the N where that ceiling passes 0.5 the "
          "ratio measures the round trip, not the bridge. A saturated closed loop's latency is N / throughput, "
          "so p99 is judged in the paced phase. 'stored' = ACK records in the simulated table per message "
          "committed (write-behind included: the drain flushes). Figures move with whatever else runs on "
          "this shared machine; compare rounds.")


if __name__ == "__main__":
    main()
