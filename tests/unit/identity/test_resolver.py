"""Resolution decisions and reconciliation: link / review / new, A40 merge (never reversed), unmerge,
relink on new evidence, manual decisions surviving re-runs, append-only history, round trips."""

from __future__ import annotations

from typing import Any

import pytest

from ehrbridge.identity.comparisons import COMPARISONS
from ehrbridge.identity.model import Model, Thresholds, default_model
from ehrbridge.identity.resolver import ResolveError, Resolver, enterprise_id
from ehrbridge.identity.store import InMemoryMpiStore
from tests.unit.identity.helpers import MRN_A, StepClock, patient

T = "acme"


@pytest.fixture()
def store() -> InMemoryMpiStore:
    return InMemoryMpiStore()


@pytest.fixture()
def resolver(store: InMemoryMpiStore) -> Resolver:
    return Resolver(store, default_model(), clock=StepClock())


def test_first_record_is_a_new_enterprise_patient(resolver: Resolver) -> None:
    res = resolver.resolve(T, patient("a1"))
    assert (res.decision, res.grade) == ("new", "certainly-not")
    assert res.enterprise_id == enterprise_id(T, "a1")
    assert [c.change for c in res.changes] == ["created"]


def test_same_person_from_another_system_links(resolver: Resolver) -> None:
    first = resolver.resolve(T, patient("a1", ssn="536-22-1947"))
    res = resolver.resolve(T, patient("b1", given="Peggy", birth="1961-09-04", phone=None, ssn="536-22-1947"))
    assert (res.decision, res.grade) == ("link", "certain")
    assert res.enterprise_id == first.enterprise_id and res.score > 0.95
    assert [c.change for c in res.changes] == ["linked"]


def test_at_most_three_round_trips_per_record(resolver: Resolver, store: InMemoryMpiStore) -> None:
    for i in range(30):
        res = resolver.resolve(T, patient(f"a{i}", given=["Margaret", "Ann", "Lee", "Kim"][i % 4],
                                          birth=f"19{50 + i}-04-09"))
        assert res.round_trips <= 3
    res = resolver.resolve(T, patient("b0", given="Margaret", birth="1950-04-09"))
    assert res.round_trips == 3 and res.candidates > 5


def test_household_members_never_link_and_raise_no_review(resolver: Resolver) -> None:
    mother = resolver.resolve(T, patient("a1"))
    son = resolver.resolve(T, patient("b1", given="Daniel", birth="1994-12-02", gender="male"))
    twin1 = resolver.resolve(T, patient("a2", given="Olivia", birth="2015-06-01"))
    twin2 = resolver.resolve(T, patient("b2", given="Sophia", birth="2015-06-01"))
    assert son.decision == "new" and son.enterprise_id != mother.enterprise_id
    assert twin2.decision == "new" and twin2.enterprise_id != twin1.enterprise_id


def test_gate_with_agreeing_ssn_goes_to_review_not_link(resolver: Resolver, store: InMemoryMpiStore) -> None:
    resolver.resolve(T, patient("a1", ssn="536-22-1947"))
    res = resolver.resolve(T, patient("b1", given="Daniel", birth="1994-12-02", ssn="536-22-1947"))
    assert res.decision == "review" and res.grade in ("probable", "possible")
    item = store.review(T, res.review_id or "")
    assert item is not None and item.candidates[0]["gate"] == "first name and birth date both disagree"
    assert item.candidates[0]["weights"]["ssn"] > 0  # per-field weights for the reviewer


def test_placeholders_do_not_link_strangers(resolver: Resolver) -> None:
    common = dict(line=None, city=None, postal=None, phone="000-000-0000", ssn="999-99-9999", birth="1900-01-01")
    a = resolver.resolve(T, patient("a1", given="Test", family="Patient", **common))
    b = resolver.resolve(T, patient("b1", given="Test", family="Patient", **common))
    c = resolver.resolve(T, patient("b2", given=["Baby", "Boy"], family="Patient", **common))
    assert a.decision == b.decision == c.decision == "new"
    assert len({a.enterprise_id, b.enterprise_id, c.enterprise_id}) == 3


def test_runner_up_too_close_goes_to_review(store: InMemoryMpiStore) -> None:
    # Two existing enterprise patients that both fit the new record equally well (a duplicate pair
    # nobody merged yet): linking to either would be a guess.
    resolver = Resolver(store, default_model(), clock=StepClock())
    resolver.resolve(T, patient("a1", mrn_system=MRN_A))
    store_rec = store.records(T, ["a1"])["a1"]
    twin_copy = patient("a2", mrn_system="urn:other")
    resolver.link(T, "a1", store_rec.eid)  # manual, so a2 will not be linked to a1 by the next call either
    resolver.resolve(T, twin_copy)
    resolver.unmerge(T, "a2")  # now a1 and a2 are two enterprise patients with identical demographics
    res = resolver.resolve(T, patient("b1"))
    assert res.decision == "review"
    item = store.review(T, res.review_id or "")
    assert item is not None and item.candidates[0]["reason"] == "runner-up too close"


