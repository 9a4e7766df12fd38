"""Durable ACK store: batching across callers, per-key results, races, failures, TTL, DynamoDB requests."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ehrbridge.mllp.ack_store import (
    AckKey,
    AckRecord,
    DurableAcks,
    DynamoAckStore,
    GetResult,
    InMemoryAckStore,
    PutResult,
)


def key(n: int, control_id: str | None = None) -> AckKey:
    return AckKey("demo-health", "demo-lab", control_id or f"CID{n}", f"{n:064x}")


def record(n: int, ack: bytes | None = None) -> AckRecord:
    return AckRecord(key(n), ack or f"MSH|ack {n}\rMSA|AA|CID{n}\r".encode(), f"m{n}")


class CountingStore(InMemoryAckStore):
    """In-memory semantics, recording each call's size, optionally slow or failing."""

    def __init__(self, *, delay: float = 0.0, fail: Exception | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.delay = delay
        self.fail = fail
        self.get_sizes: list[int] = []
        self.put_sizes: list[int] = []

    async def get_many(self, keys):  # type: ignore[no-untyped-def]
        self.get_sizes.append(len(keys))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise self.fail
        return await super().get_many(keys)

    async def put_many(self, records):  # type: ignore[no-untyped-def]
        self.put_sizes.append(len(records))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise self.fail
        return await super().put_many(records)


async def lookup(acks: DurableAcks, k: AckKey) -> tuple[bytes | None, str | None]:
    future: asyncio.Future[tuple[bytes | None, str | None]] = asyncio.get_running_loop().create_future()
    acks.lookup(k, lambda stored, error: future.set_result((stored, error)))
    return await future


async def put(acks: DurableAcks, r: AckRecord) -> tuple[bytes | None, str | None]:
    future: asyncio.Future[tuple[bytes | None, str | None]] = asyncio.get_running_loop().create_future()
    acks.record(r, lambda stored, error: future.set_result((stored, error)))
    return await future


def test_concurrent_writes_and_lookups_share_store_calls() -> None:
    store = CountingStore()

    async def run():  # type: ignore[no-untyped-def]
        acks = DurableAcks(store, linger_s=0.005)
        written = await asyncio.gather(*(put(acks, record(n)) for n in range(60)))
        found = await asyncio.gather(*(lookup(acks, key(n)) for n in range(130)))
        await acks.close()
        return written, found, acks.stats

    written, found, stats = asyncio.run(run())
    # 60 writes from "60 connections": 25 + 25 + 10, not 60 calls; 130 lookups: 100 + 30.
    assert sorted(store.put_sizes) == [10, 25, 25] and sorted(store.get_sizes) == [30, 100]
    assert written == [(None, None)] * 60
    assert found[:60] == [(record(n).ack, None) for n in range(60)] and found[60:] == [(None, None)] * 70
    assert (stats.put_batches, stats.puts, stats.get_batches, stats.gets, stats.failed) == (3, 60, 2, 130, 0)


def test_lingering_batch_goes_out_without_filling_up() -> None:
    store = CountingStore()

    async def run() -> tuple[bytes | None, str | None]:
        acks = DurableAcks(store, linger_s=0.002)
        return await asyncio.wait_for(lookup(acks, key(1)), 2)

    assert asyncio.run(run()) == (None, None) and store.get_sizes == [1]


def test_a_lost_race_returns_the_stored_ack() -> None:
    store = CountingStore()

    async def run():  # type: ignore[no-untyped-def]
        acks = DurableAcks(store, linger_s=0.001)
        first = await put(acks, record(1, b"first ack"))
        second = await put(acks, record(1, b"second ack"))  # another task committed the same message
        return first, second, await lookup(acks, key(1))

    first, second, stored = asyncio.run(run())
    assert first == (None, None)
    assert second == (b"first ack", None)
    assert stored == (b"first ack", None)


def test_expired_acks_are_absent_and_can_be_replaced() -> None:
    now = [1_000_000.0]
    store = InMemoryAckStore(ttl_s=60, clock=lambda: now[0])

    async def run():  # type: ignore[no-untyped-def]
        await store.put_many([record(1, b"old")])
        now[0] += 61
        missing = await store.get_many([key(1)])
        replaced = await store.put_many([record(1, b"new")])
        return missing, replaced, await store.get_many([key(1)])

    missing, replaced, found = asyncio.run(run())
    assert missing == GetResult({}, {})
    assert replaced == PutResult({}, {})
    assert found.found == {key(1): b"new"}


def test_slow_store_answers_every_waiter_with_timeout() -> None:
    store = CountingStore(delay=2.0)

    async def run():  # type: ignore[no-untyped-def]
        acks = DurableAcks(store, linger_s=0.001, timeout_s=0.1)
        results = await asyncio.wait_for(asyncio.gather(lookup(acks, key(1)), lookup(acks, key(2)),
                                                        put(acks, record(3))), 1.5)
        return results, acks.stats.failed

    results, failed = asyncio.run(run())
    assert results == [(None, "Timeout")] * 3 and failed == 3


def test_failing_store_fails_each_waiter_then_opens_the_breaker() -> None:
    err = ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "x"}}, "BatchGetItem")
    store = CountingStore(fail=err)

    async def run():  # type: ignore[no-untyped-def]
        acks = DurableAcks(store, linger_s=0.001, breaker_failures=2, breaker_s=0.3)
        first = [await lookup(acks, key(n)) for n in range(2)]
        calls = len(store.get_sizes)
        skipped = await lookup(acks, key(3))  # breaker open: no call at all
        skipped_calls = len(store.get_sizes)
        await asyncio.sleep(0.35)
        store.fail = None
        recovered = await put(acks, record(4))
        return first, calls, skipped, skipped_calls, recovered, acks.stats.consecutive_failures

    first, calls, skipped, skipped_calls, recovered, consecutive = asyncio.run(run())
    assert first == [(None, "ProvisionedThroughputExceededException")] * 2 and calls == 2
    assert skipped == (None, "CircuitOpen") and skipped_calls == 2
    assert recovered == (None, None) and consecutive == 0


