"""The MLLP-over-TLS bridge: one asyncio event loop, commit-then-ACK, an answer on every path.

Per connection: peek the first byte (plaintext is refused and counted before any TLS work),
TLS handshake (1.2+, optional client certificate), then read frames, and for each frame in order:
parse MSH -> route to a tenant's source -> strict checks -> dedupe -> commit (batched across
connections) -> ACK. AA only after the queue confirmed the message; queue failure or the ACK
deadline -> AE with ERR 207; bad input -> AR/AE with ERR, raw bytes quarantined first.
"""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ehrbridge.contracts.envelope import Envelope, new_envelope, stable_id
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.hl7.wire import MshHeader, WireError
from ehrbridge.mllp import metrics as m
from ehrbridge.mllp.ack import AckError, ack_code, build_ack, fallback_header, minimal_ack, should_send
from ehrbridge.mllp.ack_store import DEFAULT_TTL_S, AckKey, AckRecord, DurableAcks
from ehrbridge.mllp.commit import GroupCommitter
from ehrbridge.mllp.dedupe import AckCache
from ehrbridge.mllp.framing import DEFAULT_MAX_MESSAGE_BYTES, FrameTooLarge, MllpDecoder, frame
from ehrbridge.mllp.loops import running_loop_name
from ehrbridge.mllp.message import (
    Inspected,
    Rejected,
    Route,
    SourceDirectory,
    build_envelope,
    envelope_json,
    inspect,
    message_id_for,
    message_kind,
    read_header,
    starts_batch,
)
from ehrbridge.mllp.tls import cert_days_left, classify_handshake_error, fingerprint, server_context
from ehrbridge.observability import logger

TLS_HANDSHAKE_RECORD = 0x16


@dataclass
class BridgeSettings:
    certfile: Path
    keyfile: Path
    host: str = "0.0.0.0"
    port: int = 2575
    health_host: str = "0.0.0.0"
    health_port: int | None = 8080  # None: no health endpoint
    client_ca: Path | None = None
    require_client_cert: bool = False
    # With bound sources, refuse a client certificate no source is bound to (strict mTLS).
    require_known_client_cert: bool = False
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    read_timeout_s: float = 30.0  # a started frame must complete within this
    idle_timeout_s: float = 3600.0  # no bytes at all for this long -> close
    handshake_timeout_s: float = 10.0
    ack_timeout_s: float = 10.0  # below typical sender ACK timeouts (15-30 s)
    linger_s: float = 0.002
    max_connections: int = 2000
    drain_timeout_s: float = 30.0
    keepalive_idle_s: int = 60  # below the NLB idle timeout (350 s)
    keepalive_interval_s: int = 15
    metrics_interval_s: float = 60.0
    unhealthy_after_failures: int = 5  # consecutive failed batches -> not ready
    # Several worker processes share the ports (SO_REUSEPORT; one per vCPU: Python runs one core per process).
    reuse_port: bool = False
    # With a tenant loader: re-read tenants this often, so onboarding a sender needs no redeploy.
    tenant_refresh_s: float = 300.0
    # Durable ACK store (state table): resends answered with the original ACK by any task, for this long.
    ack_store_ttl_s: int = DEFAULT_TTL_S
    ack_store_timeout_s: float = 1.0  # a slower lookup/write is skipped (counted), never holds an ACK longer
    ack_store_conditional: bool = True  # one stored ACK when tasks race (transactions: 2 write units per item)
    # Look the first N frames of each connection up before committing: a sender resends the message it got
    # no ACK for first thing after reconnecting, maybe to another task. Later frames skip the lookup (one
    # round trip less per message); if one is a resend after all, the conditional write finds the stored
    # ACK and that goes back (the queue copy is deduplicated by FIFO id / downstream idempotency).
    ack_store_lookup_first: int = 8
    # Write-behind (default): after SQS confirmed the message, the AA goes out at once and its ACK is stored
    # in the background (a write that fails, or comes second to a racing task's, is only counted). The
    # record is replay fidelity, not data safety: commit-then-ACK already holds, and a resend that beats
    # the write is still deduplicated, it just gets a fresh ACK (same MSH-10 and MSA-2, another MSH-7).
    # False = write-through: the ACK is stored (or the stored one learnt) before the AA goes out, one
    # DynamoDB round trip more on every ACK, and a racing task answers with the ACK stored first.
    ack_store_write_behind: bool = True
    # Write-behind only: background writes wait this long to fill a TransactWriteItems batch (up to 25).
    ack_store_write_linger_s: float = 0.005


# Young-generation size for the cyclic GC (CPython's default is 700 allocations). Each message makes a
# few dozen short-lived container objects (callbacks, futures, tuples); at the default a collection runs
# every dozen messages and rescans the in-flight state of every connection each time. Almost all of those
# objects are freed by reference counting, so collecting 30x less often costs little memory.
GC_YOUNG_THRESHOLD = 20_000