def test_a40_merge_moves_the_retired_identity_and_is_never_reversed(resolver: Resolver,
                                                                    store: InMemoryMpiStore) -> None:
    survivor = resolver.resolve(T, patient("a1"))
    retired = resolver.resolve(T, patient("a9", given="Daniel", birth="1994-12-02"))
    other = resolver.resolve(T, patient("b9", given="Daniel", birth="1994-12-02", ssn=None))  # links to a9
    assert other.enterprise_id == retired.enterprise_id
    changes = resolver.merge(T, "a1", "a9", message_id="m-40")
    assert {c.source_key for c in changes} == {"a9", "b9"}
    recs = store.records(T, ["a9", "b9"])
    assert recs["a9"].status == "retired" and recs["a9"].eid == survivor.enterprise_id
    assert recs["b9"].eid == survivor.enterprise_id  # the retired enterprise's members follow
    assert store.enterprise(T, retired.enterprise_id).merged_into == survivor.enterprise_id  # type: ignore[union-attr]
    # A later message for the retired id resolves to the survivor, without matching.
    again = resolver.resolve(T, patient("a9", given="Daniel", birth="1994-12-02"))
    assert again.enterprise_id == survivor.enterprise_id and again.decision == "link"
    # Replaying the merge changes nothing; the reverse merge is refused, never applied.
    assert resolver.merge(T, "a1", "a9") == []
    refused = resolver.merge(T, "a9", "a1")
    assert [c.change for c in refused] == ["merge-refused"]
    assert store.records(T, ["a1"])["a1"].status == "active"
    history = [e.change for e in store.history(T, survivor.enterprise_id)]
    assert history.count("merged") == 1 and "merge-refused" in history


def test_chained_merges_follow_the_survivor(resolver: Resolver, store: InMemoryMpiStore) -> None:
    top = resolver.resolve(T, patient("a1"))
    resolver.resolve(T, patient("a2", given="Daniel", birth="1994-12-02"))
    resolver.resolve(T, patient("a3", given="Ruth", birth="1931-07-19"))
    resolver.merge(T, "a1", "a2")
    resolver.merge(T, "a2", "a3")  # a2 was merged away: a3 goes to a2's survivor
    assert store.records(T, ["a3"])["a3"].eid == top.enterprise_id


def test_merge_of_a_patient_never_seen_before(resolver: Resolver, store: InMemoryMpiStore) -> None:
    survivor = resolver.resolve(T, patient("a1"))
    resolver.merge(T, "a1", "old7", retired_patient=patient("old7"))
    rec = store.records(T, ["old7"])["old7"]
    assert rec.status == "retired" and rec.eid == survivor.enterprise_id and rec.keys == []
    with pytest.raises(ResolveError):
        resolver.merge(T, "nobody", "a1")
    with pytest.raises(ResolveError):
        resolver.merge(T, "a1", "a1")


def test_unmerge_restores_the_retired_enterprise_and_its_members(resolver: Resolver,
                                                                 store: InMemoryMpiStore) -> None:
    resolver.resolve(T, patient("a1"))
    retired = resolver.resolve(T, patient("a9", given="Daniel", birth="1994-12-02"))
    resolver.resolve(T, patient("b9", given="Daniel", birth="1994-12-02"))
    resolver.merge(T, "a1", "a9")
    changes = resolver.unmerge(T, "a9", reason="wrong patient merged")
    assert {c.source_key for c in changes} == {"a9", "b9"}
    recs = store.records(T, ["a9", "b9"])
    assert recs["a9"].status == "active" and recs["a9"].eid == retired.enterprise_id
    assert recs["b9"].eid == retired.enterprise_id
    assert recs["a9"].link_source == "manual" and store.records(T, ["a1"])["a1"].eid in recs["a9"].not_eids
    # The algorithm does not glue it back on the next message.
    again = resolver.resolve(T, patient("a9", given="Daniel", birth="1994-12-03"))
    assert again.enterprise_id == retired.enterprise_id


def test_unlink_keeps_the_record_apart_from_then_on(resolver: Resolver, store: InMemoryMpiStore) -> None:
    first = resolver.resolve(T, patient("a1"))
    linked = resolver.resolve(T, patient("b1"))
    assert linked.enterprise_id == first.enterprise_id
    changes = resolver.unmerge(T, "b1")
    assert changes[0].change == "unlinked" and changes[0].previous_enterprise_id == first.enterprise_id
    new_eid = changes[0].enterprise_id
    # Re-running the same record (and new demographics) never relinks it: the decision was manual.
    assert resolver.resolve(T, patient("b1")).enterprise_id == new_eid
    assert resolver.resolve(T, patient("b1", phone="(518) 555-9999")).enterprise_id == new_eid
    with pytest.raises(ResolveError):
        resolver.unmerge(T, "a1")  # alone in its enterprise patient now