def test_a_raising_callback_does_not_strand_the_batch() -> None:
    store = CountingStore()

    async def run() -> tuple[bytes | None, str | None]:
        acks = DurableAcks(store, linger_s=0.005)

        def explode(stored: bytes | None, error: str | None) -> None:
            raise RuntimeError("bug")

        acks.lookup(key(1), explode)
        return await lookup(acks, key(2))

    assert asyncio.run(run()) == (None, None)


def test_close_flushes_pending_writes() -> None:
    store = CountingStore()

    async def run() -> None:
        acks = DurableAcks(store, write_linger_s=10)  # would linger far longer than the test
        acks.record(record(1), lambda stored, error: None)
        acks.record(record(2), lambda stored, error: None)
        assert not acks.idle and acks.backlog == 2  # both wait in the write lane
        await acks.close()
        assert acks.idle and acks.backlog == 0

    asyncio.run(run())
    assert store.put_sizes == [2] and key(1) in store.items and key(2) in store.items


def test_keys_are_tenant_and_source_scoped_and_bounded() -> None:
    k = AckKey("t1", "lab", "X" * 500, "ab" * 32)
    assert k.pk == "mllp-ack#t1#lab"
    assert k.sk.endswith("#" + "ab" * 32) and len(k.sk) == 200 + 1 + 64
    assert AckKey("t2", "lab", "C1", "00").pk != AckKey("t1", "lab", "C1", "00").pk


