"""Chaos scenarios on the local twin: break one thing at a time, then account for every message.

Each scenario gets a freshly provisioned twin (moto on 127.0.0.1), feeds synthetic HL7 v2 messages
(each with its own control id and patient) through the real code - the MLLP/TLS bridge as its own
process where the scenario needs it, the real handlers under the event-source runner - and then
traces every input by its correlation id to where it ended:

- ``delivered``: in the FHIR lake; ``duplicated``: in the lake under more than one message id;
- ``quarantined``: set aside with a reason; ``dead-lettered``: in a DLQ;
- ``lost``: found nowhere. ``in`` counts the messages the pipeline took custody of (an ACKed
  message, a message on a queue); a sender keeps and resends what was not ACKed.

Scenarios register themselves in ``SCENARIOS`` (``@scenario``): a new one is one function. The FHIR
poller's scenario (``poller-every-fault``) accounts by resource version instead of HL7 message: its
``in`` is the sandbox EHR's set of (type, id, version) in scope, traced by the poller's stable ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ehrbridge.contracts.envelope import ContractError, Envelope, new_envelope
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.local.runner import EventSourceMapping, Handler, PipelineRunner

INVALID_BODY = '{"not": "an envelope"}'
TENANT_SOURCE = "demo-lab"  # an MLLP source of the demo tenant (events/tenants/demo-health.yaml)
_TEMPLATE = ("MSH|^~\\&|DEMOLAB|LABFAC|EHRBRIDGE|HOSP|20260301083000||ORU^R01^ORU_R01|{cid}|P|2.5.1\r"
             "PID|1||CHAOS{n:05d}^^^MRN^MR||Chaos^Patient{n}||19800101|F\r"
             "OBR|1||ORD{n:05d}|718-7^Hemoglobin^LN|||20260301080000\r"
             "OBX|1|NM|718-7^Hemoglobin^LN||13.{d}|g/dL|12-16|N|||F|||20260301081000\r")


def synthetic_message(n: int, run: str) -> tuple[str, bytes]:
    """(control id, message): synthetic, one patient per message, PHI-free by construction."""
    cid = f"{run}{n:05d}"
    return cid, _TEMPLATE.format(cid=cid, n=n, d=n % 10).encode("ascii")


@dataclass
class ScenarioResult:
    name: str
    messages_in: int = 0
    delivered: int = 0
    quarantined: int = 0
    dead_lettered: int = 0
    duplicated: int = 0
    lost: int = 0
    in_flight: int = 0
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.lost == 0 and self.duplicated == 0 and self.in_flight == 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


ScenarioFn = Callable[["ChaosRun", int], list[str]]  # returns the correlation ids taken into custody


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    run: ScenarioFn
    needs_bridge: bool = False


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, description: str, *, needs_bridge: bool = False) -> Callable[[ScenarioFn], ScenarioFn]:
    def register(fn: ScenarioFn) -> ScenarioFn:
        SCENARIOS[name] = Scenario(name, description, fn, needs_bridge)
        return fn

    return register


# ---- the run: a fresh twin per scenario -------------------------------------------------------
class ChaosRun:
    """What a scenario works with: the twin, the tenant, the handlers, a bridge process, a sender."""

    def __init__(self, twin: Any, tenant: TenantConfig, tenant_file: Path, workdir: Path) -> None:
        self.twin, self.tenant, self.tenant_file, self.workdir = twin, tenant, tenant_file, workdir
        self.notes: dict[str, Any] = {}
        self._pki: Any = None

    # pipeline ------------------------------------------------------------------------------
    def mappings(self, wrap: dict[str, Callable[[Handler], Handler]] | None = None) -> list[EventSourceMapping]:
        from ehrbridge import resources
        from ehrbridge.local.demo import FUNCTIONS_DIR
        from ehrbridge.local.runner import load_handler
        from ehrbridge.local.twin import local_client

        sqs = local_client("sqs", self.twin.endpoint)
        out = []
        for fn in resources.FUNCTIONS:
            if fn.consumes is None:
                continue
            handler = load_handler(FUNCTIONS_DIR / fn.name / "handler.py")
            if wrap and fn.name in wrap:
                handler = wrap[fn.name](handler)
            out.append(EventSourceMapping(sqs, queue_url=self.twin.queues[fn.consumes],
                                          queue_arn=self.twin.queue_arns[fn.consumes], handler=handler,
                                          function_name=fn.name, batch_size=resources.queue(fn.consumes).batch_size,
                                          timeout_s=fn.timeout_s))
        return out

    def drain(self, wrap: dict[str, Callable[[Handler], Handler]] | None = None, timeout_s: float = 120.0) -> bool:
        return PipelineRunner(self.mappings(wrap)).run_until_drained(timeout_s=timeout_s, idle_sleep_s=0.05)

    def publish_hl7(self, count: int, run: str) -> list[Envelope]:
        """Envelopes as the bridge makes them, straight onto hl7-inbound (scenarios without a bridge)."""
        from ehrbridge.local.twin import local_client
        from ehrbridge.mllp.message import message_id_for

        sqs = local_client("sqs", self.twin.endpoint)
        envelopes = []
        for n in range(count):
            cid, raw = synthetic_message(n, run)
            import hashlib

            message_id = message_id_for(self.tenant.tenant_id, TENANT_SOURCE, cid, hashlib.sha256(raw).hexdigest())
            env = new_envelope(tenant_id=self.tenant.tenant_id, source="hl7v2", kind="ORU^R01", body=raw,
                               natural_key=[cid], patient_key=f"pk-chaos-{run}-{n}",
                               correlation_id=message_id, attributes={"source_id": TENANT_SOURCE, "msh10": cid})
            sqs.send_message(QueueUrl=self.twin.queues["hl7-inbound"], MessageBody=env.to_json(),
                             MessageGroupId=env.group_id, MessageDeduplicationId=env.message_id)
            envelopes.append(env)
        return envelopes

    # bridge ---------------------------------------------------------------------------------
    @property
    def pki(self) -> Any:
        if self._pki is None:
            from ehrbridge.mllp.certs import make_test_pki

            self._pki = make_test_pki(self.workdir / "pki")
        return self._pki

    def bridge(self, *, endpoint: str | None = None) -> BridgeProcess:
        return BridgeProcess(self, endpoint or self.twin.endpoint)

    def correlation_id(self, raw: bytes) -> str:
        """The id the bridge gives a message (stable: a resend of the same bytes gets the same id)."""
        import hashlib

        from ehrbridge.hl7.wire import read_msh
        from ehrbridge.mllp.message import message_id_for

        return message_id_for(self.tenant.tenant_id, TENANT_SOURCE, read_msh(raw).control_id,
                              hashlib.sha256(raw).hexdigest())


class BridgeProcess:
    """``ehrbridge bridge serve`` as its own process (so it can be killed -9), on fixed ports."""

    def __init__(self, run: ChaosRun, endpoint: str) -> None:
        self.run, self.endpoint = run, endpoint
        self.port, self.health = _free_port(), _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> BridgeProcess:
        pki = self.run.pki
        env = {**os.environ, **self.run.twin.env, "AWS_ENDPOINT_URL": self.endpoint, "PYTHONUNBUFFERED": "1"}
        log = open(self.run.workdir / f"bridge-{self.starts}.log", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ehrbridge.cli.main", "bridge", "serve", "--cert", str(pki.server.cert),
             "--key", str(pki.server.key), "--tenant", str(self.run.tenant_file), "--host", "127.0.0.1",
             "--port", str(self.port), "--health-port", str(self.health), "--ack-timeout", "3",
             "--drain-timeout", "5", "--ack-store-timeout", "1"], env=env, stdout=log, stderr=log)
        log.close()
        self.starts += 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bridge exited at start (log: {self.run.workdir})")
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(f"http://127.0.0.1:{self.health}/readyz", timeout=1) as r:
                if r.status == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError("bridge never became ready")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()


@dataclass
class SenderStats:
    acked: dict[str, str] = field(default_factory=dict)  # control id -> correlation id
    answers: dict[str, int] = field(default_factory=dict)  # AA / AE / AR / no answer -> count
    reconnects: int = 0


async def send_until_acked(run: ChaosRun, bridge: BridgeProcess, messages: list[tuple[str, bytes]], *,
                           on_ack: Callable[[int], Any] | None = None, give_up_s: float = 120.0) -> SenderStats:
    """An interface engine: one connection, one message at a time, resend whatever was not AA'd
    (AE, no answer, connection lost), reconnecting until the bridge is back."""
    from ehrbridge.mllp.client import MllpClient, MllpClientError
    from ehrbridge.mllp.tls import client_context

    stats = SenderStats()
    context = client_context(run.pki.ca.cert)
    deadline = time.monotonic() + give_up_s
    index = 0
    client: Any = None
    while index < len(messages):
        if time.monotonic() > deadline:
            raise RuntimeError(f"sender gave up with {len(messages) - index} message(s) not ACKed")
        cid, raw = messages[index]
        try:
            if client is None:
                client = await MllpClient("127.0.0.1", bridge.port, ssl_context=context,
                                          server_hostname="localhost", timeout=10).connect()
            if on_ack is not None:
                hook = on_ack(len(stats.acked))
                if hook is not None:
                    await hook(client, raw)
            ack = await client.send(raw)
        except (TimeoutError, MllpClientError, ConnectionError, ssl.SSLError, OSError):
            stats.answers["no answer"] = stats.answers.get("no answer", 0) + 1
            stats.reconnects += 1
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()
            client = None
            await asyncio.sleep(0.2)
            continue
        stats.answers[ack.code] = stats.answers.get(ack.code, 0) + 1
        if ack.code == "AA":
            stats.acked[cid] = run.correlation_id(raw)
            index += 1
        else:
            await asyncio.sleep(0.3)  # AE: the bridge could not commit; the sender keeps it and retries
    if client is not None:
        await client.close()
    return stats


class TcpProxy:
    """A loopback TCP proxy that can be cut: the bridge's way to AWS (SQS, DynamoDB) during an outage."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = _free_port()
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        self.up()
        return self

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def up(self) -> None:
        async def serve() -> None:
            self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port, reuse_address=True)

        self._call(serve())

    def down(self) -> None:
        """Refuse new connections and cut the open ones (AWS unreachable)."""
        async def cut() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        self._call(cut())

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update({writer, up_writer})

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()
                self._writers.discard(dst)

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.down()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- accounting ----------------------------------------------------------------------------------
def account(run: ChaosRun, inputs: list[str], result: ScenarioResult) -> None:
    """Trace each correlation id to the lake, the quarantine or a DLQ; count duplicates and losses."""
    from ehrbridge.local.twin import local_client

    twin = run.twin
    s3 = local_client("s3", twin.endpoint)
    sqs = local_client("sqs", twin.endpoint)
    lake_ids: dict[str, set[str]] = {}
    for key in _keys(s3, twin.buckets["lake"], "lake/"):
        meta = s3.head_object(Bucket=twin.buckets["lake"], Key=key).get("Metadata", {})
        lake_ids.setdefault(meta.get("correlation-id", ""), set()).add(meta.get("message-id", key))
    quarantined = set()
    for key in _keys(s3, twin.buckets["quarantine"], "quarantine/"):
        if key.endswith(".reason.json"):
            record = json.loads(s3.get_object(Bucket=twin.buckets["quarantine"], Key=key)["Body"].read())
            quarantined.add(record.get("correlation_id", ""))
    dead: set[str] = set()
    for url in twin.dlqs.values():
        for body in _peek_all(sqs, url):
            try:
                dead.add(Envelope.parse_json(body).correlation_id)
            except ContractError:
                dead.add(f"invalid:{body[:40]}")
    wanted = set(inputs)
    delivered = {c for c in wanted if c in lake_ids}
    result.messages_in = len(wanted)
    result.delivered = len(delivered)
    result.duplicated = sum(1 for c in delivered if len(lake_ids[c]) > 1)
    result.quarantined = len((wanted & quarantined) - delivered)
    result.dead_lettered = len((wanted & dead) - delivered - quarantined)
    result.lost = len(wanted - delivered - quarantined - dead)
    result.in_flight = sum(_depth(sqs, url) for queue, url in twin.queues.items() if queue != "quarantine")


