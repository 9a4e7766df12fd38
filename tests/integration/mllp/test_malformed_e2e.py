"""Issue 13 items 2-4 end to end: malformed frames over TLS to the bridge, committing to the twin's
SQS and quarantining to its S3 (moto on 127.0.0.1). Each frame gets the right ACK code, and its message
is either on the inbound queue (then AA) or quarantined with the reason (then AR, or AE with a code other
than 207), never both, never neither."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from ehrbridge.local.twin import local_client
from ehrbridge.mllp.client import parse_ack
from ehrbridge.mllp.framing import frame
from ehrbridge.mllp.tls import client_context

from .conftest import drain_queue, oru, running, settings_for

pytestmark = pytest.mark.integration


def adt(cid: str, *, charset: str = "", sender: str = "DEMOLAB", version: str = "2.5.1") -> bytes:
    msh18 = f"||||||{charset}" if charset else ""
    return (f"MSH|^~\\&|{sender}|FAC|EHR|DEMO|20240101120000||ADT^A01|{cid}|P|{version}{msh18}\r"
            f"PID|1||R{cid}^^^MRN^MR||Doe^Jane\r").encode("latin-1")


# (frame, expected ACK code, expected ERR code): one connection, in this order.
CASES = [
    (adt("B64", charset="BASE64"), "AR", "103"),
    (adt("ROT", charset="ROT13"), "AR", "103"),
    (adt("UND", charset="UNDEFINED"), "AR", "103"),
    (adt("NUL", charset="A\x00B"), "AR", "103"),
    (adt("IDN", charset="IDNA"), "AR", "103"),  # was AE although queued
    (adt("EBC", charset="CP037"), "AR", "103"),  # was AA in EBCDIC
    (b"MSH\rPID|1\r", "AR", "101"),  # was: no ACK, connection closed
    (adt("VER", sender="STRANGER", version="2.\xb3"), "AR", "103"),  # was: no ACK within 8 s
    (adt("BAD", charset="ASCII") + b"NTE|1||caf\xe9\r", "AE", "102"),  # invalid in its declared charset
    (adt("LAT", charset="8859/1") + b"NTE|1||caf\xe9\r", "AA", None),
    (oru(1, "OK1"), "AA", None),
]


def _quarantined(twin) -> dict[bytes, str]:  # type: ignore[no-untyped-def]
    s3 = local_client("s3", twin.endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=twin.buckets["quarantine"]).get("Contents", [])]
    out: dict[bytes, str] = {}
    for key in keys:
        if key.endswith(".body"):
            body = s3.get_object(Bucket=twin.buckets["quarantine"], Key=key)["Body"].read()
            reason = json.loads(s3.get_object(Bucket=twin.buckets["quarantine"],
                                              Key=key[:-len(".body")] + ".reason.json")["Body"].read())
            out[body] = reason["reasons"][0]
    return out


def test_each_malformed_frame_gets_its_code_and_exactly_one_fate(twin, pki) -> None:  # type: ignore[no-untyped-def]
    big = oru(9, "BIG") + b"OBX|2|TX|||" + b"x" * 20_000 + b"\r"

    async def run() -> tuple[list[bytes], list[bytes], bool]:
        async with running(settings_for(pki, max_message_bytes=8192), twin) as bridge:
            ctx = client_context(pki.ca.cert)
            reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port, ssl=ctx,
                                                           server_hostname="localhost")
            answers = []
            for raw, _, _ in CASES:
                writer.write(frame(raw))
                answers.append(await asyncio.wait_for(_read_frame(reader), 8))
            writer.close()
            # Item 4: two good frames and an oversized one in one write: both answered, then AR and close.
            reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port, ssl=ctx,
                                                           server_hostname="localhost")
            writer.write(frame(oru(2, "OK2")) + frame(oru(3, "OK3")) + frame(big))
            tail = [await asyncio.wait_for(_read_frame(reader), 8) for _ in range(3)]
            closed = await asyncio.wait_for(reader.read(1), 8) == b""
            writer.close()
            return answers, tail, closed

    answers, tail, closed = asyncio.run(run())
    queued = {q["attributes"]["msh10"]: base64.b64decode(q["body"]) for q in drain_queue(twin)}
    quarantined = _quarantined(twin)
    for (raw, code, err), payload in zip(CASES, answers, strict=True):
        ack = parse_ack(payload)
        assert ack.code == code, (raw[:60], payload)
        assert payload.isascii() or code == "AA"  # a refusal is always readable
        if code == "AA":
            assert raw in queued.values() and raw not in quarantined  # queued, not quarantined
        else:
            assert f"|{err}^".encode() in payload and b"|207^" not in payload  # non-retryable
            assert raw not in queued.values() and quarantined[raw].startswith(f"{err}: ")  # quarantined only
    # Item 4.
    assert [parse_ack(p).code for p in tail] == ["AA", "AA", "AR"] and closed
    assert b"104^Value too long" in tail[2] and parse_ack(tail[2]).control_id == "BIG"
    assert {"OK1", "OK2", "OK3", "LAT"} == set(queued)
    assert [r for b, r in quarantined.items() if b.startswith(big[:200])] == [
        "104: message larger than 8192 bytes (first 4096 bytes kept)"]
    assert len(drain_queue(twin, "quarantine")) == len(quarantined) == 10


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    data = await reader.readuntil(b"\x1c\r")
    return data[data.index(b"\x0b") + 1:-2]