# ---- the DynamoDB requests, against a scripted client ------------------------------------------
class ScriptedDdb:
    """Answers each call from a script; records the requests."""

    def __init__(self, *responses: Any) -> None:
        self.responses = list(responses)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def _next(self, name: str, kwargs: dict[str, Any]) -> Any:
        self.calls.append((name, kwargs))
        response = self.responses.pop(0)
        if isinstance(response, Exception):
            raise response
        return response(kwargs) if callable(response) else response

    def batch_get_item(self, **kwargs: Any) -> Any:
        return self._next("batch_get_item", kwargs)

    def transact_write_items(self, **kwargs: Any) -> Any:
        return self._next("transact_write_items", kwargs)

    def batch_write_item(self, **kwargs: Any) -> Any:
        return self._next("batch_write_item", kwargs)


def cancelled(*reasons: dict[str, Any]) -> ClientError:
    return ClientError({"Error": {"Code": "TransactionCanceledException", "Message": "cancelled"},
                        "CancellationReasons": list(reasons)}, "TransactWriteItems")


def item(k: AckKey, ack: bytes, expires_at: float = 2e9) -> dict[str, Any]:
    return {"pk": {"S": k.pk}, "sk": {"S": k.sk}, "ack": {"S": base64.b64encode(ack).decode()},
            "expires_at": {"N": str(int(expires_at))}}


def store_with(ddb: ScriptedDdb, **kw: Any) -> DynamoAckStore:
    s = DynamoAckStore("state", ddb=ddb, clock=lambda: 1_700_000_000.0, **kw)
    s._backoff = lambda attempt: None  # type: ignore[method-assign]
    return s


def test_conditional_write_is_one_transaction_per_25_with_ttl_and_no_overwrite() -> None:
    ddb = ScriptedDdb({}, {}, {})
    result = store_with(ddb, ttl_s=3600).put_many_sync([record(n) for n in range(60)])
    assert result == PutResult({}, {})
    assert [len(c[1]["TransactItems"]) for c in ddb.calls] == [25, 25, 10]
    put0 = ddb.calls[0][1]["TransactItems"][0]["Put"]
    assert put0["TableName"] == "state" and put0["ReturnValuesOnConditionCheckFailure"] == "ALL_OLD"
    assert put0["ConditionExpression"] == "attribute_not_exists(pk) OR expires_at < :now"
    stored = put0["Item"]
    assert stored["pk"] == {"S": "mllp-ack#demo-health#demo-lab"} and stored["sk"]["S"] == f"CID0#{0:064x}"
    assert base64.b64decode(stored["ack"]["S"]) == record(0).ack and stored["message_id"] == {"S": "m0"}
    assert stored["expires_at"] == {"N": str(1_700_000_000 + 3600)} and stored["stored_at"]["S"].startswith("2023")


def test_conditional_write_race_and_conflict_are_resolved_per_item() -> None:
    # Item 1 lost a race (its ACK comes back in the reason); item 2 conflicted with another transaction
    # and is retried with item 0, which was only cancelled along with them.
    ddb = ScriptedDdb(cancelled({"Code": "None"}, {"Code": "ConditionalCheckFailed", "Item": item(key(1), b"theirs")},
                                {"Code": "TransactionConflict"}), {})
    result = store_with(ddb).put_many_sync([record(0), record(1), record(2)])
    assert result == PutResult({key(1): b"theirs"}, {})
    retried = [i["Put"]["Item"]["sk"]["S"] for i in ddb.calls[1][1]["TransactItems"]]
    assert retried == [key(0).sk, key(2).sk]


def test_conditional_write_without_old_item_reads_it_and_gives_up_after_attempts() -> None:
    ddb = ScriptedDdb(cancelled({"Code": "ConditionalCheckFailed"}, {"Code": "ThrottlingError"}),
                      cancelled({"Code": "ThrottlingError"}),
                      {"Responses": {"state": [item(key(0), b"stored")]}})
    result = store_with(ddb, attempts=2).put_many_sync([record(0), record(1)])
    assert result == PutResult({key(0): b"stored"}, {key(1): "ThrottlingError"})
    assert [c[0] for c in ddb.calls] == ["transact_write_items", "transact_write_items", "batch_get_item"]