def _keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _peek_all(sqs: Any, url: str) -> list[str]:
    bodies: list[str] = []
    handles: list[str] = []
    for _ in range(200):
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=30,
                                  WaitTimeSeconds=0).get("Messages", [])
        if not got:
            break
        bodies.extend(m["Body"] for m in got)
        handles.extend(m["ReceiptHandle"] for m in got)
    for start in range(0, len(handles), 10):
        sqs.change_message_visibility_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
            for i, h in enumerate(handles[start:start + 10])])
    return bodies


def _depth(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


# ---- scenarios ------------------------------------------------------------------------------------
@scenario("bridge-kill-9", "the bridge is killed -9 mid-stream; the sender resends what was not ACKed",
          needs_bridge=True)
def bridge_kill_9(run: ChaosRun, size: int) -> list[str]:
    bridge = run.bridge().start()
    messages = [synthetic_message(n, "K") for n in range(size)]
    kills = sorted({max(1, size // 3), max(2, 2 * size // 3)})

    def on_ack(acked: int) -> Any:
        if not kills or acked != kills[0]:
            return None
        kills.pop(0)

        async def kill_with_a_message_in_flight(client: Any, raw: bytes) -> None:
            await client.write(raw)  # the frame is on its way; no ACK will come back for it
            await asyncio.sleep(0.05)
            bridge.kill9()
            await asyncio.get_running_loop().run_in_executor(None, bridge.start)
            raise ConnectionResetError("bridge killed")

        return kill_with_a_message_in_flight

    try:
        stats = asyncio.run(send_until_acked(run, bridge, messages, on_ack=on_ack))
    finally:
        bridge.stop()
    run.notes.update(kills=bridge.starts - 1, answers=stats.answers, reconnects=stats.reconnects)
    run.drain()
    return list(stats.acked.values())


@scenario("sqs-outage", "AWS (SQS, DynamoDB) unreachable for a while: the bridge answers AE, the sender "
          "retries; nothing ACKed is lost", needs_bridge=True)
def sqs_outage(run: ChaosRun, size: int) -> list[str]:
    from urllib.parse import urlsplit

    proxy = TcpProxy(int(urlsplit(run.twin.endpoint).port or 0)).start()
    bridge = run.bridge(endpoint=f"http://127.0.0.1:{proxy.port}").start()
    messages = [synthetic_message(n, "Q") for n in range(size)]
    outage = {"at": max(1, size // 3), "for_s": 4.0, "started": 0.0}

    def on_ack(acked: int) -> Any:
        if acked == outage["at"] and not outage["started"]:
            proxy.down()
            outage["started"] = time.monotonic()
            threading.Timer(outage["for_s"], proxy.up).start()
        return None

    try:
        stats = asyncio.run(send_until_acked(run, bridge, messages, on_ack=on_ack))
    finally:
        bridge.stop()
        proxy.stop()
    run.notes.update(outage_s=outage["for_s"], answers=stats.answers)
    run.drain()
    return list(stats.acked.values())


def _crash_midway(times: int) -> Callable[[Handler], Handler]:
    """A handler that processes the first half of a batch for real, then dies (``times`` times)."""
    left = [times]

    def wrap(handler: Handler) -> Handler:
        def crashing(event: dict[str, Any], context: Any) -> Any:
            records = event["Records"]
            if left[0] > 0 and len(records) >= 2:
                left[0] -= 1
                handler({"Records": records[: len(records) // 2]}, context)
                raise RuntimeError("simulated crash mid-batch")
            return handler(event, context)

        return crashing

    return wrap


@scenario("handler-crash", "normalizer and identity_matcher crash mid-batch after processing half of it; "
          "the whole batch comes back")
def handler_crash(run: ChaosRun, size: int) -> list[str]:
    envelopes = run.publish_hl7(size, "C")
    wrap = {"normalizer": _crash_midway(2), "identity_matcher": _crash_midway(2)}
    run.drain(wrap)
    run.notes["crashes"] = 4
    return [e.correlation_id for e in envelopes]


@scenario("poison", "messages the normalizer cannot process until a fix: to the DLQ after maxReceiveCount, "
          "then `ehrbridge redrive`; an invalid envelope goes to the DLQ with its reason")
def poison(run: ChaosRun, size: int) -> list[str]:
    from ehrbridge.local.twin import local_client
    from ehrbridge.ops.redrive import redrive

    envelopes = run.publish_hl7(size, "P")
    poisoned = {e.message_id for e in envelopes[:: max(1, size // 3)]}
    fixed = [False]

    def wrap(handler: Handler) -> Handler:
        def fragile(event: dict[str, Any], context: Any) -> Any:
            if fixed[0]:
                return handler(event, context)
            good, bad = [], []
            for record in event["Records"]:
                try:
                    is_bad = Envelope.parse_json(record["body"]).message_id in poisoned
                except ContractError:
                    is_bad = False
                (bad if is_bad else good).append(record)
            result = handler({"Records": good}, context) if good else {"batchItemFailures": []}
            failures = list((result or {}).get("batchItemFailures", []))
            failures += [{"itemIdentifier": r["messageId"]} for r in bad]
            return {"batchItemFailures": failures}

        return fragile

    sqs = local_client("sqs", run.twin.endpoint)
    sqs.send_message(QueueUrl=run.twin.queues["normalize"], MessageBody=INVALID_BODY,
                     MessageGroupId="chaos-invalid", MessageDeduplicationId="chaos-invalid")
    # Poison messages in the ingest stage would block their ingest; they are poison to the normalizer.
    wrapped = {"normalizer": wrap}
    run.drain(wrapped)
    in_dlq = _depth(sqs, run.twin.dlqs["normalize"])
    fixed[0] = True  # the fix is deployed
    moved = redrive(sqs, queue="normalize", dlq_url=run.twin.dlqs["normalize"],
                    source_url=run.twin.queues["normalize"])
    run.drain(wrapped)
    run.notes.update(poisoned=len(poisoned), in_dlq_before_redrive=in_dlq, redriven=moved.moved,
                     kept_invalid=moved.kept_invalid, dlq_reasons=moved.reasons)
    # The invalid envelope is an input too: it must be accounted for (dead-lettered, with its reason).
    return [e.correlation_id for e in envelopes] + [f"invalid:{INVALID_BODY[:40]}"]


POLLED_TYPES = ("Patient", "Observation")  # the labs workflow's searchable types the sandbox grants


@scenario("poller-every-fault", "the sandbox EHR throws every fault at once at the dispatcher + fhir_poller "
          "(429 bursts in each Retry-After form, 5xx, slow, truncated JSON, OperationOutcome in a 200, updates "
          "under offset paging, tokens expiring mid-crawl); through normalize and identity to the lake")
def poller_every_fault(run: ChaosRun, size: int) -> list[str]:
    """``in`` = the server's (type, id, version) set in scope once it stops changing; each one must
    reach the lake exactly once. Versions superseded during the crawl may arrive too (they existed)."""
    from ehrbridge.aws.settings import table_name
    from ehrbridge.contracts.tenant_store import DynamoTenantStore
    from ehrbridge.local.polling import dispatch_once, expected_correlation_ids, onboard_sandbox_tenant, poller_mapping
    from ehrbridge.local.twin import local_client
    from ehrbridge.poll.cursor import DynamoCursorStore
    from ehrbridge.poll.jobs import dispatch
    from ehrbridge.poll.runtime import SqsJobQueue
    from ehrbridge.sandbox.faults import Faults
    from ehrbridge.sandbox.server import SandboxEHR

    faults = Faults.everything(seed=17, rate=0.12)
    patients = max(size, 12)  # enough pages per window for every fault to fire, even in the short form
    base = run.tenant.model_copy(update={"rate_limits": run.tenant.rate_limits.model_copy(
        update={"requests_per_second": 50.0})})
    with SandboxEHR("generic", patients=patients, faults=faults, paging_style="offset", token_lifetime_s=10,
                    max_page_size=5, observations_per_patient=(2, 5)) as sandbox:
        tenant = onboard_sandbox_tenant(sandbox, base, workflows=("labs",))
        jobs = SqsJobQueue(run.twin.queues["poll-jobs"], local_client("sqs", run.twin.endpoint))
        state = table_name("state")
        dispatched = [dispatch_once()["enqueued"]]
        windows = 3  # mutations under the 1st; the 2nd gets what they changed; the 3rd re-reads the overlap
        for window in range(windows):
            if window:
                faults.mutate_per_page = 0  # the source settles, so "in" is a fixed set
                later = time.time() + window * 3600  # the scheduled dispatcher, one interval later or more
                dispatched.append(dispatch(DynamoTenantStore(state).list(), DynamoCursorStore(state), jobs.send,
                                           now=lambda at=later: at).counts()["enqueued"])
            if not PipelineRunner([poller_mapping(run.twin, timeout_s=120), *run.mappings()]).run_until_drained(
                    timeout_s=300, idle_sleep_s=0.05):
                raise RuntimeError(f"window {window + 1} did not drain")
        current = sandbox.current_versions(POLLED_TYPES)
        requests = sandbox.fhir_requests()
        injected = dict(sandbox.injector.injected)
        run.notes.update(
            versions_in_scope=len(current),
            superseded_versions=len({v for v in sandbox.history if v[0] in POLLED_TYPES} - current),
            poll_jobs_dispatched=dispatched, fhir_requests=len(requests),
            faults={k: injected[k] for k in sorted(injected)})
        return sorted(expected_correlation_ids(tenant.tenant_id, current))


# ---- driver ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet(log_file: Path) -> Iterator[None]:
    """Functions' JSON logs and EMF lines go to a file: the terminal gets the table."""
    from ehrbridge.local.demo import pipeline_output_to

    with open(log_file, "a", encoding="utf-8") as stream, pipeline_output_to(stream):
        yield


def run_scenarios(names: list[str] | None = None, *, size: int = 30, tenant_file: Path | None = None,
                  workdir: Path | None = None, progress: Callable[[ScenarioResult], None] | None = None
                  ) -> list[ScenarioResult]:
    from ehrbridge.contracts.tenant_store import DynamoTenantStore
    from ehrbridge.local.demo import DEFAULT_TENANT
    from ehrbridge.local.twin import MotoServer, activate, provision

    unknown = [n for n in names or [] if n not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    tenant_file = tenant_file or DEFAULT_TENANT
    tenant = TenantConfig.from_yaml(tenant_file)
    workdir = workdir or Path(tempfile.mkdtemp(prefix="ehrbridge-chaos-"))
    results = []
    saved_env = dict(os.environ)
    _forget_handlers()
    os.environ.pop("POWERTOOLS_IDEMPOTENCY_DISABLED", None)  # idempotency is what these scenarios test
    try:
        with MotoServer(separate_process=True) as server, _quiet(workdir / "pipeline.log"):
            for name in names or list(SCENARIOS):
                spec = SCENARIOS[name]
                server.reset()
                twin = provision(server.endpoint, visibility_timeout_s=1)
                activate(twin)
                DynamoTenantStore(twin.tables["state"]).put(tenant)
                run = ChaosRun(twin, tenant, tenant_file, workdir / name)
                run.workdir.mkdir(parents=True, exist_ok=True)
                result = ScenarioResult(name)
                started = time.monotonic()
                try:
                    inputs = spec.run(run, size)
                    account(run, inputs, result)
                except Exception as err:  # a scenario that breaks is reported, the others still run
                    result.error = f"{type(err).__name__}: {err}"[:300]
                result.seconds = round(time.monotonic() - started, 1)
                result.notes = run.notes
                results.append(result)
                if progress is not None:
                    progress(result)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        _forget_handlers()
    return results


def _forget_handlers() -> None:
    """Handler modules build their AWS clients once (as in Lambda): a new moto server needs new ones,
    and nothing loaded here may outlive the server it was built for."""
    from ehrbridge.aws.clients import reset_clients

    for module in [m for m in sys.modules if m.startswith("ehrbridge_fn_")]:
        del sys.modules[module]
    reset_clients()
