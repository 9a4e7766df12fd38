"""MLLP framing: ``<VT> message <FS><CR>``, read incrementally and tolerantly, but bounded.

Field problems this decoder absorbs (research/mllp.md §6): frames split across reads, several
frames in one read, junk or NULs before the start byte, a missing final CR. What it refuses: a
frame larger than the configured maximum (the caller answers AR and closes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

VT = 0x0B  # start block
FS = 0x1C  # end block
CR = 0x0D
START = b"\x0b"
END = b"\x1c\r"

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class FrameTooLarge(ValueError):
    """The frame being read passed the maximum size. ``head`` is its first bytes (to recover MSH-10).

    ``frames`` are the complete frames decoded before it in the same ``feed``: they were read and
    must be answered before the oversized one is refused.
    """

    def __init__(self, limit: int, head: bytes, frames: list[bytes] | None = None) -> None:
        self.limit = limit
        self.head = head
        self.frames = frames or []
        super().__init__(f"message exceeds the maximum size of {limit} bytes")


def frame(message: bytes) -> bytes:
    """Wrap one message in MLLP start/end bytes."""
    return START + message + END


@dataclass
class MllpDecoder:
    """Feed bytes as they arrive; get back every complete frame's payload, in order.

    Counters are read by the server for metrics (``junk_bytes`` skipped outside frames).
    """

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    junk_bytes: int = 0
    _buffer: bytearray = field(default_factory=bytearray)
    _in_frame: bool = False
    _scan_from: int = 0

    @property
    def in_frame(self) -> bool:
        """True while part of a frame has been read (the read deadline applies)."""
        return self._in_frame

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the payloads of the frames they completed.

        Raises FrameTooLarge (carrying the frames completed before it) when a frame passes the limit;
        the decoder is reset then, and the caller refuses the frame and closes the connection.
        """
        buf = self._buffer
        if not buf and not self._in_frame and data[:1] == START:
            # The common read: exactly one whole frame (a sender waits for each ACK). Sliced straight
            # from ``data``, without copying it through the buffer.
            end = data.find(FS, 1)
            if end == len(data) - 2 and data[end + 1] == CR and end - 1 <= self.max_message_bytes:
                return [data[1:end]]
        buf += data
        frames: list[bytes] = []
        while buf:
            if not self._in_frame:
                start = buf.find(START)
                if start < 0:
                    # Between frames: CR after FS (or its absence), NULs, keep-alive noise.
                    self.junk_bytes += sum(1 for b in buf if b != CR)
                    buf.clear()
                    break
                if start:
                    self.junk_bytes += sum(1 for b in buf[:start] if b != CR)
                    del buf[:start]
                del buf[:1]
                self._in_frame = True
                self._scan_from = 0
            end = buf.find(FS, self._scan_from)
            if end < 0:
                if len(buf) > self.max_message_bytes:
                    head = bytes(buf[:4096])
                    self.reset()
                    raise FrameTooLarge(self.max_message_bytes, head, frames)
                self._scan_from = len(buf)
                break
            if end > self.max_message_bytes:
                head = bytes(buf[:4096])
                self.reset()
                raise FrameTooLarge(self.max_message_bytes, head, frames)
            frames.append(bytes(buf[:end]))
            # FS is normally followed by CR; a missing CR is tolerated (the next search skips it).
            cut = end + 2 if end + 1 < len(buf) and buf[end + 1] == CR else end + 1
            del buf[:cut]
            self._in_frame = False
        return frames

    def reset(self) -> None:
        self._buffer.clear()
        self._in_frame = False
        self._scan_from = 0
