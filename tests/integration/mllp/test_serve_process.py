"""`ehrbridge bridge serve` as a real process: `ehrbridge send` against it, then SIGTERM under load."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ehrbridge.cli.main import app
from ehrbridge.mllp.client import MllpClient, MllpClientError
from ehrbridge.mllp.tls import client_context

from .conftest import drain_queue, oru

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]


def acked_records(twin) -> set[str]:  # type: ignore[no-untyped-def]
    """MSH-10 of every message with an ACK record in the state table (resend replay across tasks)."""
    from ehrbridge.local.twin import local_client

    ddb = local_client("dynamodb", twin.endpoint)
    items = ddb.scan(TableName=twin.tables["state"])["Items"]
    return {i["sk"]["S"].split("#")[0] for i in items if i["pk"]["S"].startswith("mllp-ack#")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"bridge exited early: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("bridge never became ready")


def sigterm_under_load(proc: subprocess.Popen, port: int, pki, *, senders: int, until: int,  # type: ignore[no-untyped-def,type-arg]
                       prefix: str) -> tuple[list[str], list[str]]:
    """Drive `senders` TLS connections until `until` messages are AA'd, SIGTERM the bridge, wait for it.

    Returns the control ids that got AA and those that got anything else.
    """
    acked: list[str] = []
    refused: list[str] = []

    async def sender(worker: int) -> None:
        try:
            async with MllpClient("127.0.0.1", port, ssl_context=client_context(pki.ca.cert),
                                  server_hostname="localhost", timeout=20) as c:
                for n in range(100000):
                    ack = await c.send(oru(n, f"{prefix}{worker}N{n}"))
                    (acked if ack.code == "AA" else refused).append(ack.control_id)
        except (MllpClientError, ConnectionError, ssl.SSLError, OSError):
            return  # closed by the draining bridge

    async def load() -> None:
        tasks = [asyncio.create_task(sender(w)) for w in range(senders)]
        while len(acked) < until:
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)

    asyncio.run(load())
    assert proc.wait(timeout=30) == 0
    return acked, refused


def test_send_cli_then_sigterm_under_load(twin, pki, tmp_path, event_loop_impl) -> None:  # type: ignore[no-untyped-def]
    port, health = free_port(), free_port()
    env = {**os.environ, **twin.env, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ehrbridge.cli.main", "bridge", "serve", "--cert", str(pki.server.cert),
         "--key", str(pki.server.key), "--tenant", str(REPO / "events" / "tenants" / "demo-health.yaml"),
         "--host", "127.0.0.1", "--port", str(port), "--health-port", str(health), "--drain-timeout", "15"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(health, proc)
        # The operator client prints one line per ACK and exits 0 when all were accepted.
        sample = tmp_path / "two.hl7"
        er = oru(3, "SEND3").replace(b"|P|2.5.1\r", b"|P|2.5.1|||ER|NE\r")  # enhanced mode: ACK on error only
        sample.write_bytes(oru(1, "SEND1") + oru(2, "SEND2").replace(b"\r", b"\n") + er)
        result = CliRunner().invoke(app, ["send", str(sample), "--host", "127.0.0.1", "--port", str(port),
                                          "--ca", str(pki.ca.cert), "--server-name", "localhost",
                                          "--silent-wait", "0.5"])
        assert result.exit_code == 0, result.output
        assert "MSA-2=SEND1\tAA" in result.output and "MSA-2=SEND2\tAA" in result.output
        assert "accepted per MSH-15=ER" in result.output
        assert [q["attributes"]["msh10"] for q in drain_queue(twin)] == ["SEND1", "SEND2", "SEND3"]
        stranger = tmp_path / "stranger.hl7"
        stranger.write_bytes(oru(4, "SEND4").replace(b"DEMOLAB", b"NOBODY"))
        refused = CliRunner().invoke(app, ["send", str(stranger), "--host", "127.0.0.1", "--port", str(port),
                                           "--ca", str(pki.ca.cert), "--server-name", "localhost"])
        assert refused.exit_code == 1 and "MSA-2=SEND4\tAR" in refused.output

        acked, refused = sigterm_under_load(proc, port, pki, senders=10, until=100, prefix="T")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    queued = [q["attributes"]["msh10"] for q in drain_queue(twin)]
    assert len(acked) >= 100 and set(acked) <= set(queued)  # every AA'd message is in the queue
    # Write-behind (the default) stored the ACKs after answering; the drain flushed the last ones.
    assert set(acked) <= acked_records(twin)
    assert refused == []
    lines = [json.loads(line) for line in proc.stdout.read().splitlines() if line.startswith("{")]
    assert any(line.get("message") == "mllp bridge listening" and line.get("event_loop") == event_loop_impl
               for line in lines)  # EHRBRIDGE_MLLP_LOOP chose the loop
    assert any(line.get("message") == "mllp bridge draining" for line in lines)
    assert any(line.get("message") == "mllp bridge stopped" for line in lines)


def test_two_workers_share_the_port_and_drain_on_sigterm(twin, pki) -> None:  # type: ignore[no-untyped-def]
    port, health = free_port(), free_port()
    env = {**os.environ, **twin.env, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ehrbridge.cli.main", "bridge", "serve", "--cert", str(pki.server.cert),
         "--key", str(pki.server.key), "--tenant", str(REPO / "events" / "tenants" / "demo-health.yaml"),
         "--host", "127.0.0.1", "--port", str(port), "--health-port", str(health), "--workers", "2",
         "--drain-timeout", "15", "--ack-store-write-through"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(health, proc)
        acked, refused = sigterm_under_load(proc, port, pki, senders=12, until=120, prefix="W")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    queued = [q["attributes"]["msh10"] for q in drain_queue(twin)]
    assert refused == []
    assert set(acked) <= set(queued) and len(queued) == len(set(queued))
    assert set(acked) <= acked_records(twin)  # write-through: stored before each AA
    stopped = [line for line in proc.stdout.read().splitlines() if '"mllp bridge stopped"' in line]
    assert len(stopped) == 2  # both workers drained


def test_an_unavailable_event_loop_is_a_one_line_error(twin, pki, monkeypatch, event_loop_impl) -> None:  # type: ignore[no-untyped-def]
    if event_loop_impl != "asyncio":
        pytest.skip("checked once: the CLI refuses before any loop runs")
    monkeypatch.setattr("ehrbridge.mllp.loops.uvloop_installed", lambda: False)
    for name, var in twin.env.items():
        monkeypatch.setenv(name, var)
    result = CliRunner().invoke(app, ["bridge", "serve", "--cert", str(pki.server.cert), "--key",
                                      str(pki.server.key), "--tenant",
                                      str(REPO / "events" / "tenants" / "demo-health.yaml"), "--loop", "uvloop"])
    assert result.exit_code == 2
    assert "uvloop is not installed" in result.output and "Traceback" not in result.output
