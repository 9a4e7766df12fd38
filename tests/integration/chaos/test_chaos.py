"""The chaos suite's short form (`make chaos` runs the long one): every scenario on the local twin
accounts for every message with nothing lost and nothing duplicated in the lake, and the
accounting itself catches a loss and a duplicate when they happen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ehrbridge.local import chaos
from ehrbridge.local.chaos import SCENARIOS, run_scenarios, scenario

# The demo group: both run whole pipelines on a twin, one at a time.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("demo")]


def test_every_scenario_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    results = {r.name: r for r in run_scenarios(size=6, workdir=tmp_path)}
    assert set(results) == {"bridge-kill-9", "sqs-outage", "handler-crash", "poison", "poller-every-fault"}
    for result in results.values():
        assert result.error is None, result
        assert result.lost == 0 and result.duplicated == 0 and result.in_flight == 0, result
    kill = results["bridge-kill-9"]
    assert kill.notes["kills"] == 2 and kill.notes["answers"]["no answer"] >= 2 and kill.delivered == 6
    outage = results["sqs-outage"]
    assert outage.notes["answers"]["AE"] >= 1 and outage.delivered == outage.messages_in == 6
    assert results["handler-crash"].delivered == 6
    poison = results["poison"]
    assert poison.notes["in_dlq_before_redrive"] == poison.notes["poisoned"] + 1  # + the invalid envelope
    assert poison.notes["redriven"] == poison.notes["poisoned"] and poison.notes["kept_invalid"] == 1
    assert any(reason.startswith("invalid envelope") for reason in poison.notes["dlq_reasons"])
    assert poison.delivered == 6 and poison.dead_lettered == 1
    polled = results["poller-every-fault"]
    assert polled.delivered == polled.messages_in == polled.notes["versions_in_scope"] > 0
    assert polled.notes["superseded_versions"] > 0  # the source changed under the crawl
    fired = polled.notes["faults"]  # every fault actually fired (a check that cannot pass with faults off)
    for kind in ("429_delta", "429_date", "429_epoch", "truncated", "outcome_in_200", "slow", "token_expired",
                 "mutated"):
        assert fired.get(kind, 0) > 0, (kind, fired)
    assert any(fired.get(str(status), 0) for status in (500, 502, 503, 504)), fired


def test_the_accounting_catches_a_lost_and_a_duplicated_message(tmp_path: Path) -> None:
    @scenario("sabotage", "drop one message from a queue, copy one lake object under another id")
    def sabotage(run: Any, size: int) -> list[str]:
        from ehrbridge.local.twin import local_client

        envelopes = run.publish_hl7(size, "S")
        sqs = local_client("sqs", run.twin.endpoint)
        got = sqs.receive_message(QueueUrl=run.twin.queues["hl7-inbound"], MaxNumberOfMessages=1)["Messages"]
        sqs.delete_message(QueueUrl=run.twin.queues["hl7-inbound"], ReceiptHandle=got[0]["ReceiptHandle"])
        run.drain()
        s3 = local_client("s3", run.twin.endpoint)
        lake = run.twin.buckets["lake"]
        key = s3.list_objects_v2(Bucket=lake, Prefix="lake/")["Contents"][0]["Key"]
        head = s3.head_object(Bucket=lake, Key=key)
        s3.copy_object(Bucket=lake, Key=key + ".copy", CopySource={"Bucket": lake, "Key": key},
                       Metadata={**head["Metadata"], "message-id": "another-id"}, MetadataDirective="REPLACE")
        return [e.correlation_id for e in envelopes]

    try:
        [result] = run_scenarios(["sabotage"], size=4, workdir=tmp_path)
    finally:
        SCENARIOS.pop("sabotage", None)
    assert result.error is None, result
    assert result.messages_in == 4 and result.lost == 1 and result.duplicated == 1 and not result.ok


def test_unknown_scenarios_are_named() -> None:
    with pytest.raises(ValueError, match="unknown scenario"):
        chaos.run_scenarios(["nope"])
