"""The MPI on DynamoDB: the single-table ``mpi`` (pk, sk, gsi1pk/gsi1sk) from ehrbridge.resources.

Items (T = tenant):
  source record   pk T#<t>#SRC#<patient id>   sk R        gsi1pk T#<t>#EID#<eid>  gsi1sk SRC#<patient id>
  blocking bucket pk T#<t>#BK#<sha256(key)>   sk B        m: string set of patient ids, f: full flag
  enterprise      pk T#<t>#EID#<eid>          sk E
  history event   pk T#<t>#EID#<eid>          sk H#<at>#<seq>   (put-if-absent: append-only)
  review item     pk T#<t>#REV#<id>           sk V        gsi1pk T#<t>#REVIEW#<status>  gsi1sk <created>#<id>
Blocking keys are hashed: SSNs, birth dates and phone numbers never appear in a key.

Per resolved record: BatchGetItem (buckets) + BatchGetItem (candidates + itself) + TransactWriteItems.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from botocore.exceptions import ClientError

from ehrbridge.identity.store import (
    Bucket,
    Commit,
    ConflictError,
    Enterprise,
    HistoryEvent,
    ReviewItem,
    SourceRecord,
)

_BATCH_GET = 100
_TRANSACT = 100
_MAX_UNPROCESSED_ROUNDS = 5


def _bk(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class DynamoMpiStore:
    def __init__(self, table: str, client: Any = None) -> None:
        self.table = table
        self._client = client
        self.round_trips = 0

    @property
    def ddb(self) -> Any:
        if self._client is None:
            from ehrbridge.aws.clients import client

            self._client = client("dynamodb")
        return self._client

    # ---- per-record path -------------------------------------------------------------------------
    def _batch_get(self, keys: list[dict[str, Any]], projection: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for start in range(0, len(keys), _BATCH_GET):
            request: dict[str, Any] = {"Keys": keys[start:start + _BATCH_GET], "ConsistentRead": True}
            if projection:
                request["ProjectionExpression"] = projection
            pending = {self.table: request}
            for _ in range(_MAX_UNPROCESSED_ROUNDS):
                self.round_trips += 1
                resp = self.ddb.batch_get_item(RequestItems=pending)
                out.extend(resp.get("Responses", {}).get(self.table, []))
                pending = resp.get("UnprocessedKeys") or {}
                if not pending:
                    break
            else:
                raise RuntimeError("DynamoDB kept returning unprocessed keys")
        return out

    def blocks(self, tenant: str, keys: Iterable[str]) -> dict[str, Bucket]:
        by_hash = {_bk(k): k for k in dict.fromkeys(keys)}
        if not by_hash:
            return {}
        items = self._batch_get([{"pk": {"S": f"T#{tenant}#BK#{h}"}, "sk": {"S": "B"}} for h in by_hash],
                                projection="pk, m, f")
        out: dict[str, Bucket] = {}
        for item in items:
            key = by_hash.get(item["pk"]["S"].rsplit("#", 1)[1])
            if key is not None:
                out[key] = Bucket(list(item.get("m", {}).get("SS", [])), bool(item.get("f", {}).get("BOOL")))
        return out

    def records(self, tenant: str, source_keys: Iterable[str]) -> dict[str, SourceRecord]:
        wanted = list(dict.fromkeys(source_keys))
        if not wanted:
            return {}
        items = self._batch_get([{"pk": {"S": f"T#{tenant}#SRC#{sk}"}, "sk": {"S": "R"}} for sk in wanted])
        out = {}
        for item in items:
            rec = SourceRecord.from_dict(json.loads(item["d"]["S"]))
            rec.version = int(item["v"]["N"])
            out[rec.source_key] = rec
        return out

    def commit(self, tenant: str, commit: Commit) -> None:
        actions: list[dict[str, Any]] = []
        for record, expected in commit.records:
            data = record.to_dict()
            data.pop("version", None)
            item = {"pk": {"S": f"T#{tenant}#SRC#{record.source_key}"}, "sk": {"S": "R"},
                    "gsi1pk": {"S": f"T#{tenant}#EID#{record.eid}"}, "gsi1sk": {"S": f"SRC#{record.source_key}"},
                    "d": {"S": json.dumps(data, separators=(",", ":"))},
                    "v": {"N": str((expected or 0) + 1)}}
            put: dict[str, Any] = {"TableName": self.table, "Item": item}
            if expected is None:
                put["ConditionExpression"] = "attribute_not_exists(pk)"
            else:
                put["ConditionExpression"] = "v = :v"
                put["ExpressionAttributeValues"] = {":v": {"N": str(expected)}}
            actions.append({"Put": put})
        for key in sorted(set(commit.add_keys) | set(commit.remove_keys)):
            add = commit.add_keys.get(key, set()) - commit.remove_keys.get(key, set())
            remove = commit.remove_keys.get(key, set()) - commit.add_keys.get(key, set())
            parts, values = [], {}
            if add:
                parts.append("ADD m :a")
                values[":a"] = {"SS": sorted(add)}
            elif remove:
                parts.append("DELETE m :d")
                values[":d"] = {"SS": sorted(remove)}
            if key in commit.full_keys:
                parts.append("SET f = :t")
                values[":t"] = {"BOOL": True}
            if parts:
                actions.append({"Update": {"TableName": self.table,
                                           "Key": {"pk": {"S": f"T#{tenant}#BK#{_bk(key)}"}, "sk": {"S": "B"}},
                                           "UpdateExpression": " ".join(parts),
                                           "ExpressionAttributeValues": values}})
        for ent in commit.enterprises:
            actions.append({"Put": {"TableName": self.table, "Item": {
                "pk": {"S": f"T#{tenant}#EID#{ent.eid}"}, "sk": {"S": "E"},
                "d": {"S": json.dumps(ent.to_dict(), separators=(",", ":"))}}}})
        for event in commit.history:
            actions.append({"Put": {"TableName": self.table, "ConditionExpression": "attribute_not_exists(pk)",
                                    "Item": {"pk": {"S": f"T#{tenant}#EID#{event.eid}"},
                                             "sk": {"S": f"H#{event.at}#{event.seq}"},
                                             "d": {"S": json.dumps(event.to_dict(), separators=(",", ":"))}}}})
        for review in commit.reviews:
            actions.append({"Put": {"TableName": self.table, "Item": {
                "pk": {"S": f"T#{tenant}#REV#{review.review_id}"}, "sk": {"S": "V"},
                "gsi1pk": {"S": f"T#{tenant}#REVIEW#{review.status}"},
                "gsi1sk": {"S": f"{review.created_at}#{review.review_id}"},
                "d": {"S": json.dumps(review.to_dict(), separators=(",", ":"))}}}})
        # The conditional record puts come first, so a conflict fails before anything else is written.
        for start in range(0, len(actions), _TRANSACT):
            self.round_trips += 1
            try:
                self.ddb.transact_write_items(TransactItems=actions[start:start + _TRANSACT])
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") == "TransactionCanceledException":
                    reasons = [r.get("Code") for r in err.response.get("CancellationReasons", []) or []]
                    if "ConditionalCheckFailed" in reasons:
                        raise ConflictError("MPI record changed since it was read") from None
                raise
        for record, expected in commit.records:
            record.version = (expected or 0) + 1

    # ---- admin reads ------------------------------------------------------------------------------
    def _query(self, **kwargs: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            self.round_trips += 1
            resp = self.ddb.query(TableName=self.table, **kwargs)
            items.extend(resp.get("Items", []))
            if "LastEvaluatedKey" not in resp or ("Limit" in kwargs and len(items) >= kwargs["Limit"]):
                return items
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def members(self, tenant: str, eid: str) -> list[SourceRecord]:
        items = self._query(IndexName="gsi1", KeyConditionExpression="gsi1pk = :p AND begins_with(gsi1sk, :s)",
                            ExpressionAttributeValues={":p": {"S": f"T#{tenant}#EID#{eid}"}, ":s": {"S": "SRC#"}})
        # The index is eventually consistent: re-read the records themselves before acting on them.
        keys = [i["gsi1sk"]["S"][4:] for i in items]
        recs = self.records(tenant, keys)
        return [recs[k] for k in sorted(recs) if recs[k].eid == eid]

    def enterprise(self, tenant: str, eid: str) -> Enterprise | None:
        self.round_trips += 1
        item = self.ddb.get_item(TableName=self.table, Key={"pk": {"S": f"T#{tenant}#EID#{eid}"},
                                                            "sk": {"S": "E"}}).get("Item")
        return Enterprise(**json.loads(item["d"]["S"])) if item else None

    def history(self, tenant: str, eid: str) -> list[HistoryEvent]:
        items = self._query(KeyConditionExpression="pk = :p AND begins_with(sk, :h)",
                            ExpressionAttributeValues={":p": {"S": f"T#{tenant}#EID#{eid}"}, ":h": {"S": "H#"}})
        return [HistoryEvent(**json.loads(i["d"]["S"])) for i in items]

    def reviews(self, tenant: str, status: str = "open", limit: int = 100) -> list[ReviewItem]:
        items = self._query(IndexName="gsi1", KeyConditionExpression="gsi1pk = :p",
                            ExpressionAttributeValues={":p": {"S": f"T#{tenant}#REVIEW#{status}"}},
                            Limit=limit, ScanIndexForward=True)
        return [ReviewItem.from_dict(json.loads(i["d"]["S"])) for i in items[:limit]]

    def review(self, tenant: str, review_id: str) -> ReviewItem | None:
        self.round_trips += 1
        item = self.ddb.get_item(TableName=self.table, Key={"pk": {"S": f"T#{tenant}#REV#{review_id}"},
                                                            "sk": {"S": "V"}}, ConsistentRead=True).get("Item")
        return ReviewItem.from_dict(json.loads(item["d"]["S"])) if item else None

    def settings(self, tenant: str) -> dict[str, Any] | None:
        """Per-tenant identity settings (decision thresholds), set with `ehrbridge identity thresholds`."""
        self.round_trips += 1
        item = self.ddb.get_item(TableName=self.table, Key={"pk": {"S": f"T#{tenant}#SETTINGS"},
                                                            "sk": {"S": "IDENTITY"}}).get("Item")
        return json.loads(item["d"]["S"]) if item else None

    def put_settings(self, tenant: str, settings: dict[str, Any]) -> None:
        self.round_trips += 1
        self.ddb.put_item(TableName=self.table, Item={"pk": {"S": f"T#{tenant}#SETTINGS"}, "sk": {"S": "IDENTITY"},
                                                      "d": {"S": json.dumps(settings, sort_keys=True)}})

    def review_backlog(self, tenant: str) -> tuple[int, str | None]:
        """(open review items, created_at of the oldest): for the backlog depth/age metrics."""
        count = 0
        kwargs: dict[str, Any] = {"IndexName": "gsi1", "KeyConditionExpression": "gsi1pk = :p",
                                  "ExpressionAttributeValues": {":p": {"S": f"T#{tenant}#REVIEW#open"}},
                                  "Select": "COUNT"}
        while True:
            self.round_trips += 1
            resp = self.ddb.query(TableName=self.table, **kwargs)
            count += int(resp.get("Count", 0))
            if "LastEvaluatedKey" not in resp:
                break
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        oldest = self.reviews(tenant, "open", limit=1)
        return count, (oldest[0].created_at if oldest else None)
