"""Local demo helper: run the real bridge over TLS on 127.0.0.1 and feed it HL7 files."""

from __future__ import annotations

import asyncio
import hashlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.hl7.wire import WireError, read_msh, split_segments
from ehrbridge.mllp.ack import should_send
from ehrbridge.mllp.app import AwsTargets, build_bridge
from ehrbridge.mllp.certs import make_test_pki
from ehrbridge.mllp.client import MllpClient, parse_ack
from ehrbridge.mllp.message import Rejected, message_id_for, msh_head
from ehrbridge.mllp.metrics import ACKS, BridgeMetrics
from ehrbridge.mllp.server import BridgeSettings, MllpBridge, quarantine_message_id
from ehrbridge.mllp.tls import client_context

_CODES = ("AA", "AE", "AR", "CA", "CE", "CR")


def read_messages(path: Path) -> list[bytes]:
    """The messages in an HL7 file: one per MSH (a FHS/BHS batch file is sent as one frame).

    Segment ends are normalised to CR for the wire; bytes are otherwise untouched.
    """
    data = path.read_bytes()
    segments = split_segments(data)
    if segments and segments[0][:3] in (b"FHS", b"BHS"):
        return [b"\r".join(segments) + b"\r"]
    messages: list[list[bytes]] = []
    for segment in segments:
        if segment.startswith(b"MSH") or not messages:
            messages.append([])
        messages[-1].append(segment)
    return [b"\r".join(m) + b"\r" for m in messages]


@dataclass(frozen=True)
class FedMessage:
    """What happened to one message the local feeder sent."""

    file: str
    index: int  # 1-based position in its file
    code: str  # the bridge's decision: AA/AE/AR/CA/CE/CR (also when MSH-15 said not to send it)
    control_id: str  # MSH-10 as sent
    sent_back: bool  # an ACK actually came back (enhanced mode may ask for none)
    correlation_id: str | None  # of the envelope on hl7-inbound (accepted) or of the quarantine notice


def _decided(bridge: MllpBridge) -> dict[str, int]:
    return {code: bridge.metrics.total(ACKS, code) for code in _CODES}


async def _feed_one(client: MllpClient, bridge: MllpBridge, message: bytes) -> tuple[str, bool]:
    """Send one message; return (the bridge's ACK code, whether an ACK came back)."""
    try:
        header = read_msh(message)
    except WireError:
        header = None
    if header is None or header.field(15).strip().upper() not in ("NE", "ER", "SU"):
        return (await client.send(message)).code, True
    # Enhanced mode may mean no ACK comes back: ask the in-process bridge what it decided instead of waiting.
    before = _decided(bridge)
    await client.write(message)
    for _ in range(6000):
        after = _decided(bridge)
        if sum(after.values()) > sum(before.values()):
            break
        await asyncio.sleep(0.005)
    else:
        raise TimeoutError("the bridge did not answer in 30 s")
    code = next(c for c in _CODES if after[c] > before[c])
    if should_send(header, code):
        return parse_ack(await client.read_ack()).code, True
    return code, False


def _correlation_id(bridge: MllpBridge, message: bytes, code: str) -> str | None:
    """The id the pipeline tracks the message by (the same derivations the bridge uses)."""
    try:
        header = read_msh(msh_head(message))
        route = bridge.directory.resolve(header, None)
        if code in ("AA", "CA"):
            return message_id_for(route.tenant.tenant_id, route.source.source_id, header.control_id,
                                  hashlib.sha256(message).hexdigest())
        tenant = route.tenant.tenant_id
    except (WireError, Rejected):
        tenant = bridge.fallback_tenant_id()
    return quarantine_message_id(tenant, message) if code in ("AR", "CR", "AE", "CE") else None


async def feed_files_detailed_async(files: list[Path], *, tenant: TenantConfig, queue_url: str,
                                    archive_bucket: str | None = None, quarantine_bucket: str | None = None,
                                    quarantine_queue_url: str | None = None) -> list[FedMessage]:
    with tempfile.TemporaryDirectory(prefix="ehrbridge-tls-") as tmp:
        pki = make_test_pki(Path(tmp))
        settings = BridgeSettings(certfile=pki.server.cert, keyfile=pki.server.key, host="127.0.0.1", port=0,
                                  health_port=None, drain_timeout_s=10, metrics_interval_s=3600)
        bridge = build_bridge(settings, [tenant], AwsTargets(queue_url, archive_bucket, quarantine_bucket,
                                                             quarantine_queue_url),
                              metrics=BridgeMetrics(interval=3600, stream=io.StringIO()))
        await bridge.start()
        results: list[FedMessage] = []
        try:
            async with MllpClient("127.0.0.1", bridge.port, ssl_context=client_context(pki.ca.cert),
                                  server_hostname="localhost") as client:
                for path in files:
                    for index, message in enumerate(read_messages(path), start=1):
                        code, sent_back = await _feed_one(client, bridge, message)
                        try:
                            control_id = read_msh(message).control_id
                        except WireError:
                            control_id = ""
                        results.append(FedMessage(path.name, index, code, control_id, sent_back,
                                                  _correlation_id(bridge, message, code)))
        finally:
            await bridge.drain()
            bridge.committer.sink.close()  # type: ignore[attr-defined]
        return results


def feed_files_detailed(files: list[Path], *, tenant: TenantConfig, queue_url: str,
                        archive_bucket: str | None = None, quarantine_bucket: str | None = None,
                        quarantine_queue_url: str | None = None) -> list[FedMessage]:
    """Like ``feed_files``, with each message's control id, whether an ACK came back, and the
    correlation id of its envelope (accepted) or quarantine notice (refused), for end-to-end accounting.
    """
    return asyncio.run(feed_files_detailed_async(files, tenant=tenant, queue_url=queue_url,
                                                 archive_bucket=archive_bucket, quarantine_bucket=quarantine_bucket,
                                                 quarantine_queue_url=quarantine_queue_url))


def feed_files(files: list[Path], *, tenant: TenantConfig, queue_url: str, archive_bucket: str | None = None,
               quarantine_bucket: str | None = None, quarantine_queue_url: str | None = None) -> list[str]:
    """Start the bridge in-process on 127.0.0.1 over TLS (throwaway CA), send every message in ``files``
    in order on one connection, drain and stop. Returns each message's ACK code (MSA-1) in order; with
    enhanced-mode MSH-15 asking for no ACK, the code the bridge decided (it is then not sent).
    """
    return [r.code for r in feed_files_detailed(files, tenant=tenant, queue_url=queue_url,
                                                archive_bucket=archive_bucket, quarantine_bucket=quarantine_bucket,
                                                quarantine_queue_url=quarantine_queue_url)]
