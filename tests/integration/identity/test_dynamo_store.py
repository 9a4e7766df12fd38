"""The MPI on moto DynamoDB (the twin's mpi table): same behaviour as in memory, <= 3 round trips."""

from __future__ import annotations

import pytest

from ehrbridge.identity.dynamo_store import DynamoMpiStore
from ehrbridge.identity.model import default_model
from ehrbridge.identity.resolver import Resolver
from ehrbridge.identity.store import Commit, ConflictError
from ehrbridge.identity.synth import household_linkage_set
from ehrbridge.local.twin import local_client
from tests.unit.identity.helpers import StepClock, patient

pytestmark = pytest.mark.integration
T = "acme"


@pytest.fixture()
def store(twin) -> DynamoMpiStore:  # type: ignore[no-untyped-def]
    return DynamoMpiStore(twin.tables["mpi"], client=local_client("dynamodb", twin.endpoint))


def test_resolve_stream_within_three_round_trips(store: DynamoMpiStore) -> None:
    resolver = Resolver(store, default_model(), clock=StepClock())
    a, b = household_linkage_set(12, seed=21)
    decisions = set()
    for p in a + b:
        res = resolver.resolve(T, {k: v for k, v in p.items() if k not in ("truth", "case")})
        decisions.add(res.decision)
        assert res.round_trips <= 3, (p["id"], res.round_trips)
    assert "link" in decisions and "new" in decisions
    # Blocking keys are hashed: no birth date or phone number in any key.
    items = local_client("dynamodb", store.ddb.meta.endpoint_url).scan(TableName=store.table)["Items"]
    keys = " ".join(i["pk"]["S"] for i in items)
    assert "#BK#" in keys and "dob:" not in keys and "ph:" not in keys


def test_merge_unmerge_history_and_reviews_on_dynamodb(store: DynamoMpiStore) -> None:
    resolver = Resolver(store, default_model(), clock=StepClock())
    s = resolver.resolve(T, patient("a1", ssn="536-22-1947"))
    r = resolver.resolve(T, patient("a9", given="Daniel", birth="1994-12-02"))
    resolver.resolve(T, patient("b9", given="Daniel", birth="1994-12-02"))
    review = resolver.resolve(T, patient("b1", given="Walter", birth="1930-01-15", ssn="536-22-1947"))
    assert review.decision == "review"
    count, oldest = store.review_backlog(T)
    assert count == 1 and oldest is not None
    resolver.merge(T, "a1", "a9", message_id="m40")
    assert {m.source_key for m in store.members(T, s.enterprise_id)} == {"a1", "a9", "b9"}
    assert resolver.merge(T, "a9", "a1")[0].change == "merge-refused"
    resolver.unmerge(T, "a9")
    assert {m.source_key for m in store.members(T, r.enterprise_id)} == {"a9", "b9"}
    changes = [e.change for e in store.history(T, s.enterprise_id)]
    assert changes[:1] == ["created"] and "merged" in changes and "unmerged" in changes
    resolver.resolve_review(T, review.review_id or "", "new")
    assert store.review_backlog(T) == (0, None)
    store.put_settings(T, {"thresholds": {"link": 0.99}})
    assert store.settings(T) == {"thresholds": {"link": 0.99}}


def test_concurrent_writer_is_detected(store: DynamoMpiStore) -> None:
    resolver = Resolver(store, default_model(), clock=StepClock())
    resolver.resolve(T, patient("a1"))
    stale = store.records(T, ["a1"])["a1"]
    resolver.resolve(T, patient("a1", phone="(518) 555-9876"))  # someone else updated it
    commit = Commit()
    commit.put(stale, stale.version)
    with pytest.raises(ConflictError):
        store.commit(T, commit)


def test_history_is_append_only(store: DynamoMpiStore) -> None:
    resolver = Resolver(store, default_model(), clock=StepClock())
    res = resolver.resolve(T, patient("a1"))
    [event] = store.history(T, res.enterprise_id)
    commit = Commit(history=[event])  # the same event again
    with pytest.raises(ConflictError):
        store.commit(T, commit)
