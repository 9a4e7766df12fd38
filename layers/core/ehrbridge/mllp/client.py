"""An MLLP-over-TLS client: send messages on one connection, one at a time, and read each ACK.

Used by ``ehrbridge send``, the local demo, the tests and the benchmark. ACKs are read with the
same incremental decoder as the server, so a split or coalesced ACK is never truncated.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

from ehrbridge.hl7.wire import WireError, read_msh, split_segments
from ehrbridge.mllp.framing import MllpDecoder, frame


class MllpClientError(RuntimeError):
    pass


@dataclass(frozen=True)
class AckResult:
    code: str  # MSA-1, or "" when the reply had no MSA
    control_id: str  # MSA-2
    text: str  # MSA-3 / ERR text, PHI-free by construction (our server never echoes content)
    raw: bytes
    # With enhanced mode (MSH-15 NE/ER/SU) no ACK may be the answer: "not requested", "accepted", "not accepted".
    implied: str = ""

    @property
    def ok(self) -> bool:
        return self.code in ("AA", "CA") or self.implied in ("accepted", "not requested")


def parse_ack(payload: bytes) -> AckResult:
    try:
        header = read_msh(payload)
        sep = header.field_separator
    except WireError:
        sep = "|"
    code = control = text = ""
    for segment in split_segments(payload):
        fields = segment.decode("latin-1").split(sep)
        if fields[0] == "MSA":
            code = fields[1] if len(fields) > 1 else ""
            control = fields[2] if len(fields) > 2 else ""
            text = fields[3] if len(fields) > 3 else ""
    return AckResult(code=code, control_id=control, text=text, raw=payload)


def accept_ack_type(message: bytes) -> str:
    """MSH-15 (accept acknowledgment type) of a message, upper-case; "" in original mode or if unreadable."""
    try:
        return read_msh(message).field(15).strip().upper()
    except WireError:
        return ""


class MllpClient:
    """``async with MllpClient(host, port, ssl=ctx) as c: ack = await c.send(message)``."""

    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None,
                 server_hostname: str | None = None, timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = MllpDecoder()
        self._ready: list[bytes] = []

    async def connect(self) -> MllpClient:
        kwargs = {}
        if self.ssl_context is not None:
            kwargs = {"ssl": self.ssl_context, "server_hostname": self.server_hostname or self.host}
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, **kwargs), self.timeout)
        return self

    async def __aenter__(self) -> MllpClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(TimeoutError, ConnectionError, OSError, ssl.SSLError):
                await asyncio.wait_for(self._writer.wait_closed(), 5)
            self._writer = None

    async def send_raw(self, message: bytes) -> bytes:
        """Send one message and return the raw ACK payload."""
        if self._writer is None or self._reader is None:
            raise MllpClientError("not connected")
        self._writer.write(frame(message))
        await self._writer.drain()
        return await self.read_ack()

    async def read_ack(self) -> bytes:
        assert self._reader is not None
        while not self._ready:
            data = await asyncio.wait_for(self._reader.read(65536), self.timeout)
            if not data:
                raise MllpClientError("connection closed before the ACK arrived")
            self._ready.extend(self._decoder.feed(data))
        return self._ready.pop(0)

    async def send(self, message: bytes) -> AckResult:
        return parse_ack(await self.send_raw(message))

    async def write(self, message: bytes) -> None:
        """Send one framed message without waiting for anything."""
        if self._writer is None:
            raise MllpClientError("not connected")
        self._writer.write(frame(message))
        await self._writer.drain()

    async def send_per_msh15(self, message: bytes, *, silent_wait: float = 3.0) -> AckResult:
        """Send honouring enhanced-mode MSH-15: NE expects no accept ACK; ER only one on error; SU only
        one on success. When none may come, wait ``silent_wait`` seconds and report the silence
        (code ``""`` and ``implied``) instead of hanging until the timeout.
        """
        mode = accept_ack_type(message)
        if mode not in ("NE", "ER", "SU"):
            return await self.send(message)
        await self.write(message)
        if mode == "NE":
            return AckResult(code="", control_id="", text="no accept ACK requested (MSH-15=NE)", raw=b"",
                             implied="not requested")
        saved, self.timeout = self.timeout, silent_wait
        try:
            return parse_ack(await self.read_ack())
        except TimeoutError:
            implied = "accepted" if mode == "ER" else "not accepted"
            return AckResult(code="", control_id="", text=f"no ACK within {silent_wait:g} s: {implied} per "
                                                         f"MSH-15={mode}", raw=b"", implied=implied)
        finally:
            self.timeout = saved


async def send_messages(host: str, port: int, messages: Iterable[bytes], *, ssl_context: ssl.SSLContext | None,
                        server_hostname: str | None = None, timeout: float = 30.0) -> list[AckResult]:
    """Send messages in order on one connection, waiting for each ACK (what interface engines do)."""
    results = []
    async with MllpClient(host, port, ssl_context=ssl_context, server_hostname=server_hostname,
                          timeout=timeout) as client:
        for message in messages:
            results.append(await client.send(message))
    return results
