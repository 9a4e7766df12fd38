"""The roster in the state table (moto twin): DynamoDB TTL on every roster item, pushed out by activity,
expired items skipped before TTL deletes them, undated items dated, merges retiring both items."""

from __future__ import annotations

from typing import Any

import pytest

from ehrbridge.aws.clients import client
from ehrbridge.poll.cursor import DynamoCursorStore, identifier_key

pytestmark = pytest.mark.integration

DAY = 86_400.0
T0 = 1_900_000_000.0


def _item(table: str, sk: str) -> dict[str, Any] | None:
    return client("dynamodb").get_item(TableName=table, Key={"pk": {"S": "tenant#t1"}, "sk": {"S": sk}}).get("Item")


def test_roster_items_carry_a_ttl_that_activity_pushes_out(twin: Any) -> None:
    table = twin.tables["state"]
    now = [T0]
    store = DynamoCursorStore(table, roster_expiry_s=90 * DAY, clock=lambda: now[0])
    assert store.add_roster_identifier("t1", "urn:mr", "MRN1")
    key = "rosterid#" + identifier_key("urn:mr", "MRN1")
    entry = _item(table, key)
    assert entry is not None and int(entry["expires_at"]["N"]) == int(T0 + 90 * DAY)
    assert int(entry["created_at"]["N"]) == int(T0) and entry["attempts"]["N"] == "0"
    [pending] = store.pending_roster_identifiers("t1")
    store.resolve_roster_identifier("t1", pending.key, "pid-1")
    assert int(_item(table, "roster#pid-1")["expires_at"]["N"]) == int(T0 + 90 * DAY)  # type: ignore[index]

    now[0] = T0 + 50 * DAY  # another ADT for the patient: the entry and its resolved patient live on
    assert not store.add_roster_identifier("t1", "urn:mr", "MRN1")
    assert int(_item(table, key)["expires_at"]["N"]) == int(T0 + 140 * DAY)  # type: ignore[index]
    assert int(_item(table, "roster#pid-1")["expires_at"]["N"]) == int(T0 + 140 * DAY)  # type: ignore[index]
    assert int(_item(table, key)["created_at"]["N"]) == int(T0)  # type: ignore[index]
    assert _item(table, key)["patient_id"]["S"] == "pid-1"  # type: ignore[index]

    store.add_to_roster("t1", {"pid-2"})  # a Patient version seen at T0 + 50 d
    store.add_roster_identifier("t1", "urn:mr", "NEVER-RESOLVES")
    [unknown] = store.pending_roster_identifiers("t1")
    store.roster_identifier_unresolved("t1", unknown.key)
    [unknown] = store.pending_roster_identifiers("t1")
    assert (unknown.attempts, unknown.last_attempt_at) == (1, T0 + 50 * DAY) and not unknown.due(T0 + 50 * DAY + 60)
    now[0] = T0 + 141 * DAY  # TTL has not deleted anything yet (moto, like DynamoDB, deletes lazily)
    assert _item(table, "roster#pid-1") is not None
    assert store.roster("t1") == []  # ... but expired items are not crawled
    assert store.pending_roster_identifiers("t1") == []
    assert store.add_roster_identifier("t1", "urn:mr", "MRN1")  # after expiry a new ADT counts as new


def test_undated_items_get_a_ttl_and_merges_remove_both_items(twin: Any) -> None:
    table = twin.tables["state"]
    ddb = client("dynamodb")
    ddb.put_item(TableName=table, Item={"pk": {"S": "tenant#t1"}, "sk": {"S": "roster#legacy"}})  # older release
    legacy_id = "rosterid#" + identifier_key("urn:mr", "LEGACY")
    ddb.put_item(TableName=table, Item={"pk": {"S": "tenant#t1"}, "sk": {"S": legacy_id}, "system": {"S": "urn:mr"},
                                        "value": {"S": "LEGACY"}, "attempts": {"N": "4"},
                                        "patient_id": {"S": "legacy"}})
    store = DynamoCursorStore(table, roster_expiry_s=10 * DAY, clock=lambda: T0)
    assert store.roster("t1") == ["legacy"]
    assert int(_item(table, "roster#legacy")["expires_at"]["N"]) == int(T0 + 10 * DAY)  # type: ignore[index]
    assert int(_item(table, legacy_id)["expires_at"]["N"]) == int(T0 + 10 * DAY)  # type: ignore[index]
    assert _item(table, legacy_id)["patient_id"]["S"] == "legacy"  # type: ignore[index]

    store.add_roster_identifier("t1", "urn:mr", "OLD")
    [old] = store.pending_roster_identifiers("t1")
    store.resolve_roster_identifier("t1", old.key, "pid-old")
    assert store.retire_roster_identifier("t1", "urn:mr", "OLD")
    assert _item(table, "rosterid#" + old.key) is None and _item(table, "roster#pid-old") is None
    assert not store.retire_roster_identifier("t1", "urn:mr", "OLD")  # re-delivered A40: nothing left
    # A resolution in flight when the merge landed does not bring a stub entry back.
    store.roster_identifier_unresolved("t1", old.key)
    store.resolve_roster_identifier("t1", old.key, "pid-old")
    assert _item(table, "rosterid#" + old.key) is None and _item(table, "roster#pid-old") is None
    store.remove_from_roster("t1", {"legacy"})
    assert store.roster("t1") == []