def test_relink_on_new_evidence(resolver: Resolver, store: InMemoryMpiStore) -> None:
    target = resolver.resolve(T, patient("a1", ssn="536-22-1947"))
    # First registration is too thin to link: only a surname and a city agree (a household, not a person).
    thin = resolver.resolve(T, patient("b1", given=None, birth=None, line=None, phone=None, postal=None))
    assert thin.decision == "new" and thin.enterprise_id != target.enterprise_id
    # The same source record comes back complete: it now links, the review closes, the change is an event.
    res = resolver.resolve(T, patient("b1", ssn="536-22-1947"))
    assert res.decision == "link" and res.enterprise_id == target.enterprise_id
    assert res.changes[0].change == "relinked" and res.changes[0].previous_enterprise_id == thin.enterprise_id
    assert store.enterprise(T, thin.enterprise_id).status == "merged"  # type: ignore[union-attr]
    assert store.reviews(T) == []


def test_review_decisions_are_manual_and_survive_reruns(resolver: Resolver, store: InMemoryMpiStore) -> None:
    resolver.resolve(T, patient("a1", ssn="536-22-1947"))
    res = resolver.resolve(T, patient("b1", given="Daniel", birth="1994-12-02", ssn="536-22-1947"))
    assert res.decision == "review" and store.reviews(T)[0].review_id == res.review_id
    resolver.resolve_review(T, res.review_id or "", "new", by="manual:nurse")
    assert store.reviews(T) == [] and store.reviews(T, "resolved")[0].resolved_by == "manual:nurse"
    rec = store.records(T, ["b1"])["b1"]
    assert rec.link_source == "manual"
    # Re-running the same and slightly changed data never overturns the person's decision.
    for variant in (patient("b1", given="Daniel", birth="1994-12-02", ssn="536-22-1947"),
                    patient("b1", given="Daniel", birth="1994-12-02", ssn="536-22-1947", email="d@mail.org")):
        assert resolver.resolve(T, variant).enterprise_id == rec.eid
    with pytest.raises(ResolveError):
        resolver.resolve_review(T, res.review_id or "", "link")


def test_review_resolved_as_link(resolver: Resolver, store: InMemoryMpiStore) -> None:
    a = resolver.resolve(T, patient("a1", ssn="536-22-1947"))
    res = resolver.resolve(T, patient("b1", given="Daniel", birth="1994-12-02", ssn="536-22-1947"))
    changes = resolver.resolve_review(T, res.review_id or "", "link")
    assert changes[0].change == "relinked" and changes[0].enterprise_id == a.enterprise_id
    assert store.records(T, ["b1"])["b1"].link_source == "manual"
    assert resolver.resolve(T, patient("b1", given="Daniel", birth="1994-12-02", ssn="536-22-1947",
                                       email="x@mail.org")).enterprise_id == a.enterprise_id


def test_history_is_append_only_and_complete(resolver: Resolver, store: InMemoryMpiStore) -> None:
    a = resolver.resolve(T, patient("a1"))
    resolver.resolve(T, patient("b1"))
    resolver.unmerge(T, "b1")
    events = store.history(T, a.enterprise_id)
    assert [e.change for e in events] == ["created", "linked", "unlinked"]
    assert len({(e.at, e.seq) for e in events}) == len(events)


def test_replayed_message_resends_its_changes_and_changes_nothing(resolver: Resolver,
                                                                  store: InMemoryMpiStore) -> None:
    resolver.resolve(T, patient("a1"))
    first = resolver.resolve(T, patient("b1"), message_id="msg-1")
    before = store.records(T, ["b1"])["b1"].version
    again = resolver.resolve(T, patient("b1"), message_id="msg-1")
    assert [c.__dict__ for c in again.changes] == [c.__dict__ for c in first.changes]
    assert store.records(T, ["b1"])["b1"].version == before
    assert resolver.resolve(T, patient("b1"), message_id="msg-2").changes == []


def test_thresholds_are_per_tenant(store: InMemoryMpiStore) -> None:
    strict = Thresholds(link=1 - 1e-12, review=0.2)
    resolver = Resolver(store, default_model(), thresholds=lambda t: strict if t == "strict" else
                        default_model().thresholds)
    for tenant in ("strict", "easy"):
        resolver.resolve(tenant, patient("a1", phone=None, line=None, postal=None))
    easy = resolver.resolve("easy", patient("b1", phone=None, line=None, postal=None, birth="1961-04-08"))
    tight = resolver.resolve("strict", patient("b1", phone=None, line=None, postal=None, birth="1961-04-08"))
    assert easy.decision == "link" and tight.decision == "review"