def test_write_call_failure_fails_the_batch_with_the_error_code() -> None:
    ddb = ScriptedDdb(ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "TransactWriteItems"))
    result = store_with(ddb).put_many_sync([record(0), record(1)])
    assert result == PutResult({}, {key(0): "AccessDeniedException", key(1): "AccessDeniedException"})
    assert len(ddb.calls) == 1  # not retried: boto3 already retried what is retryable


def test_unconditional_mode_uses_batch_write_and_retries_unprocessed_items() -> None:
    def unprocess_last(kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"UnprocessedItems": {"state": kwargs["RequestItems"]["state"][-1:]}}

    ddb = ScriptedDdb(unprocess_last, {})
    result = store_with(ddb, conditional=False).put_many_sync([record(n) for n in range(3)])
    assert result == PutResult({}, {})
    assert [len(c[1]["RequestItems"]["state"]) for c in ddb.calls] == [3, 1]


def test_duplicate_keys_in_one_batch_are_sent_once() -> None:
    ddb = ScriptedDdb({})
    store_with(ddb).put_many_sync([record(1), record(1, b"again")])
    assert len(ddb.calls[0][1]["TransactItems"]) == 1


def test_lookup_is_consistent_skips_expired_items_and_retries_unprocessed_keys() -> None:
    ddb = ScriptedDdb(
        lambda kw: {"Responses": {"state": [item(key(0), b"a0"), item(key(1), b"old", expires_at=1_600_000_000)]},
                    "UnprocessedKeys": {"state": {"Keys": kw["RequestItems"]["state"]["Keys"][2:]}}},
        {"Responses": {"state": [item(key(2), b"a2")]}})
    result = store_with(ddb).get_many_sync([key(0), key(1), key(2), key(3)])
    assert result == GetResult({key(0): b"a0", key(2): b"a2"}, {})
    request = ddb.calls[0][1]["RequestItems"]["state"]
    assert request["ConsistentRead"] is True and len(request["Keys"]) == 4
    assert [k["sk"]["S"] for k in ddb.calls[1][1]["RequestItems"]["state"]["Keys"]] == [key(2).sk, key(3).sk]


def test_lookup_of_many_keys_is_chunked_and_failures_are_per_key() -> None:
    throttled = ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "BatchGetItem")
    ddb = ScriptedDdb({"Responses": {"state": []}}, throttled)
    result = store_with(ddb).get_many_sync([key(n) for n in range(150)])
    assert [len(c[1]["RequestItems"]["state"]["Keys"]) for c in ddb.calls] == [100, 50]
    assert result.found == {} and set(result.failed) == {key(n) for n in range(100, 150)}
    assert set(result.failed.values()) == {"ThrottlingException"}


@pytest.mark.parametrize("conditional", [True, False])
def test_async_wrappers_run_off_the_event_loop(conditional: bool) -> None:
    ddb = ScriptedDdb({}, {"Responses": {"state": [item(key(1), b"x")]}})
    store = store_with(ddb, conditional=conditional)

    async def run():  # type: ignore[no-untyped-def]
        return await store.put_many([record(1)]), await store.get_many([key(1)])

    written, found = asyncio.run(run())
    store.close()
    assert written == PutResult({}, {}) and found.found == {key(1): b"x"}


def test_a_burst_of_writes_goes_out_at_the_end_of_the_loop_pass_without_lingering() -> None:
    store = CountingStore()

    async def run() -> list[tuple[bytes | None, str | None]]:
        acks = DurableAcks(store, linger_s=10)  # lookups would linger 10 s; writes do not linger
        results: list[tuple[bytes | None, str | None]] = []
        for n in range(10):  # as the callbacks of one SQS batch do, in one go
            acks.record(record(n), lambda stored, error: results.append((stored, error)))
        for _ in range(100):
            if len(results) == 10:
                break
            await asyncio.sleep(0.01)
        return results

    assert asyncio.run(asyncio.wait_for(run(), 2)) == [(None, None)] * 10
    assert store.put_sizes == [10]
