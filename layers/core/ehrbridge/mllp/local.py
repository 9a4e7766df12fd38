"""Local demo helper: run the real bridge over TLS on 127.0.0.1 and feed it HL7 files."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.hl7.wire import split_segments
from ehrbridge.mllp.app import AwsTargets, build_bridge
from ehrbridge.mllp.certs import make_test_pki
from ehrbridge.mllp.client import MllpClient
from ehrbridge.mllp.server import BridgeSettings
from ehrbridge.mllp.tls import client_context


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


async def feed_files_async(files: list[Path], *, tenant: TenantConfig, queue_url: str,
                           archive_bucket: str | None = None, quarantine_bucket: str | None = None,
                           quarantine_queue_url: str | None = None) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="ehrbridge-tls-") as tmp:
        pki = make_test_pki(Path(tmp))
        settings = BridgeSettings(certfile=pki.server.cert, keyfile=pki.server.key, host="127.0.0.1", port=0,
                                  health_port=None, drain_timeout_s=10, metrics_interval_s=3600)
        bridge = build_bridge(settings, [tenant], AwsTargets(queue_url, archive_bucket, quarantine_bucket,
                                                             quarantine_queue_url))
        await bridge.start()
        codes: list[str] = []
        try:
            async with MllpClient("127.0.0.1", bridge.port, ssl_context=client_context(pki.ca.cert),
                                  server_hostname="localhost") as client:
                for path in files:
                    for message in read_messages(path):
                        codes.append((await client.send(message)).code)
        finally:
            await bridge.drain()
            bridge.committer.sink.close()  # type: ignore[attr-defined]
        return codes


def feed_files(files: list[Path], *, tenant: TenantConfig, queue_url: str, archive_bucket: str | None = None,
               quarantine_bucket: str | None = None, quarantine_queue_url: str | None = None) -> list[str]:
    """Start the bridge in-process on 127.0.0.1 over TLS (throwaway CA), send every message in ``files``
    in order on one connection, drain and stop. Returns the MSA-1 code of each ACK, in order.
    """
    return asyncio.run(feed_files_async(files, tenant=tenant, queue_url=queue_url, archive_bucket=archive_bucket,
                                        quarantine_bucket=quarantine_bucket,
                                        quarantine_queue_url=quarantine_queue_url))
