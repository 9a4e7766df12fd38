"""Link-change events: one EventBridge event per change of a source patient's enterprise link.

The detail is PHI-free (ids, grades, scores, reasons). Each event carries a deterministic
``event_id``: EventBridge delivers at least once, and a redelivered message re-sends its events,
so consumers dedupe on it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any, Protocol

from ehrbridge.identity.resolver import LinkChange

SOURCE = "ehrbridge.identity"
DETAIL_TYPE = "PatientLinkChanged"
BUS_ENV = "EHRBRIDGE_EVENT_BUS"
_PUT_EVENTS_MAX = 10


class EventPublishError(RuntimeError):
    pass


def event_detail(change: LinkChange, *, message_id: str | None, correlation_id: str | None) -> dict[str, Any]:
    detail = {"patient_id": change.source_key, **change.to_detail()}
    detail.pop("source_key", None)
    identity = "|".join(str(x) for x in (message_id, change.change, change.source_key, change.enterprise_id,
                                         change.previous_enterprise_id))
    detail["event_id"] = hashlib.sha256(identity.encode()).hexdigest()[:32]
    if message_id:
        detail["message_id"] = message_id
    if correlation_id:
        detail["correlation_id"] = correlation_id
    return detail


class LinkEventSink(Protocol):
    def publish(self, changes: Sequence[LinkChange], *, message_id: str | None = None,
                correlation_id: str | None = None) -> None: ...


class InMemoryLinkEvents:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def publish(self, changes: Sequence[LinkChange], *, message_id: str | None = None,
                correlation_id: str | None = None) -> None:
        for change in changes:
            self.events.append(event_detail(change, message_id=message_id, correlation_id=correlation_id))


class EventBridgeLinkEvents:
    """PutEvents on the configured bus (``EHRBRIDGE_EVENT_BUS``; the account's default bus otherwise)."""

    def __init__(self, bus: str | None = None, client: Any = None) -> None:
        self.bus = bus or os.environ.get(BUS_ENV) or "default"
        self._client = client

    @property
    def events(self) -> Any:
        if self._client is None:
            from ehrbridge.aws.clients import client

            self._client = client("events")
        return self._client

    def publish(self, changes: Sequence[LinkChange], *, message_id: str | None = None,
                correlation_id: str | None = None) -> None:
        entries = [{"Source": SOURCE, "DetailType": DETAIL_TYPE, "EventBusName": self.bus,
                    "Detail": json.dumps(event_detail(c, message_id=message_id, correlation_id=correlation_id),
                                         separators=(",", ":"), sort_keys=True)} for c in changes]
        for start in range(0, len(entries), _PUT_EVENTS_MAX):
            resp = self.events.put_events(Entries=entries[start:start + _PUT_EVENTS_MAX])
            if resp.get("FailedEntryCount"):
                codes = sorted({e.get("ErrorCode", "?") for e in resp.get("Entries", []) if e.get("ErrorCode")})
                raise EventPublishError(f"EventBridge rejected {resp['FailedEntryCount']} events: {codes}")
