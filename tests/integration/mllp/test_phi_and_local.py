"""No PHI in the bridge's logs or metrics; the local demo feeder over TLS."""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path

import pytest

from ehrbridge.mllp.client import MllpClient
from ehrbridge.mllp.local import feed_files, read_messages
from ehrbridge.mllp.tls import client_context

from .conftest import drain_queue, oru, running, settings_for, tenant

pytestmark = pytest.mark.integration
PHI = ("DOE", "JANE", "MRN1", "19800101", "SMITHERS", "555-12-3456")


def test_no_phi_reaches_logs_or_metrics(twin, pki, capsys, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    garbage = b"PID|1||555-12-3456^^^SSA||SMITHERS^WAYLON||19800101\r"
    unknown = oru(1).replace(b"DEMOLAB", b"OTHERLAB")

    async def run() -> str:
        async with running(settings_for(pki), twin) as bridge:
            bridge.metrics.stream = io.StringIO()
            async with MllpClient("127.0.0.1", bridge.port, ssl_context=client_context(pki.ca.cert),
                                  server_hostname="localhost") as c:
                await c.send(oru(1))
                await c.send(garbage)
                await c.send(unknown)
            bridge.metrics.flush()
            return bridge.metrics.stream.getvalue() + str(bridge.metrics.snapshot())

    emitted = asyncio.run(run())
    captured = capsys.readouterr()
    everything = captured.out + captured.err + caplog.text + emitted
    assert "MllpAcks" in emitted  # metrics were produced
    for value in PHI:
        assert value not in everything, value


def test_feed_files_for_the_demo(twin, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    one = tmp_path / "one.hl7"
    one.write_bytes(oru(1) + oru(2).replace(b"\r", b"\r\n"))
    bad = tmp_path / "bad.hl7"
    bad.write_bytes(oru(3).replace(b"DEMOLAB", b"NOBODY"))
    assert len(read_messages(one)) == 2
    codes = feed_files([one, bad], tenant=tenant(), queue_url=twin.queues["hl7-inbound"],
                       archive_bucket=twin.buckets["archive"], quarantine_bucket=twin.buckets["quarantine"],
                       quarantine_queue_url=twin.queues["quarantine"])
    assert codes == ["AA", "AA", "AR"]
    assert [q["attributes"]["msh10"] for q in drain_queue(twin)] == ["CID1", "CID2"]
    assert len(drain_queue(twin, "quarantine")) == 1


def test_demo_samples_through_the_bridge_with_correlation_ids(twin) -> None:  # type: ignore[no-untyped-def]
    from ehrbridge.contracts.tenant import TenantConfig
    from ehrbridge.mllp.local import feed_files_detailed

    repo = Path(__file__).resolve().parents[3]
    tenant_config = TenantConfig.from_yaml(repo / "events" / "tenants" / "demo-health.yaml")
    files = sorted((repo / "events" / "hl7").glob("*.hl7"))
    assert files
    results = feed_files_detailed(files, tenant=tenant_config, queue_url=twin.queues["hl7-inbound"],
                                  archive_bucket=twin.buckets["archive"],
                                  quarantine_bucket=twin.buckets["quarantine"],
                                  quarantine_queue_url=twin.queues["quarantine"])
    assert len(results) == sum(len(read_messages(f)) for f in files)
    queued = {q["correlation_id"] for q in drain_queue(twin)}
    quarantined = {q["correlation_id"] for q in drain_queue(twin, "quarantine")}
    for r in results:
        assert r.code in ("AA", "CA", "AR", "CR", "AE", "CE"), r
        assert r.correlation_id in (queued if r.code in ("AA", "CA") else quarantined), r
    # MSH-15=ER (the VXU sample) gets no ACK on success, yet the bridge's decision is reported.
    [vxu] = [r for r in results if r.file == "vxu_v04_hepb.hl7"]
    assert vxu.code == "CA" and not vxu.sent_back
    assert all(r.sent_back for r in results if r.file != "vxu_v04_hepb.hl7")