def settle_gc() -> None:
    """Tune the cyclic GC once the bridge is up (``serve_forever``; the benchmark does the same).

    Everything built so far lives until exit: ``freeze`` keeps it out of the full collections, which
    otherwise scan it again and again and show up as ACK latency spikes.
    """
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def quarantine_message_id(tenant_id: str, raw: bytes) -> str:
    """Message (and correlation) id of the quarantine envelope for refused bytes: stable per tenant and bytes."""
    return stable_id(tenant_id, "hl7v2", "quarantine", stable_id(raw))


class QuarantineWriter:
    """Keeps refused bytes with the reason (pipeline.stages.Quarantine), off the event loop."""

    def __init__(self, quarantine: Any) -> None:
        self.quarantine = quarantine

    async def put(self, raw: bytes, *, tenant_id: str, kind: str, reason: str) -> None:
        envelope = new_envelope(tenant_id=tenant_id, source="hl7v2", kind=kind[:64] or "UNPARSEABLE", body=raw,
                                natural_key=["quarantine", stable_id(raw)], patient_key=None,
                                attributes={"stage": "mllp_bridge"})
        await asyncio.get_running_loop().run_in_executor(None, self.quarantine.put, envelope, [reason],
                                                         "mllp_bridge")


class _TooLarge:
    """Queued in place of a frame that passed the size cap, so its AR keeps the ACK order."""

    __slots__ = ("error",)

    def __init__(self, error: FrameTooLarge) -> None:
        self.error = error


