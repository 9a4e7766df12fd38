"""The bridge over real TLS sockets on 127.0.0.1, committing to the moto SQS of the twin."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import urllib.request

import pytest

from ehrbridge.local.twin import local_client
from ehrbridge.mllp import metrics as m
from ehrbridge.mllp.app import build_bridge
from ehrbridge.mllp.client import MllpClient, MllpClientError, parse_ack
from ehrbridge.mllp.commit import Entry, SqsSink
from ehrbridge.mllp.loops import running_loop_name
from ehrbridge.mllp.tls import client_context

from .conftest import drain_queue, oru, running, settings_for, targets, tenant

pytestmark = pytest.mark.integration


def ctx(pki, **kw):  # type: ignore[no-untyped-def]
    return client_context(pki.ca.cert, **kw)


def client(bridge, pki, **kw):  # type: ignore[no-untyped-def]
    return MllpClient("127.0.0.1", bridge.port, ssl_context=ctx(pki, **kw), server_hostname="localhost", timeout=10)


class GatedSink:
    """Holds every batch until released, then forwards to the real SQS sink."""

    def __init__(self, inner: SqsSink) -> None:
        self.inner = inner
        self.gate = asyncio.Event()

    async def send_batch(self, entries: list[Entry]) -> dict[str, str]:
        await self.gate.wait()
        return await self.inner.send_batch(entries)

    def close(self) -> None:
        self.inner.close()


def test_aa_only_after_the_message_is_in_the_queue(twin, pki, event_loop_impl) -> None:  # type: ignore[no-untyped-def]
    async def run() -> None:
        assert running_loop_name() == event_loop_impl  # the bridge below runs on the loop under test
        async with running(settings_for(pki), twin) as bridge:
            gated = GatedSink(bridge.committer.sink)  # type: ignore[arg-type]
            bridge.committer.sink = gated
            async with client(bridge, pki) as c:
                pending = asyncio.create_task(c.send(oru(1)))
                await asyncio.sleep(0.5)
                # The queue has not confirmed anything yet: no ACK may have gone out, nothing queued.
                assert not pending.done()
                assert drain_queue(twin) == []
                gated.gate.set()
                ack = await pending
                assert ack.code == "AA" and ack.control_id == "CID1"
                assert [q["attributes"]["msh10"] for q in drain_queue(twin)] == ["CID1"]
                # Every later AA: the message is already in the queue when the ACK arrives.
                for n in range(2, 6):
                    assert (await c.send(oru(n))).code == "AA"
                    queued = drain_queue(twin)
                    assert [q["attributes"]["msh10"] for q in queued] == [f"CID{n}"]
            bridge.committer.sink = gated.inner
    asyncio.run(run())


def test_envelope_contract(twin, pki) -> None:  # type: ignore[no-untyped-def]
    async def run() -> None:
        async with running(settings_for(pki), twin) as bridge, client(bridge, pki) as c:
            assert (await c.send(oru(7))).code == "AA"
    asyncio.run(run())
    [env] = drain_queue(twin)
    assert env["source"] == "hl7v2" and env["kind"] == "ORU^R01" and env["tenant_id"] == "demo-health"
    assert env["body_encoding"] == "base64" and base64.b64decode(env["body"]) == oru(7)
    assert env["attributes"] == {"source_id": "demo-lab", "msh10": "CID7", "charset": "ASCII", "version": "2.5.1"}
    assert env["patient_key"].startswith("pk-") and "MRN7" not in json.dumps(env["patient_key"])
    from ehrbridge.contracts.envelope import patient_key_for
    assert env["patient_key"] == patient_key_for("demo-health", "MRN", "MRN7")


def test_queue_failure_gives_ae_with_err_and_nothing_queued(twin, pki) -> None:  # type: ignore[no-untyped-def]
    async def run() -> None:
        async with running(settings_for(pki), twin) as bridge:
            # A queue that does not exist: SendMessageBatch fails for real (moto answers an error).
            broken = SqsSink(twin.queues["hl7-inbound"].replace("hl7-inbound", "no-such-queue"))
            real, bridge.committer.sink = bridge.committer.sink, broken
            async with client(bridge, pki) as c:
                ack = await c.send(oru(1))
                assert ack.code == "AE" and ack.control_id == "CID1"
                assert b"\rERR||" in ack.raw and b"207^Application internal error^HL70357" in ack.raw
                # The connection stays usable; once the queue is back the resend is accepted.
                bridge.committer.sink = real
                assert (await c.send(oru(1))).code == "AA"
            broken.close()
            assert bridge.metrics.total(m.COMMIT_FAILED) == 1
    asyncio.run(run())
    assert [q["attributes"]["msh10"] for q in drain_queue(twin)] == ["CID1"]


def test_queue_failure_alone_leaves_queue_empty(twin, pki) -> None:  # type: ignore[no-untyped-def]
    class FailingSink:
        async def send_batch(self, entries):  # type: ignore[no-untyped-def]
            return {e.id: "ServiceUnavailable" for e in entries}

        def close(self) -> None:
            pass

    async def run() -> None:
        async with running(settings_for(pki), twin) as bridge:
            real, bridge.committer.sink = bridge.committer.sink, FailingSink()
            async with client(bridge, pki) as c:
                for n in range(3):
                    assert (await c.send(oru(n))).code == "AE"
            bridge.committer.sink = real
    asyncio.run(run())
    assert drain_queue(twin) == []


def test_garbage_gets_ar_and_is_quarantined_with_reason(twin, pki) -> None:  # type: ignore[no-untyped-def]
    garbage = b"\x00\x01this is not HL7 at all\xff"
    bad_delims = b"MSH|ABC|DEMOLAB|F|R|H|2024||ORU^R01|BAD1|P|2.5\rPID|1\r"
    async def run() -> list:  # type: ignore[type-arg]
        async with running(settings_for(pki), twin) as bridge, client(bridge, pki) as c:
            return [await c.send(garbage), await c.send(bad_delims), await c.send(oru(1))]
    first, second, third = asyncio.run(run())
    assert first.code == "AR" and b"ERR||MSH^1^0|100" in first.raw
    assert second.code == "AR" and b"MSH-2" in second.raw
    assert third.code == "AA"  # the connection survives bad input
    s3 = local_client("s3", twin.endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=twin.buckets["quarantine"]).get("Contents", [])]
    reasons = [json.loads(s3.get_object(Bucket=twin.buckets["quarantine"], Key=k)["Body"].read())
               for k in keys if k.endswith(".reason.json")]
    bodies = {s3.get_object(Bucket=twin.buckets["quarantine"], Key=k)["Body"].read() for k in keys
              if k.endswith(".body")}
    assert bodies == {garbage, bad_delims}
    texts = " ".join(r["reasons"][0] for r in reasons)
    assert "no MSH segment" in texts and "invalid encoding characters in MSH-2" in texts
    assert all(r["stage"] == "mllp_bridge" and r["tenant_id"] == "demo-health" for r in reasons)
    # Only the valid message reached the inbound queue; the quarantine queue has a notice per refusal.
    assert [q["attributes"]["msh10"] for q in drain_queue(twin)] == ["CID1"]
    assert len(drain_queue(twin, "quarantine")) == 2


def test_unknown_sender_is_rejected(twin, pki) -> None:  # type: ignore[no-untyped-def]
    stranger = oru(1).replace(b"DEMOLAB", b"STRANGER")
    async def run():  # type: ignore[no-untyped-def]
        async with running(settings_for(pki), twin) as bridge, client(bridge, pki) as c:
            return await c.send(stranger)
    ack = asyncio.run(run())
    assert ack.code == "AR" and b"103^Table value not found" in ack.raw and b"MSH^1^3" in ack.raw
    assert drain_queue(twin) == []


def test_plaintext_and_tls11_are_refused_and_counted(twin, pki) -> None:  # type: ignore[no-untyped-def]
    async def run() -> None:
        async with running(settings_for(pki), twin) as bridge:
            reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
            writer.write(b"\x0b" + oru(1) + b"\x1c\r")
            await writer.drain()
            # Closed (FIN, or RST because our bytes were never read), never answered.
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()

            old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            old.check_hostname = False
            old.verify_mode = ssl.CERT_NONE
            old.set_ciphers("DEFAULT:@SECLEVEL=0")
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                await asyncio.wait_for(asyncio.open_connection("127.0.0.1", bridge.port, ssl=old), 10)
            for _ in range(100):
                if bridge.metrics.total(m.TLS_HANDSHAKE_FAILED):
                    break
                await asyncio.sleep(0.02)
            assert bridge.metrics.total(m.PLAINTEXT_REFUSED) == 1
            assert bridge.metrics.total(m.TLS_HANDSHAKE_FAILED, "protocol_version") == 1
            async with client(bridge, pki) as c:  # TLS 1.2 and 1.3 still work
                assert (await c.send(oru(2))).code == "AA"
            tls12 = ctx(pki)
            tls12.maximum_version = ssl.TLSVersion.TLSv1_2
            async with MllpClient("127.0.0.1", bridge.port, ssl_context=tls12, server_hostname="localhost") as c:
                assert (await c.send(oru(3))).code == "AA"
    asyncio.run(run())
    assert [q["attributes"]["msh10"] for q in drain_queue(twin)] == ["CID2", "CID3"]


def test_silent_and_stalled_handshakes_are_closed_at_the_deadline(twin, pki) -> None:  # type: ignore[no-untyped-def]
    """A peer that sends nothing, or starts a TLS record and stalls, is closed after the handshake deadline
    and counted; the listener keeps serving (on both event loops: their handshake timers differ)."""
    async def run() -> None:
        async with running(settings_for(pki, handshake_timeout_s=0.5), twin) as bridge:
            silent = await asyncio.open_connection("127.0.0.1", bridge.port)
            stalled = await asyncio.open_connection("127.0.0.1", bridge.port)
            stalled[1].write(b"\x16\x03\x01\x00")  # the start of a ClientHello record, then nothing
            await stalled[1].drain()
            for reader, writer in (silent, stalled):
                with contextlib.suppress(ConnectionResetError):
                    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the bridge
                writer.close()
            for _ in range(100):
                if bridge.metrics.total(m.TLS_HANDSHAKE_FAILED, "timeout") >= 2:
                    break
                await asyncio.sleep(0.02)
            assert bridge.metrics.total(m.TLS_HANDSHAKE_FAILED, "timeout") == 2
            async with client(bridge, pki) as c:
                assert (await c.send(oru(1))).code == "AA"
    asyncio.run(run())
    assert [q["attributes"]["msh10"] for q in drain_queue(twin)] == ["CID1"]


def test_mutual_tls_refuses_wrong_or_missing_client_cert(twin, pki, other_pki) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(pki, client_ca=pki.ca.cert, require_client_cert=True)

    async def refused(bridge, **kw) -> None:  # type: ignore[no-untyped-def]
        with pytest.raises((ssl.SSLError, ConnectionError, MllpClientError, OSError)):
            async with client(bridge, pki, **kw) as c:
                await c.send(oru(9))

    async def run() -> None:
        async with running(settings, twin, [tenant(pki.client.fingerprint)]) as bridge:
            await refused(bridge, certfile=other_pki.client.cert, keyfile=other_pki.client.key)
            await refused(bridge)
            async with client(bridge, pki, certfile=pki.client.cert, keyfile=pki.client.key) as c:
                assert (await c.send(oru(1))).code == "AA"
                # The certificate is bound to DEMOLAB: it may not send as another configured source.
                latin = oru(2).replace(b"DEMOLAB", b"LATINLAB")
                ack = await c.send(latin)
                assert ack.code == "AR" and b"client certificate" in ack.raw
            assert bridge.metrics.total(m.TLS_HANDSHAKE_FAILED, "client_certificate") == 2
    asyncio.run(run())
    assert [q["attributes"]["msh10"] for q in drain_queue(twin)] == ["CID1"]


def test_bound_source_needs_its_certificate(twin, pki) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(pki, client_ca=pki.ca.cert, require_client_cert=False)

    async def run():  # type: ignore[no-untyped-def]
        async with running(settings, twin, [tenant(pki.client.fingerprint)]) as bridge, client(bridge, pki) as c:
            return await c.send(oru(1))
    ack = asyncio.run(run())
    assert ack.code == "AR"
    assert drain_queue(twin) == []


def test_resend_gets_the_same_ack_and_one_queue_message(twin, pki) -> None:  # type: ignore[no-untyped-def]
    async def run():  # type: ignore[no-untyped-def]
        async with running(settings_for(pki), twin) as bridge:
            async with client(bridge, pki) as c:
                first = await c.send_raw(oru(1))
            async with client(bridge, pki) as c:  # the sender reconnects and resends
                second = await c.send_raw(oru(1))
                # Same MSH-10 but different bytes is a different message (and flagged).
                changed = await c.send(oru(1).replace(b"13.1", b"14.1"))
            return first, second, changed, bridge.metrics.total(m.DUPLICATES)
    first, second, changed, duplicates = asyncio.run(run())
    assert first == second and parse_ack(first).code == "AA"
    assert changed.code == "AA" and duplicates == 1
    queued = drain_queue(twin)
    assert [q["attributes"]["msh10"] for q in queued] == ["CID1", "CID1"]
    # The accept ACK's MSH-10 derives from the message id (same from any worker or task).
    assert first.split(b"\r")[0].split(b"|")[9] == ("A" + queued[0]["message_id"][:19]).encode()
    assert "msh10_collision" not in queued[0]["attributes"] and queued[1]["attributes"]["msh10_collision"] == "true"


def test_framing_tolerance(twin, pki) -> None:  # type: ignore[no-untyped-def]
    lf = oru(3).replace(b"\r", b"\n")
    crlf = oru(4).replace(b"\r", b"\r\n")
    async def run():  # type: ignore[no-untyped-def]
        async with running(settings_for(pki), twin) as bridge, client(bridge, pki) as c:
            w = c._writer
            # Junk and NULs before the start byte, a frame split byte by byte, no CR after FS.
            w.write(b"\x00\x00noise")
            for byte in b"\x0b" + oru(1) + b"\x1c":
                w.write(bytes([byte]))
                await w.drain()
            # Two frames (LF and CRLF segment ends) in one write.
            w.write(b"\x0b" + oru(2) + b"\x1c\r" + b"\x0b" + lf + b"\x1c\r\x0b" + crlf + b"\x1c\r")
            await w.drain()
            acks = [parse_ack(await c.read_ack()) for _ in range(4)]
            return acks, bridge.metrics.total(m.FRAMING_ERRORS, "junk_skipped")
    acks, junk = asyncio.run(run())
    assert [(a.code, a.control_id) for a in acks] == [("AA", "CID1"), ("AA", "CID2"), ("AA", "CID3"), ("AA", "CID4")]
    assert junk >= 1
    queued = drain_queue(twin)
    assert [base64.b64decode(q["body"]) for q in queued] == [oru(1), oru(2), lf, crlf]  # bytes untouched


def test_too_large_is_rejected_and_closed(twin, pki) -> None:  # type: ignore[no-untyped-def]
    big = oru(1) + b"NTE|1||" + b"x" * 5000 + b"\r"
    async def run():  # type: ignore[no-untyped-def]
        async with running(settings_for(pki, max_message_bytes=4096), twin) as bridge, client(bridge, pki) as c:
            ack = await c.send(big)
            with pytest.raises((MllpClientError, ConnectionError, ssl.SSLError)):
                await c.send(oru(2))
            return ack
    ack = asyncio.run(run())
    assert ack.code == "AR" and ack.control_id == "CID1"
    assert drain_queue(twin) == []


def test_charset_fidelity(twin, pki) -> None:  # type: ignore[no-untyped-def]
    latin = oru(1).replace(b"DEMOLAB", b"LATINLAB").replace(b"DOE^JANE", b"M\xdcLLER^J\xc9R\xd4ME")
    bad_utf8 = (oru(2).replace(b"|P|2.5.1\r", b"|P|2.5.1||||||UNICODE UTF-8\r")
                .replace(b"DOE^JANE", b"DOE^\xc3\x28"))
    async def run():  # type: ignore[no-untyped-def]
        async with running(settings_for(pki), twin) as bridge, client(bridge, pki) as c:
            return await c.send(latin), await c.send(bad_utf8)
    ok, bad = asyncio.run(run())
    assert ok.code == "AA"
    assert bad.code == "AE" and b"102^Data type error" in bad.raw and b"not valid utf-8" in bad.raw
    assert b"UNICODE UTF-8" in bad.raw.split(b"\r")[0]  # the ACK declares the sender's charset
    [env] = drain_queue(twin)
    assert base64.b64decode(env["body"]) == latin and env["attributes"]["charset"] == "8859/1"


def test_enhanced_mode_and_batch_file(twin, pki) -> None:  # type: ignore[no-untyped-def]
    enhanced = oru(1).replace(b"|P|2.5.1\r", b"|P|2.5.1|||AL|NE\r")
    never = oru(2).replace(b"|P|2.5.1\r", b"|P|2.5.1|||NE|NE\r")
    batch = b"BHS|^~\\&|DEMOLAB|LABFAC|||20240102\r" + oru(3) + oru(4) + b"BTS|2\r"

    async def run():  # type: ignore[no-untyped-def]
        async with running(settings_for(pki), twin) as bridge, client(bridge, pki) as c:
            first = await c.send(enhanced)
            c._writer.write(b"\x0b" + never + b"\x1c\r")  # MSH-15 NE: no accept ACK comes back
            batch_ack = await c.send(batch)
            return first, batch_ack
    first, batch_ack = asyncio.run(run())
    assert first.code == "CA"
    assert batch_ack.code == "AA" and batch_ack.control_id == "CID3"
    queued = drain_queue(twin)
    assert [q["attributes"].get("batch") for q in queued] == [None, None, "true"]
    assert base64.b64decode(queued[2]["body"]) == batch  # split later, by hl7_ingest


def test_health_endpoints_and_drain_under_load(twin, pki) -> None:  # type: ignore[no-untyped-def]
    def get(port: int, path: str) -> tuple[int, dict]:  # type: ignore[type-arg]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    async def run():  # type: ignore[no-untyped-def]
        acked: list[str] = []
        async with running(settings_for(pki), twin) as bridge:
            loop = asyncio.get_running_loop()
            assert (await loop.run_in_executor(None, get, bridge.health_port, "/readyz"))[0] == 200
            assert (await loop.run_in_executor(None, get, bridge.health_port, "/healthz"))[0] == 200
            _status, snapshot = await loop.run_in_executor(None, get, bridge.health_port, "/metrics")
            assert 1 < snapshot["gauges"][m.CERT_DAYS_LEFT] <= 2  # the test certificate lives two days

            async def sender(worker: int) -> None:
                try:
                    async with client(bridge, pki) as c:
                        for n in range(1000):
                            ack = await c.send(oru(n, f"W{worker}N{n}"))
                            if ack.code == "AA":
                                acked.append(ack.control_id)
                except (MllpClientError, ConnectionError, ssl.SSLError, OSError):
                    pass  # the bridge closed the connection while draining: expected

            senders = [asyncio.create_task(sender(w)) for w in range(8)]
            while len(acked) < 40:
                await asyncio.sleep(0.01)
            drain = asyncio.create_task(bridge.drain())
            await asyncio.sleep(0)
            status, body = await loop.run_in_executor(None, get, bridge.health_port, "/readyz")
            await drain
            await asyncio.wait_for(asyncio.gather(*senders), 20)
            assert status == 503 and body["status"] == "draining"
            return acked
    acked = asyncio.run(run())
    queued = {q["attributes"]["msh10"] for q in drain_queue(twin)}
    assert acked and set(acked) <= queued


def test_read_deadline_closes_a_stalled_frame(twin, pki) -> None:  # type: ignore[no-untyped-def]
    async def run() -> int:
        async with running(settings_for(pki, read_timeout_s=0.5), twin) as bridge, client(bridge, pki) as c:
            c._writer.write(b"\x0b" + oru(1)[:40])  # a frame that never ends
            await c._writer.drain()
            with pytest.raises((MllpClientError, ConnectionError, ssl.SSLError, TimeoutError)):
                await c.read_ack()
            return bridge.metrics.total(m.FRAMING_ERRORS, "read_timeout")
    assert asyncio.run(run()) == 1
    assert drain_queue(twin) == []


def test_large_message_is_claim_checked_before_the_aa(twin, pki) -> None:  # type: ignore[no-untyped-def]
    big = oru(1) + b"OBX|2|ED|PDF^Report||^application^pdf^Base64^" + b"QUJD" * 80_000 + b"||||||F\r"

    async def run():  # type: ignore[no-untyped-def]
        async with running(settings_for(pki), twin) as bridge, client(bridge, pki) as c:
            return await c.send(big)

    assert asyncio.run(run()).code == "AA"
    [env] = drain_queue(twin)
    assert "body" not in env and env["body_ref"]["size"] > 300_000
    s3 = local_client("s3", twin.endpoint)
    stored = s3.get_object(Bucket=env["body_ref"]["bucket"], Key=env["body_ref"]["key"])["Body"].read()
    assert base64.b64decode(stored) == big  # the raw bytes, base64, as the inline body would have been


def test_tenant_refresh_admits_a_new_sender_without_restart(twin, pki) -> None:  # type: ignore[no-untyped-def]
    from ehrbridge.contracts.tenant import MllpSource, TenantConfig

    newcomer = oru(1).replace(b"DEMOLAB", b"NEWLAB")
    current = [tenant()]

    def loader() -> list[TenantConfig]:
        return list(current)

    async def run():  # type: ignore[no-untyped-def]
        bridge = build_bridge(settings_for(pki), [tenant()], targets(twin), tenant_loader=loader)
        await bridge.start()
        try:
            async with client(bridge, pki) as c:
                before = await c.send(newcomer)
                current[0] = TenantConfig(tenant_id="demo-health", vendor="generic", mllp_sources=(
                    *tenant().mllp_sources, MllpSource(source_id="new-lab", sending_application="NEWLAB")))
                assert await bridge.refresh_tenants()
                after = await c.send(newcomer.replace(b"CID1", b"CID2"))
                current[0] = TenantConfig(tenant_id="demo-health", vendor="generic")  # no MLLP sources at all
                assert not await bridge.refresh_tenants()  # refused: keeps serving the known senders
                kept = await c.send(newcomer.replace(b"CID1", b"CID3"))
            return before, after, kept
        finally:
            await bridge.drain()
            bridge.committer.sink.close()

    before, after, kept = asyncio.run(run())
    assert (before.code, after.code, kept.code) == ("AR", "AA", "AA")
    assert [q["attributes"]["source_id"] for q in drain_queue(twin)] == ["new-lab", "new-lab"]


def test_a_bug_in_a_slow_path_still_answers_ae(twin, pki) -> None:  # type: ignore[no-untyped-def]
    class BrokenQuarantine:
        async def put(self, raw: bytes, **kw: object) -> None:
            raise RuntimeError("bug")

    async def run():  # type: ignore[no-untyped-def]
        async with running(settings_for(pki), twin) as bridge:
            bridge.quarantine = BrokenQuarantine()  # type: ignore[assignment]
            original = bridge._refuse

            async def exploding(*args, **kwargs):  # type: ignore[no-untyped-def]
                raise RuntimeError("bug in the refusal path")

            async with client(bridge, pki) as c:
                first = await c.send(b"garbage")  # quarantine failure -> AE 207, never AR
                bridge._refuse = exploding  # type: ignore[method-assign]
                second = await c.send(b"more garbage")  # a bug -> still an answer (AE 207)
                bridge._refuse = original  # type: ignore[method-assign]
                third = await c.send(oru(1))
            return first, second, third

    first, second, third = asyncio.run(run())
    assert first.code == "AE" and b"207" in first.raw
    assert second.code == "AE" and b"207" in second.raw
    assert third.code == "AA"


def test_slow_queue_gets_ae_before_the_senders_timeout(twin, pki) -> None:  # type: ignore[no-untyped-def]
    class SlowSink:
        async def send_batch(self, entries):  # type: ignore[no-untyped-def]
            await asyncio.sleep(3)
            return {e.id: "RequestTimeout" for e in entries}

        def close(self) -> None:
            pass

    async def run():  # type: ignore[no-untyped-def]
        async with running(settings_for(pki, ack_timeout_s=0.5), twin) as bridge:
            real, bridge.committer.sink = bridge.committer.sink, SlowSink()
            async with client(bridge, pki) as c:
                c.timeout = 2.5  # the sender's own ACK timeout: the AE must come first
                ack = await c.send(oru(1))
            bridge.committer.sink = real
            return ack, bridge.metrics.total(m.COMMIT_FAILED, "Timeout")

    ack, timeouts = asyncio.run(run())
    assert ack.code == "AE" and b"207" in ack.raw and timeouts == 1
    assert drain_queue(twin) == []
