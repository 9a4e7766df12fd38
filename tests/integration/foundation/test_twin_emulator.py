"""The twin's emulator (hardened moto, ``ehrbridge.local.emulator``) over HTTP, as the bridge and functions see it:
FIFO deduplication over SQS's 5-minute window, long polls that do not hold up senders, queue counts,
and DynamoDB transactions that stay atomic under concurrent requests."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from botocore.exceptions import ClientError

from ehrbridge.local.twin import local_client

pytestmark = pytest.mark.integration


def _send(sqs, url: str, dedup: str, group: str = "g1") -> None:  # type: ignore[no-untyped-def]
    sqs.send_message(QueueUrl=url, MessageBody=f"body-{dedup}", MessageGroupId=group, MessageDeduplicationId=dedup)


def _receive_all(sqs, url: str) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    out: list[dict] = []  # type: ignore[type-arg]
    while got := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=300).get("Messages"):
        out.extend(got)
        sqs.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])
    return out


def test_a_resend_after_delete_is_dropped_inside_the_dedup_window(twin) -> None:  # type: ignore[no-untyped-def]
    sqs = local_client("sqs", twin.endpoint)
    url = twin.queues["hl7-inbound"]
    _send(sqs, url, "m1")
    _send(sqs, url, "m1")  # a duplicate while the first is queued (moto already dropped this one)
    assert [m["Body"] for m in _receive_all(sqs, url)] == ["body-m1"]
    # Received and deleted: SQS still drops a resend for 5 minutes after the first send; moto as shipped did not.
    _send(sqs, url, "m1", group="another-group")
    sqs.send_message_batch(QueueUrl=url, Entries=[
        {"Id": "a", "MessageBody": "body-m1", "MessageGroupId": "g1", "MessageDeduplicationId": "m1"},
        {"Id": "b", "MessageBody": "body-m2", "MessageGroupId": "g1", "MessageDeduplicationId": "m2"}])
    assert [m["Body"] for m in _receive_all(sqs, url)] == ["body-m2"]


def test_a_long_poll_does_not_hold_up_senders(twin) -> None:  # type: ignore[no-untyped-def]
    url = twin.queues["normalize"]
    received: list[str] = []

    def poll() -> None:
        got = local_client("sqs", twin.endpoint).receive_message(QueueUrl=url, WaitTimeSeconds=5)
        received.extend(m["Body"] for m in got.get("Messages", []))

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.3)  # the poll is waiting inside the emulator
    _send(local_client("sqs", twin.endpoint), url, "while-polling")
    poller.join(timeout=10)
    # Had the waiting poll held the SQS lock, the send would have queued behind it and the poll returned empty.
    assert received == ["body-while-polling"]


def test_queue_counts_visible_and_in_flight(twin) -> None:  # type: ignore[no-untyped-def]
    sqs = local_client("sqs", twin.endpoint)
    url = twin.queues["identity"]
    for start in range(0, 30, 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "MessageBody": "x", "MessageGroupId": f"g{start + i}",
             "MessageDeduplicationId": f"d{start + i}"} for i in range(10)])
    assert len(sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=300)["Messages"]) == 10
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (attrs["ApproximateNumberOfMessages"], attrs["ApproximateNumberOfMessagesNotVisible"],
            attrs["ApproximateNumberOfMessagesDelayed"]) == ("20", "10", "0")
    assert attrs["FifoQueue"] == "true" and attrs["ContentBasedDeduplication"] == "false"


def _put(table: str, pk: str, sk: str, **extra: dict[str, str]) -> dict:  # type: ignore[type-arg]
    return {"Put": {"TableName": table, "Item": {"pk": {"S": pk}, "sk": {"S": sk}, **extra},
                    "ConditionExpression": "attribute_not_exists(pk)",
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}}


def test_concurrent_transactions_all_land_and_stay_atomic(twin, moto_server) -> None:  # type: ignore[no-untyped-def]
    table = twin.tables["state"]
    before = moto_server.stats()
    failures: list[str] = []

    def writer(worker: int) -> None:
        ddb = local_client("dynamodb", twin.endpoint)
        for round_ in range(4):
            try:
                ddb.transact_write_items(TransactItems=[_put(table, f"w{worker}", f"{round_}-{i}") for i in range(25)])
            except ClientError as err:
                failures.append(err.response["Error"]["Code"])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    ddb = local_client("dynamodb", twin.endpoint)
    assert failures == []
    assert ddb.scan(TableName=table, Select="COUNT")["Count"] == 4 * 4 * 25

    # One conflicting action cancels the whole transaction; its reason carries the stored item.
    with pytest.raises(ClientError) as raised:
        ddb.transact_write_items(TransactItems=[_put(table, "new", "1"), _put(table, "w0", "0-0")])
    reasons = raised.value.response["CancellationReasons"]
    assert [r["Code"] for r in reasons] == ["None", "ConditionalCheckFailed"]
    assert reasons[1]["Item"]["sk"] == {"S": "0-0"}
    assert "Item" not in ddb.get_item(TableName=table, Key={"pk": {"S": "new"}, "sk": {"S": "1"}})

    after = moto_server.stats()
    assert after["errors_total"] == before["errors_total"]
    assert after["requests"]["dynamodb"] - before["requests"]["dynamodb"] >= 17


def test_an_action_failing_half_way_leaves_nothing_written(twin) -> None:  # type: ignore[no-untyped-def]
    table = twin.tables["state"]
    ddb = local_client("dynamodb", twin.endpoint)
    ddb.put_item(TableName=table, Item={"pk": {"S": "kept"}, "sk": {"S": "1"}, "n": {"N": "1"}})
    key = str(uuid.uuid4())
    with pytest.raises(ClientError):
        # The update is only found invalid while writing (a string added to a number), after the puts.
        ddb.transact_write_items(TransactItems=[
            _put(table, key, "a"),
            {"Update": {"TableName": table, "Key": {"pk": {"S": "kept"}, "sk": {"S": "1"}},
                        "UpdateExpression": "SET n = n + :s", "ExpressionAttributeValues": {":s": {"S": "x"}}}},
            _put(table, key, "b")])
    assert "Item" not in ddb.get_item(TableName=table, Key={"pk": {"S": key}, "sk": {"S": "a"}})
    kept = ddb.get_item(TableName=table, Key={"pk": {"S": "kept"}, "sk": {"S": "1"}})["Item"]
    assert kept["n"] == {"N": "1"}