class MllpConnection(asyncio.Protocol):
    """One TLS connection: frames are handled strictly in order, one at a time (MLLP is request/reply).

    Callback-driven on purpose: no task or future per message on the hot path. ``finish`` is called
    exactly once per frame, immediately (replayed ACK) or when the frame's batch comes back.
    """

    def __init__(self, bridge: MllpBridge, max_message_bytes: int) -> None:
        self.bridge = bridge
        self.decoder = MllpDecoder(max_message_bytes)
        self.queue: deque[bytes | _TooLarge] = deque()
        self.transport: asyncio.Transport | None = None
        self.fingerprint: str | None = None
        self.busy = False
        self.closed = False
        self.reading_paused = False
        self.started = 0.0
        self.busy_since = 0.0
        self.seq = 0  # frames taken so far: tells a late callback whether its frame is still the current one
        self.last_read = time.monotonic()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._in_next = False
        self.refusing = False  # an oversized frame was read: bytes after it are dropped until the close

    # asyncio.Protocol ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception as err:  # a bug here must not kill the loop silently: close, counted and logged
            logger.error("reading frames failed; connection closed", extra={"error_type": type(err).__name__})
            self.bridge.metrics.count(m.DELIBERATE_CLOSES, detail="internal_error")
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    def _received(self, data: bytes) -> None:
        self.last_read = time.monotonic()
        if self.refusing:
            return  # after an oversized frame nothing more is read: the connection closes after its AR
        decoder = self.decoder
        junk = decoder.junk_bytes
        try:
            frames: list[bytes | _TooLarge] = list(decoder.feed(data))
        except FrameTooLarge as err:
            self.bridge.metrics.count(m.FRAMING_ERRORS, detail="too_large")
            # Frames completed in the same read are answered first, in order; then the refusal.
            frames = [*err.frames, _TooLarge(err)]
            self.refusing = True
            self._pause()  # nothing after an oversized frame is read: the connection closes after its AR
        if decoder.junk_bytes != junk:
            self.bridge.metrics.count(m.FRAMING_ERRORS, detail="junk_skipped")
        if frames:
            self.queue.extend(frames)
            if len(self.queue) > 64:
                self._pause()  # a sender pipelining faster than we commit waits in its TCP buffer
            if not self.busy:
                self._next()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.decoder.in_frame:
            self.bridge.metrics.count(m.FRAMING_ERRORS, detail="truncated")
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self._pause()

    def resume_writing(self) -> None:
        self._resume()

    # processing ----------------------------------------------------------------------------------
    def _pause(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def _next(self) -> None:
        if self._in_next:
            return
        self._in_next = True
        try:
            while self.queue and not self.busy and not self.closed:
                item = self.queue.popleft()
                self.busy = True
                self.seq += 1
                self.started = time.perf_counter()
                self.busy_since = time.monotonic()
                if isinstance(item, _TooLarge):
                    self.bridge.too_large(self, item.error)
                    continue
                try:
                    self.bridge.handle(item, self)
                except Exception as err:  # a bug before the commit: keep the bytes, refuse them, keep the loop
                    self.bridge.handling_failed(self, item, err)
            if not self.busy and len(self.queue) < 16 and not (self.queue and isinstance(self.queue[-1], _TooLarge)):
                self._resume()
        finally:
            self._in_next = False

    def finish(self, tenant: str, payload: bytes | None, *, close: bool = False) -> None:
        """The frame being handled is answered (``payload`` None: enhanced mode says stay silent)."""
        if not self.closed and self.transport is not None:
            if payload is not None:
                self.transport.write(frame(payload))
            if close:
                self.bridge.metrics.count(m.DELIBERATE_CLOSES, detail="too_large")
                self.transport.close()
        self.bridge.metrics.observe(m.ACK_LATENCY, tenant, (time.perf_counter() - self.started) * 1000)
        self.busy = False
        if self.bridge.draining and not self.queue and not self.decoder.in_frame and self.transport is not None:
            self.transport.close()
        elif not self._in_next:
            self._next()

    def close_if_idle(self) -> None:
        if not self.busy and not self.queue and not self.decoder.in_frame and self.transport is not None:
            self.transport.close()


class _Frame:
    """One accepted frame on its way: store lookup -> commit -> ACK (and the ACK-store write).

    One object per message whose bound methods are the callbacks, in place of the seven closures
    (and their cells) ``handle`` used to make for every frame. Every callback that may run later is
    guarded: a bug answers the sender AE (``_unanswered``) and releases the in-flight entry, so a
    resend waiting on this copy is handled afresh.
    """

    __slots__ = ("ack", "ack_key", "batch", "bridge", "collision", "conn", "header", "item", "key", "kind",
                 "raw", "seq", "source", "started", "tenant")

    def __init__(self, bridge: MllpBridge, conn: MllpConnection, raw: bytes, header: MshHeader, item: Inspected,
                 tenant: str, kind: str, key: str) -> None:
        self.bridge = bridge
        self.conn = conn
        self.seq = conn.seq
        self.started = conn.started
        self.raw = raw
        self.header = header
        self.item = item
        self.tenant = tenant
        self.kind = kind
        self.key = key
        source = item.route.source
        self.source = source
        self.collision = bridge.acks.collision(tenant, source.source_id, header.control_id, item.sha256)
        self.batch = starts_batch(raw)
        self.ack_key = AckKey(tenant, source.source_id, header.control_id, item.sha256)
        self.ack = b""

    def _failed(self, err: Exception) -> None:
        self.bridge.acks.end(self.key, None)  # a resend waiting on this copy is handled afresh
        self.bridge._unanswered(self.conn, self.seq, self.raw, err)

    def _stored_anyway(self, err: Exception) -> None:
        """A bug after the queue confirmed the message: it IS stored, so the answer is still an accept
        (never AE 207 "resend" for a stored message); a minimal ACK when the normal one cannot be made."""
        logger.error("answering a stored message failed; minimal accept sent", extra={"error_type": type(err).__name__})
        bridge, conn = self.bridge, self.conn
        bridge.acks.end(self.key, None)
        if conn.busy and conn.seq == self.seq:
            code = ack_code(self.header, True)
            bridge.metrics.count(m.ACKS, self.tenant, code)
            conn.finish(self.tenant, minimal_ack(self.header, code).payload if should_send(self.header, code) else None)

    def _reply(self, payload: bytes, code: str) -> None:
        bridge = self.bridge
        bridge.acks.end(self.key, payload)
        bridge.metrics.count(m.ACKS, self.tenant, code)
        self.conn.finish(self.tenant, payload if should_send(self.header, code) else None)

    def _replayed(self, stored: bytes, how: str) -> None:
        """A copy was accepted before (this task's memory missed it): the original ACK, byte for byte."""
        bridge = self.bridge
        bridge.acks.end(self.key, stored)
        code = ack_code(self.header, True)
        bridge.metrics.count(m.DUPLICATES, self.tenant, how)
        bridge.metrics.count(m.ACKS, self.tenant, code)
        self.conn.finish(self.tenant, stored if should_send(self.header, code) else None)  # as silent as the first

    def looked_up(self, stored: bytes | None, error: str | None) -> None:
        try:
            if error is not None:  # cannot tell: commit; the FIFO dedup id still keeps one queue copy
                self.bridge.metrics.count(m.ACK_STORE_FAILED, self.tenant, f"read_{error}"[:64])
            if stored is not None:
                self._replayed(stored, "store")
            else:
                self.submit()
        except Exception as err:
            self._failed(err)

    def recorded(self, stored: bytes | None, error: str | None) -> None:
        """Write-through: the ACK store answered; the AA (ours or the one stored first) goes out now."""
        try:
            tenant, key = self.tenant, self.key
            if error is not None:
                # The message IS in the queue: AA regardless; only a later replay from another task is lost.
                self.bridge.metrics.count(m.ACK_STORE_FAILED, tenant, f"write_{error}"[:64])
                logger.warning("ack store write failed", extra={"tenant_id": tenant, "message_id": key,
                                                                 "reason": error})
            if stored is not None and stored != self.ack:
                # A copy was accepted before (a resend not looked up, or another task racing on it): the
                # ACK stored first is the one every copy gets.
                logger.info("ack already stored for this message; answering with it",
                            extra={"tenant_id": tenant, "message_id": key})
                self._replayed(stored, "write")
            else:
                self._reply(self.ack, ack_code(self.header, True))
        except Exception as err:
            self._stored_anyway(err)

    def answer(self, error: str | None) -> None:
        """The commit's outcome (the committer's ``done``): AA after the queue confirmed, else AE 207."""
        if error is None:
            try:
                self._accepted()
            except Exception as err:
                self._stored_anyway(err)
            return
        self._not_stored(error)

    def _accepted(self) -> None:
        bridge, header, key = self.bridge, self.header, self.key
        # The accept ACK's MSH-10 derives from the message id: a resend answered by another
        # worker or task gets the same control id (only MSH-7, the time, can differ there).
        ack = build_ack(header, ack_code(header, True), default_charset=self.source.default_charset,
                        control_id="A" + key[:19])
        durable = bridge.durable
        if durable is not None and not bridge.settings.ack_store_write_behind:
            # Write-through: store the ACK (batched) before it goes out, so any task can replay it.
            self.ack = ack.payload
            durable.record(AckRecord(self.ack_key, ack.payload, key), self.recorded)
            return
        self._reply(ack.payload, ack.code)
        if durable is not None:
            # Write-behind: answered already; the record follows and never touches the connection.
            bridge._record_behind(durable, AckRecord(self.ack_key, ack.payload, key), self.tenant)

    def _not_stored(self, error: str) -> None:
        """The queue did not take the message: AE 207, the one answer that means "resend"."""
        try:
            bridge, header, key, tenant = self.bridge, self.header, self.key, self.tenant
            bridge.metrics.count(m.COMMIT_FAILED, tenant, error[:64])
            logger.error("commit failed", extra={"tenant_id": tenant, "message_id": key, "reason": error})
            ack = build_ack(header, ack_code(header, False), AckError("207", "message not stored; resend"),
                            default_charset=self.source.default_charset)
            bridge.acks.end(key, None)
            bridge.metrics.count(m.ACKS, tenant, ack.code)
            self.conn.finish(tenant, ack.payload if should_send(header, ack.code) else None)
        except Exception as err:
            self._failed(err)

    def submit(self) -> None:
        bridge = self.bridge
        # The ACK deadline covers the store lookup too (the committer's sweep may honour a shortened
        # deadline late, but never later than a full one counted from here).
        timeout = max(0.05, bridge.settings.ack_timeout_s - (time.perf_counter() - self.started))
        committer = bridge.committer
        raw, item = self.raw, self.item
        claim_check = committer.claim_check
        if claim_check is not None and len(raw) * 4 // 3 + 4096 > claim_check.threshold:
            # Big body: the validated model, S3 first (claim check), then the queue.
            envelope = build_envelope(raw, item, batch=self.batch, collision=self.collision, message_id=self.key)
            bridge._spawn(bridge._prepare_then_submit(envelope, self.answer, timeout), self.conn, raw)
        else:
            body, group = envelope_json(raw, item, self.key, batch=self.batch, collision=self.collision,
                                        kind=self.kind)
            committer.submit_entry(committer.entry(body, group, self.key), self.answer, timeout)


class MllpBridge:
    def __init__(self, settings: BridgeSettings, tenants: list[TenantConfig], committer: GroupCommitter, *,
                 quarantine: QuarantineWriter | None = None, metrics: m.BridgeMetrics | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 tenant_loader: Callable[[], list[TenantConfig]] | None = None,
                 ack_store: DurableAcks | None = None) -> None:
        self.settings = settings
        self.directory = SourceDirectory(tenants)
        self.tenant_loader = tenant_loader
        self._next_tenant_refresh = time.monotonic() + settings.tenant_refresh_s
        self.committer = committer
        self.quarantine = quarantine
        self.metrics = metrics or m.BridgeMetrics(interval=settings.metrics_interval_s)
        self.ssl_context = ssl_context or server_context(settings.certfile, settings.keyfile,
                                                         client_ca=settings.client_ca,
                                                         require_client_cert=settings.require_client_cert)
        self.acks = AckCache()  # first level: this worker's memory
        self.durable = ack_store  # second level: shared by every worker and task, kept across restarts
        self.draining = False
        self.started = False
        self._conns: set[MllpConnection] = set()
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._listen: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._health: asyncio.Server | None = None
        self._stopped: asyncio.Event | None = None
        self.port = settings.port
        self.health_port = settings.health_port

    # ---- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        sock = socket.socket(socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.settings.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.settings.host, self.settings.port))
        sock.listen(1024)
        sock.setblocking(False)
        self._listen = sock
        self.port = sock.getsockname()[1]
        self._accept_task = loop.create_task(self._accept_loop())
        self._sweeper = loop.create_task(self._sweep_loop())
        if self.settings.health_port is not None:
            self._health = await asyncio.start_server(self._health_handler, self.settings.health_host,
                                                      self.settings.health_port,
                                                      reuse_port=self.settings.reuse_port or None)
            self.health_port = self._health.sockets[0].getsockname()[1]
        self.started = True
        self.note_certificate()
        logger.info("mllp bridge listening", extra={"port": self.port, "count": len(self.directory.tenants),
                                                    "status": "mtls" if self.settings.client_ca else "tls",
                                                    "event_loop": running_loop_name()})

    def note_certificate(self) -> None:
        """Days until the server certificate expires, as a metric (alarmed well before the date)."""
        try:
            self.metrics.gauges[m.CERT_DAYS_LEFT] = cert_days_left(self.settings.certfile)
        except (OSError, ValueError) as err:
            logger.warning("cannot read the server certificate's expiry", extra={"error_type": type(err).__name__})

    def ready(self) -> tuple[bool, str]:
        if not self.started:
            return False, "starting"
        if self.draining:
            return False, "draining"
        stats = self.committer.stats
        if stats.consecutive_failures >= self.settings.unhealthy_after_failures \
                and time.monotonic() - stats.last_failure_at < 30:
            return False, "queue failing"
        return True, "ready"

    async def drain(self) -> None:
        """Stop accepting, finish in-flight messages (ACK them), close connections, flush the queue."""
        if self.draining:
            return
        self.draining = True
        logger.info("mllp bridge draining", extra={"count": len(self._conns)})
        if self._accept_task:
            self._accept_task.cancel()
        if self._listen:
            self._listen.close()
        # Idle connections close now; a busy one closes right after its ACK is written.
        for conn in list(self._conns):
            conn.close_if_idle()
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while self._handlers and time.monotonic() < deadline:
            await asyncio.wait(list(self._handlers), timeout=max(0.01, deadline - time.monotonic()))
        for conn in list(self._conns):
            if conn.transport is not None:
                conn.transport.abort()
        for task in list(self._handlers):
            task.cancel()
        await self.committer.close()
        if self.durable is not None:
            await self._settle_ack_store(deadline)
        if self._sweeper:
            self._sweeper.cancel()
        self.metrics.flush()
        if self._health:
            self._health.close()
        if self._stopped:
            self._stopped.set()
        logger.info("mllp bridge stopped", extra={"processed": self.committer.stats.entries,
                                                  "failed": self.committer.stats.failed_entries})

    async def _settle_ack_store(self, deadline: float) -> None:
        """Flush pending ACK-store work before exit: a lookup answered now may still commit, a commit still
        records its ACK, and write-behind records wait in their batch. Bounded by what is left of the drain
        timeout, but never less than one store call's timeout (those writes were answered AA already)."""
        assert self.durable is not None
        budget = max(deadline - time.monotonic(), self.settings.ack_store_timeout_s + 0.5)
        try:
            async with asyncio.timeout(budget):
                for _ in range(5):
                    await self.durable.close()
                    await self.committer.close()
                    if self.durable.idle:
                        break
        except TimeoutError:
            logger.warning("ack store writes still pending at shutdown",
                           extra={"count": self.durable.backlog})
        self.durable.store.close()

    async def serve_forever(self, *, install_signals: bool = True,
                            reload_tls: Callable[[], None] | None = None) -> None:
        await self.start()
        settle_gc()
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, lambda: loop.create_task(self.drain()))
            if reload_tls is not None:
                def reload() -> None:
                    reload_tls()
                    self.note_certificate()
                    logger.info("tls material reloaded")

                loop.add_signal_handler(signal.SIGHUP, reload)
        assert self._stopped is not None
        await self._stopped.wait()

    # ---- accepting ----------------------------------------------------------------------------
    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listen is not None
        while not self.draining:
            try:
                sock, _addr = await loop.sock_accept(self._listen)
            except asyncio.CancelledError:
                raise
            except OSError:
                await asyncio.sleep(0.05)  # e.g. EMFILE: back off instead of spinning
                continue
            if len(self._handlers) >= self.settings.max_connections:
                self.metrics.count(m.CONNECTIONS_REFUSED, detail="max_connections")
                sock.close()
                continue
            task = loop.create_task(self._connection(sock))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    def _tune(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for opt, value in (("TCP_KEEPIDLE", self.settings.keepalive_idle_s),
                           ("TCP_KEEPINTVL", self.settings.keepalive_interval_s), ("TCP_KEEPCNT", 4)):
            if hasattr(socket, opt):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)

    async def _peek(self, sock: socket.socket) -> bytes:
        """Wait for the first bytes without consuming them (the TLS layer must still see them)."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = sock.fileno()
        loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await asyncio.wait_for(ready, self.settings.handshake_timeout_s)
        finally:
            loop.remove_reader(fd)
        return sock.recv(8, socket.MSG_PEEK)

    async def _connection(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._tune(sock)
            first = await self._peek(sock)
        except (OSError, TimeoutError):
            sock.close()
            self.metrics.count(m.TLS_HANDSHAKE_FAILED, detail="timeout")
            return
        if not first:
            sock.close()
            return
        if first[0] != TLS_HANDSHAKE_RECORD:
            # Plaintext MLLP (VT), HTTP probes, anything else: never read, never answered.
            self.metrics.count(m.PLAINTEXT_REFUSED)
            self.metrics.count(m.CONNECTIONS_REFUSED, detail="plaintext")
            logger.warning("plaintext connection refused", extra={"reason": "not_tls"})
            sock.close()
            return
        protocol = MllpConnection(self, self.settings.max_message_bytes)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=self.ssl_context,
                ssl_handshake_timeout=self.settings.handshake_timeout_s)
        except (OSError, TimeoutError, EOFError) as err:
            reason = classify_handshake_error(err)
            self.metrics.count(m.TLS_HANDSHAKE_FAILED, detail=reason)
            self.metrics.count(m.CONNECTIONS_REFUSED, detail=f"tls_{reason}")
            logger.warning("tls handshake failed", extra={"reason": reason})
            sock.close()
            return
        protocol.fingerprint = fingerprint(transport.get_extra_info("ssl_object").getpeercert(binary_form=True))
        if self.settings.require_known_client_cert and self.directory.bound_fingerprints \
                and protocol.fingerprint not in self.directory.bound_fingerprints:
            self.metrics.count(m.TLS_HANDSHAKE_FAILED, detail="unknown_client_cert")
            self.metrics.count(m.CONNECTIONS_REFUSED, detail="tls_unknown_client_cert")
            logger.warning("client certificate not bound to any source")
            transport.abort()
            return
        self._conns.add(protocol)
        self.metrics.open_connections += 1
        self.metrics.count(m.CONNECTIONS_OPENED)
        try:
            if self.draining:
                protocol.close_if_idle()
            await protocol.lost  # anything not ACKed when the peer goes away will be resent by the sender
        finally:
            self._conns.discard(protocol)
            self.metrics.open_connections -= 1
            transport.close()

    def too_large(self, conn: MllpConnection, err: FrameTooLarge) -> None:
        """AR 104 (value too long), the head kept in quarantine with the reason, then a counted close.

        Only the head was kept (the rest is not read): the sender must split the message or send it
        another way, so this is a refusal, never the "resend" AE 207.
        """
        header = fallback_header(err.head)
        route = self._guess_route(header, conn)
        tenant = route.tenant.tenant_id if route else self.fallback_tenant(conn)
        self._spawn(self._refuse(conn, err.head, header, tenant,
                                 AckError("104", f"message larger than {err.limit} bytes (first "
                                                 f"{len(err.head)} bytes kept)", ("MSH", 1, 0)),
                                 reject=True, kind=header.kind if header.message_type else "OVERSIZE", close=True),
                    conn, err.head)

    def handling_failed(self, conn: MllpConnection, raw: bytes, err: Exception) -> None:
        """A bug before the commit (nothing stored): quarantine the bytes and refuse them (AR 207), so a
        retrying sender does not resend into the same bug forever; AE 207 only if the bytes cannot be kept."""
        logger.error("frame handling failed", extra={"error_type": type(err).__name__})
        try:
            header = fallback_header(raw)
            kind = header.kind if header.message_type else "UNPARSEABLE"
        except Exception:
            header, kind = fallback_header(b""), "UNPARSEABLE"
        tenant = self.fallback_tenant(conn)
        self._spawn(self._refuse(conn, raw, header, tenant,
                                 AckError("207", f"message could not be processed ({type(err).__name__}); "
                                                 "kept for review, do not resend"),
                                 reject=True, kind=kind), conn, raw)

    # ---- one message --------------------------------------------------------------------------
    def fallback_tenant(self, conn: MllpConnection) -> str:
        tenant = self.directory.tenant_for_fingerprint(conn.fingerprint) or self.directory.only_tenant
        return tenant.tenant_id if tenant else "unrouted"

    def fallback_tenant_id(self) -> str:
        """Tenant for unroutable bytes on a connection without a bound certificate."""
        tenant = self.directory.only_tenant
        return tenant.tenant_id if tenant else "unrouted"

    def _guess_route(self, header: MshHeader, conn: MllpConnection) -> Route | None:
        try:
            return self.directory.resolve(header, conn.fingerprint)
        except Rejected:
            return None

    def internal_error(self, raw: bytes) -> bytes:
        """AE 207 "not stored; resend" (only for frames nothing was stored for)."""
        error = AckError("207", "message not stored; resend")
        try:
            header = fallback_header(raw)
        except Exception:  # the answer must go out whatever the bytes are
            return minimal_ack(None, "AE", error).payload
        return build_ack(header, ack_code(header, False), error).payload

    def _spawn(self, coro: Any, conn: MllpConnection | None = None, raw: bytes = b"") -> None:
        """Run the slow path of a frame (S3 quarantine, claim check, waiting on a first copy) as a task."""
        task = asyncio.get_running_loop().create_task(coro)
        self._side_tasks.add(task)
        seq = conn.seq if conn is not None else 0

        def settled(t: asyncio.Task[None]) -> None:
            self._side_tasks.discard(t)
            if t.cancelled() or t.exception() is None:
                return
            if conn is not None:
                self._unanswered(conn, seq, raw, t.exception())
            else:
                logger.error("background task failed", extra={"error_type": type(t.exception()).__name__})

        task.add_done_callback(settled)

    def _unanswered(self, conn: MllpConnection, seq: int, raw: bytes, err: BaseException | None) -> None:
        """A bug left a frame without an answer: answer AE 207 (the sender resends) rather than hang."""
        logger.error("frame handling failed", extra={"error_type": type(err).__name__ if err else "unknown"})
        if conn.busy and conn.seq == seq:
            conn.finish(self.fallback_tenant(conn), self.internal_error(raw))

    async def _refuse(self, conn: MllpConnection, raw: bytes, header: MshHeader, tenant: str, error: AckError, *,
                      reject: bool, kind: str, close: bool = False) -> None:
        """Quarantine first, then AR/AE; if the bytes cannot be kept, AE 207 so the sender retries.

        AR (CR in enhanced mode) for a refusal, AE with a code other than 207 for bad content: both
        mean "do not resend this as is"; the reason is in MSA-3/ERR and next to the quarantined bytes.
        """
        code = ack_code(header, False, rejected=reject)
        if self.quarantine is not None:
            try:
                await self.quarantine.put(raw, tenant_id=tenant, kind=kind, reason=f"{error.code}: {error.text}")
                self.metrics.count(m.QUARANTINED, tenant)
            except Exception as err:
                logger.error("quarantine write failed", extra={"error_type": type(err).__name__})
                code = ack_code(header, False)
                error = AckError("207", "message could not be stored; resend")
        ack = build_ack(header, code, error, default_charset="ASCII")
        self.metrics.count(m.ACKS, tenant, ack.code)
        logger.info("message refused", extra={"tenant_id": tenant, "ack_code": ack.code, "code": error.code,
                                              "reason": error.text})
        conn.finish(tenant, ack.payload if close or should_send(header, ack.code) else None, close=close)

    async def _join_inflight(self, conn: MllpConnection, waiting: asyncio.Future[bytes | None], raw: bytes,
                             header: MshHeader, tenant: str) -> None:
        """A resend that arrived while the first copy is still being committed gets the same answer."""
        replay = await waiting
        if replay is not None:
            self.metrics.count(m.DUPLICATES, tenant, "memory")
            self.metrics.count(m.ACKS, tenant, ack_code(header, True))
            conn.finish(tenant, replay if should_send(header, ack_code(header, True)) else None)
        else:  # the first copy was not stored: handle this one afresh
            self.handle(raw, conn)

    async def _prepare_then_submit(self, envelope: Envelope, done: Callable[[str | None], None],
                                   timeout: float | None = None) -> None:
        try:
            envelope = await self.committer.prepare(envelope)
        except Exception as err:
            done(f"ClaimCheck{type(err).__name__}"[:64])
            return
        self.committer.submit(envelope, done, timeout or self.settings.ack_timeout_s)

    def handle(self, raw: bytes, conn: MllpConnection) -> None:
        """Handle one frame; ``conn.finish`` is called exactly once, now or when its batch returns."""
        try:
            header = read_header(raw)
        except WireError as err:
            header = fallback_header(raw)
            tenant = self.fallback_tenant(conn)
            self.metrics.count(m.MESSAGES, tenant, "UNPARSEABLE")
            self._spawn(self._refuse(conn, raw, header, tenant, AckError(err.code, err.reason, ("MSH", 1, 0)),
                                     reject=True, kind="UNPARSEABLE"), conn, raw)
            return
        try:
            route = self.directory.resolve(header, conn.fingerprint)
            item = inspect(raw, header, route)
        except Rejected as rej:
            guessed = self._guess_route(header, conn)
            tenant = guessed.tenant.tenant_id if guessed else self.fallback_tenant(conn)
            self.metrics.count(m.MESSAGES, tenant, header.kind)
            self._spawn(self._refuse(conn, raw, header, tenant, rej.error, reject=rej.reject, kind=header.kind),
                        conn, raw)
            return
        tenant = route.tenant.tenant_id
        source = route.source
        kind = message_kind(header)
        self.metrics.count(m.MESSAGES, tenant, kind)
        key = message_id_for(tenant, source.source_id, header.control_id, item.sha256)
        replay = self.acks.get(key)
        if replay is not None:
            self.metrics.count(m.DUPLICATES, tenant, "memory")
            self.metrics.count(m.ACKS, tenant, ack_code(header, True))
            conn.finish(tenant, replay if should_send(header, ack_code(header, True)) else None)
            return
        waiting = self.acks.inflight(key)
        if waiting is not None:
            self._spawn(self._join_inflight(conn, waiting, raw, header, tenant), conn, raw)
            return
        self.acks.begin(key)
        step = _Frame(self, conn, raw, header, item, tenant, kind, key)
        if self.durable is not None and (conn.seq <= self.settings.ack_store_lookup_first
                                         or not self.settings.ack_store_conditional):  # last-writer-wins needs it
            # Unknown to this task's memory: maybe another task or an earlier run accepted it (batched read).
            self.durable.lookup(step.ack_key, step.looked_up)
        else:
            step.submit()

    def _record_behind(self, durable: DurableAcks, record: AckRecord, tenant: str) -> None:
        """Store an ACK that already went out (write-behind). Its outcome is only counted: the frame was
        answered, so nothing here may answer the connection again or end the in-flight entry again."""
        key = record.message_id

        def recorded_late(stored: bytes | None, error: str | None) -> None:
            if error is not None:
                # The message IS in the queue and was AA'd: only a later replay from another task is lost.
                self.metrics.count(m.ACK_STORE_FAILED, tenant, f"write_{error}"[:64])
                logger.warning("ack store write failed", extra={"tenant_id": tenant, "message_id": key,
                                                                 "reason": error})
            elif stored is not None and stored != record.ack:
                # Another copy (a racing task, or a resend not looked up) stored its ACK first; ours went out
                # already with the same MSH-10 and MSA-2. From now on this worker replays the stored one too.
                self.metrics.count(m.DUPLICATES, tenant, "write_late")
                self.acks.put(key, stored)
                logger.info("ack already stored for this message; answered before the write",
                            extra={"tenant_id": tenant, "message_id": key})

        try:
            durable.record(record, recorded_late)
        except Exception as err:  # a store bug: the AA stands, the missing record is counted
            self.metrics.count(m.ACK_STORE_FAILED, tenant, f"write_{type(err).__name__}"[:64])
            logger.error("ack store write not queued", extra={"error_type": type(err).__name__})

    # ---- housekeeping -------------------------------------------------------------------------
    async def refresh_tenants(self) -> bool:
        """Re-read tenant configs (off the event loop) and swap the source directory; False if that failed."""
        if self.tenant_loader is None:
            return False
        try:
            tenants = await asyncio.get_running_loop().run_in_executor(None, self.tenant_loader)
        except Exception as err:  # keep serving with the sources we have
            logger.warning("tenant refresh failed", extra={"error_type": type(err).__name__})
            return False
        tenants = [t for t in tenants if t.mllp_sources]
        if not tenants:
            logger.warning("tenant refresh found no tenant with MLLP sources; keeping the current ones")
            return False
        self.directory = SourceDirectory(tenants)
        logger.info("tenants refreshed", extra={"count": len(tenants)})
        return True

    async def _sweep_loop(self) -> None:
        """Read deadline for a started frame, idle timeout, periodic metrics flush, tenant refresh."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if self.tenant_loader is not None and now >= self._next_tenant_refresh:
                self._next_tenant_refresh = now + self.settings.tenant_refresh_s
                self._spawn(self.refresh_tenants())
            for conn in list(self._conns):
                if conn.transport is None:
                    continue
                if conn.busy:
                    # Safety net: every path answers within the ACK deadline; a frame stuck far past it
                    # means a bug, and the sender is better served by a closed connection than a hang.
                    if now - conn.busy_since > self.settings.ack_timeout_s + 20:
                        logger.error("frame unanswered past the ACK deadline; closing the connection")
                        self.metrics.count(m.DELIBERATE_CLOSES, detail="unanswered_deadline")
                        conn.transport.abort()
                    continue
                silent = now - conn.last_read
                if conn.decoder.in_frame and silent > self.settings.read_timeout_s:
                    self.metrics.count(m.FRAMING_ERRORS, detail="read_timeout")
                    logger.warning("frame read deadline passed", extra={"bytes": conn.decoder.pending_bytes})
                    conn.decoder.reset()
                    conn.transport.abort()
                elif silent > self.settings.idle_timeout_s or (self.draining and not conn.decoder.in_frame):
                    conn.close_if_idle()
            self.metrics.maybe_flush()

    async def _health_handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else "/"
            if path.startswith("/healthz") or path.startswith("/livez"):
                status, body = 200, {"status": "alive"}
            elif path.startswith("/readyz"):
                ok, why = self.ready()
                status, body = (200 if ok else 503), {"status": why}
            elif path.startswith("/metrics"):
                status, body = 200, self.metrics.snapshot()
            else:
                status, body = 404, {"status": "not found"}
            data = json.dumps(body).encode()
            reason = {200: "OK", 503: "Service Unavailable", 404: "Not Found"}[status]
            writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
            await writer.drain()
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            writer.close()
