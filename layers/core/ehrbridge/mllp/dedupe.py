"""Resend handling: the same message (source, MSH-10, SHA-256 of the bytes) gets the same ACK again.

Senders resend when an ACK was lost or late. The HL7 wiki's "Duplicate Transmissions" lists
three answers; replaying the original response is the one that fully satisfies the sender.
Replay has two levels:

1. ``AckCache`` (this module): the worker's memory. Answers a resend at once, and joins a resend
   that arrives while the first copy is still being committed (one commit, both get its answer).
2. ``ack_store.DurableAcks`` over the ``state`` table: shared by every worker and Fargate task and
   kept across restarts and deploys (TTL 7 days by default). Every accepted message is committed to
   SQS, then its ACK is written (batched, conditional: at most one stored ACK per message). Two
   modes (``BridgeSettings.ack_store_write_behind``):

   - write-behind (default): the AA goes out right after the commit and the write follows in the
     background; its outcome is only counted (``MllpAckStoreFailed`` ``write_<code>``, or
     ``MllpDuplicates`` ``write_late`` when another copy's ACK was stored first). No DynamoDB round
     trip on the ACK path. A resend that reaches another task before the write lands gets a fresh
     AA with the same MSH-10 ("A" + message id) and MSA-2, only MSH-7 differs.
   - write-through: the ACK is written first and only then does the AA go out; if an ACK is already
     stored for the message, that one is sent instead, so every copy is answered byte for byte.
     One DynamoDB round trip more on every ACK.

   The record is replay fidelity, not data safety: in both modes the message is in SQS before the
   AA goes out, and a resend is deduplicated either way (see below). The first frames of a
   connection (``ack_store_lookup_first``, 8) are looked up before the commit (batched
   ``BatchGetItem``): a sender resends right after reconnecting, maybe to another task, and a
   stored ACK then goes back byte for byte with nothing committed again. Later frames skip the
   lookup (a round trip less per message); a resend among them is committed again (the queue
   deduplicates it) and gets the original ACK from the conditional write (write-through) or a fresh
   one (write-behind). A failed or slow store never turns an accepted message into an AE: the AA
   still goes out (``MllpAckStoreFailed`` counts it) and replay falls back to a fresh AA with the
   same MSH-10 and MSA-2.

Below both, the FIFO ``MessageDeduplicationId`` (= the stable message id) keeps the queue to one
copy for five minutes, and the downstream idempotency table beyond that. The same MSH-10 with
different bytes is a different message: accepted, and flagged ``msh10_collision`` when this worker
saw the earlier bytes.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict


class AckCache:
    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self._acks: OrderedDict[str, bytes] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[bytes | None] | None] = {}
        # (tenant, source, MSH-10) -> sha256 of the bytes last seen: detects reused control ids. Keyed by
        # a string, not a tuple: strings are not tracked by the garbage collector, and up to
        # ``max_entries`` long-lived tuples would be scanned by every full collection.
        self._last_hash: OrderedDict[str, str] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        ack = self._acks.get(key)
        if ack is not None:
            self._acks.move_to_end(key)
        return ack

    def put(self, key: str, ack: bytes) -> None:
        self._acks[key] = ack
        self._acks.move_to_end(key)
        while len(self._acks) > self.max_entries:
            self._acks.popitem(last=False)

    def inflight(self, key: str) -> asyncio.Future[bytes | None] | None:
        """The answer-to-be of the copy of ``key`` being committed now, or None when none is."""
        if key not in self._inflight:
            return None
        future = self._inflight[key]
        if future is None:  # the first copy to wait on it makes the future
            future = self._inflight[key] = asyncio.get_running_loop().create_future()
        return future

    def begin(self, key: str) -> None:
        # No future yet: almost no message has a resend arriving while it is committed, so one is made
        # only when ``inflight`` is asked for it (a future per message is measurable CPU at 10k msg/s).
        self._inflight[key] = None

    def end(self, key: str, ack: bytes | None) -> None:
        """Finish an in-flight message; ``ack`` is kept for replay only when the message was accepted."""
        future = self._inflight.pop(key, None)
        if future is not None and not future.done():
            future.set_result(ack)
        if ack is not None:
            self.put(key, ack)

    def collision(self, tenant: str, source: str, control_id: str, sha256: str) -> bool:
        """True when this MSH-10 was seen before from this source with different bytes."""
        key = f"{len(tenant)}:{tenant}{len(source)}:{source}{control_id}"  # length-prefixed: unambiguous
        previous = self._last_hash.get(key)
        self._last_hash[key] = sha256
        self._last_hash.move_to_end(key)
        while len(self._last_hash) > self.max_entries:
            self._last_hash.popitem(last=False)
        return previous is not None and previous != sha256
