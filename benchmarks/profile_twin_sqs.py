"""Where the twin's SQS spends its time as a FIFO queue fills (moto in-process, no HTTP).

Fills a FIFO queue (KMS key and redrive policy set, as provisioned) with batches of 10 x 2 KB
messages over 50 message groups up to ``--depth`` with nothing consuming, printing the time per 500
messages; then times ``--cycles`` receive(10) + delete-batch cycles at that depth, and prints a
cProfile of the sends above ``--profile-from``. ``--stock`` measures moto as shipped, otherwise
with the twin's patches (``ehrbridge.local.emulator.harden_moto``). Not part of ``make bench``: a
diagnostic (moto as shipped takes minutes at depth 2,000).

    python benchmarks/profile_twin_sqs.py [--stock] [--depth 2000] [--profile-from 1500] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "layers" / "core"))


def run(depth: int, profile_from: int, cycles: int, top: int) -> None:
    import boto3
    from moto import mock_aws

    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        dlq = sqs.create_queue(QueueName="profile-dlq.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        url = sqs.create_queue(QueueName="profile.fifo", Attributes={
            "FifoQueue": "true", "KmsMasterKeyId": "alias/profile",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5})})["QueueUrl"]
        body = "x" * 2000
        profile = cProfile.Profile()
        started = time.perf_counter()
        sent = 0
        while sent < depth:
            if sent == profile_from:
                profile.enable()
            sqs.send_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "MessageBody": f"{body}{sent + i}", "MessageGroupId": f"g{(sent + i) % 50}",
                 "MessageDeduplicationId": f"d{sent + i}"} for i in range(10)])
            sent += 10
            if sent % 500 == 0:
                print(f"sent {sent - 500}-{sent}: {time.perf_counter() - started:.2f} s", flush=True)
                started = time.perf_counter()
        profile.disable()
        started = time.perf_counter()
        for _ in range(cycles):
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"])["Messages"]
            sqs.delete_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])
        print(f"{cycles} receive+delete cycles at depth ~{depth}: {time.perf_counter() - started:.2f} s")
        if profile_from < depth:
            print(f"profile of the sends from depth {profile_from} to {depth}:")
            pstats.Stats(profile).sort_stats("tottime").print_stats(top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stock", action="store_true", help="moto as shipped (no twin patches)")
    parser.add_argument("--depth", type=int, default=2000)
    parser.add_argument("--profile-from", type=int, default=1500)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if not args.stock:
        from ehrbridge.local.emulator import harden_moto

        harden_moto()
    print(f"moto {'as shipped' if args.stock else 'with the twin patches'}")
    run(args.depth, args.profile_from, args.cycles, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