def test_patient_without_id_is_an_error(resolver: Resolver) -> None:
    with pytest.raises(ResolveError, match="no id"):
        resolver.resolve(T, {"resourceType": "Patient"})


def test_unknown_model_schema_is_rejected() -> None:
    with pytest.raises(Exception, match="levels"):
        Model(version="x", prior=0.1, m=[[0.5]] * len(COMPARISONS), u=[[0.5]] * len(COMPARISONS))


def test_junior_senior_at_one_home_goes_to_review_when_another_member_holds_one_birth_date() -> None:
    from ehrbridge.identity.resolver import GENERATION_DATE_OF_ANOTHER_MEMBER

    def home(with_sister_born: str | None) -> Resolver:
        resolver = Resolver(InMemoryMpiStore(), default_model(), clock=StepClock())
        resolver.resolve(T, patient("a1", given=["Daniel", "R"], birth="1960-03-05", gender="male"))
        if with_sister_born:
            resolver.resolve(T, patient("a2", given="Sophia", birth=with_sister_born))
        return resolver

    son = patient("b1", given=["Daniel", "R"], birth="1994-07-11", gender="male")
    # Father and son alone: the generation guard answers certainly-not, no review item.
    res = home(None).resolve(T, son)
    assert (res.decision, res.grade, res.review_id) == ("new", "certainly-not", None)
    # A sister born on a day of her own changes nothing.
    assert home("1996-02-20").resolve(T, son).decision == "new"
    # The sister holds the son's birth date: the father's record may carry a date keyed from her line,
    # so a person looks; never an automatic link.
    resolver = home("1994-07-11")
    res = resolver.resolve(T, son)
    assert res.decision == "review" and res.enterprise_id != enterprise_id(T, "a1")
    item = resolver.store.review(T, res.review_id)
    assert item is not None and item.candidates[0]["source_key"] == "a1"
    assert item.candidates[0]["reason"] == item.candidates[0]["gate"] == GENERATION_DATE_OF_ANOTHER_MEMBER


def test_candidates_do_not_depend_on_the_order_the_store_returns_bucket_members() -> None:
    # More records share the query's blocking keys than are scored (MAX_CANDIDATES): ties must be broken
    # the same way whatever order a store (DynamoDB, or a set in memory) hands the members back in.
    from ehrbridge.identity.blocking import MAX_CANDIDATES

    class ReversedStore(InMemoryMpiStore):
        def blocks(self, tenant: str, keys: Any) -> dict[str, Any]:
            out = super().blocks(tenant, keys)
            for bucket in out.values():
                bucket.members.reverse()
            return out

    seen: list[list[str]] = []
    for store in (InMemoryMpiStore(), ReversedStore()):
        resolver = Resolver(store, default_model(), clock=StepClock())
        for i in range(MAX_CANDIDATES + 10):
            resolver.resolve(T, patient(f"a{i:02d}", given=f"Name{chr(65 + i % 26)}{chr(65 + i // 26)}",
                                        family=f"Family{chr(65 + i % 26)}", line=f"{i} Oak St"))
        candidates: list[str] = []
        score = resolver._score

        def spy(person: Any, cands: dict[str, Any], exclude: set[str], th: Thresholds,
                _score: Any = score, _out: list[str] = candidates) -> Any:
            _out.extend(sorted(cands))
            return _score(person, cands, exclude, th)

        resolver._score = spy  # type: ignore[method-assign]
        resolver.resolve(T, patient("b1", given="Rose", family="Newman", line="1 Elm St"))
        seen.append(candidates)
    assert len(seen[0]) == MAX_CANDIDATES and seen[0] == seen[1]


def test_a_junior_senior_kept_for_review_does_not_block_a_link_as_runner_up() -> None:
    from ehrbridge.identity.model import PairScore
    from ehrbridge.identity.resolver import GENERATION_DATE_OF_ANOTHER_MEMBER, Candidate

    resolver = Resolver(InMemoryMpiStore(), default_model(), clock=StepClock())
    resolver._same_system_eids, resolver._gated_best = set(), float("-inf")
    th = Thresholds()
    own = Candidate("e1", "a1", PairScore(20.0, 0.999999, [0] * len(COMPARISONS), False, None))
    father = Candidate("e2", "a2", PairScore(16.0, 0.99998, [0] * len(COMPARISONS), False,
                                             GENERATION_DATE_OF_ANOTHER_MEMBER))
    assert resolver._decide([own, father], th)[0] == "link"
    # Any other candidate that close still stops the link.
    other = Candidate("e3", "a3", PairScore(16.0, 0.99998, [0] * len(COMPARISONS), False, None))
    assert resolver._decide([own, other], th)[:2] == ("review", "probable")
