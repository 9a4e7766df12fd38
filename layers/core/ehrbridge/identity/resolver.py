"""Real-time resolution of one Patient to an enterprise patient, and the reconciliation operations.

resolve: block -> score each candidate record -> best enterprise vs runner-up -> link / review / new.
merge (ADT^A40): the surviving record keeps its identity, the retired one is folded in; never reversed.
unmerge, manual link, review decisions: manual decisions are sticky, the algorithm never overrides them.
Every change appends to the enterprise patient's history and yields a LinkChange (one event each).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from ehrbridge.identity import comparisons as cmp
from ehrbridge.identity.blocking import MAX_BUCKET, MAX_CANDIDATES, key_weight, query_keys, record_keys
from ehrbridge.identity.model import GENERATION_GATE, Grade, Model, PairScore, Thresholds
from ehrbridge.identity.normalize import Person, person_from_patient
from ehrbridge.identity.store import (
    Bucket,
    Commit,
    Enterprise,
    HistoryEvent,
    MpiStore,
    ReviewItem,
    SourceRecord,
)

Decision = Literal["link", "review", "new"]
_PERSON_CACHE_MAX = 300_000
_IDENTIFIER, _ADDRESS, _GIVEN = cmp.INDEX["identifier"], cmp.INDEX["address"], cmp.INDEX["given"]
# Same name a generation apart at one home, and another member of that home holds one of the two birth
# dates: a date keyed from the wrong member's line of the form is as likely as father and son, so a
# person looks (review), where the generation guard alone would answer certainly-not.
GENERATION_DATE_OF_ANOTHER_MEMBER = ("same name, born a generation apart, at one home where another member "
                                     "holds one of the two birth dates")


class ResolveError(ValueError):
    """The input cannot be resolved (e.g. a Patient without id). PHI-free text."""


@dataclass
class LinkChange:
    """One change of a source record's link: becomes one EventBridge event."""

    change: str
    tenant_id: str
    source_key: str
    enterprise_id: str
    previous_enterprise_id: str | None = None
    grade: str | None = None
    score: float | None = None
    by: str = "algorithm"
    reason: str | None = None
    review_id: str | None = None

    def to_detail(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Candidate:
    eid: str
    source_key: str
    score: PairScore


@dataclass
class Resolution:
    patient_id: str
    enterprise_id: str
    decision: Decision
    grade: Grade
    score: float
    candidates: int = 0
    review_id: str | None = None
    changes: list[LinkChange] = field(default_factory=list)
    round_trips: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"patient_id": self.patient_id, "enterprise_id": self.enterprise_id, "decision": self.decision,
                "grade": self.grade, "score": round(self.score, 6)}


def enterprise_id(tenant: str, *parts: str) -> str:
    """Deterministic: replaying the same messages yields the same enterprise ids."""
    digest = hashlib.sha256("\x1f".join((tenant, *parts)).encode()).hexdigest()
    return "ep-" + digest[:24]


def fingerprint(person: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(person, sort_keys=True).encode()).hexdigest()[:24]


def _outbox(rec: SourceRecord, message_id: str | None, changes: list[LinkChange]) -> None:
    rec.last_message_id = message_id
    rec.last_changes = [dict(c.__dict__) for c in changes]


class Resolver:
    def __init__(self, store: MpiStore, model: Model, *,
                 thresholds: Callable[[str], Thresholds] | None = None,
                 clock: Callable[[], datetime] | None = None, person_cache: int = _PERSON_CACHE_MAX) -> None:
        self.store = store
        self._person_cache = person_cache
        self.model = model
        self._thresholds = thresholds or (lambda tenant: model.thresholds)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._seq = 0
        self._persons: dict[str, tuple[str, Person]] = {}
        self._gated_best = float("-inf")
        self._same_system_eids: set[str] = set()

    # ---- helpers -------------------------------------------------------------------------------
    def _now(self) -> str:
        return self._clock().isoformat(timespec="microseconds")

    def _event(self, eid: str, change: str, source_key: str, by: str, **kw: Any) -> HistoryEvent:
        self._seq += 1
        at = self._now()
        seq = hashlib.sha256(f"{at}|{self._seq}|{source_key}|{change}|{eid}".encode()).hexdigest()[:12]
        return HistoryEvent(eid=eid, at=at, seq=seq, change=change, source_key=source_key, by=by, **kw)

    def _person(self, rec: SourceRecord) -> Person:
        cached = self._persons.get(rec.source_key)
        if cached is not None and cached[0] == rec.fingerprint:
            return cached[1]
        person = Person.from_dict(rec.person)
        if not self._person_cache:
            return person
        if len(self._persons) >= self._person_cache:
            self._persons.clear()
        self._persons[rec.source_key] = (rec.fingerprint, person)
        return person

    @staticmethod
    def _index(commit: Commit, rec: SourceRecord, new_keys: list[str], buckets: dict[str, Bucket]) -> None:
        """Bucket memberships: add the new keys, drop the ones the new demographics no longer give."""
        old = set(rec.keys)
        for key in new_keys:
            if key in old:
                continue
            bucket = buckets.get(key)
            if bucket is not None and bucket.full:
                continue
            commit.add(key, rec.source_key)
            if bucket is not None and len(bucket.members) + 1 >= MAX_BUCKET:
                commit.full_keys.add(key)
        for key in old - set(new_keys):
            commit.remove(key, rec.source_key)
        rec.keys = list(new_keys)

    def _score(self, person: Person, candidates: dict[str, SourceRecord], exclude: set[str],
               th: Thresholds) -> list[Candidate]:
        """Best record per enterprise patient, best enterprise first."""
        best: dict[str, Candidate] = {}
        score = self.model.score
        self._gated_best = float("-inf")
        self._same_system_eids = set()
        generation: list[tuple[SourceRecord, PairScore]] = []
        for rec in candidates.values():
            if rec.status != "active" or rec.eid in exclude:
                continue
            s = score(person, self._person(rec), th)
            if s.levels[_IDENTIFIER] == 1:
                self._same_system_eids.add(rec.eid)
            if s.household_only:
                # Another member of the household: never a match. Remembered, because a weaker
                # candidate must not win just because a better-fitting one was gated away.
                if s.weight > self._gated_best:
                    self._gated_best = s.weight
                if s.gate == GENERATION_GATE and s.levels[_ADDRESS] == 0:
                    generation.append((rec, s))
                continue
            cur = best.get(rec.eid)
            if cur is None or s.weight > cur.score.weight:
                best[rec.eid] = Candidate(rec.eid, rec.source_key, s)
        for rec, s in generation:
            if self._date_of_another_member(person, rec, candidates, exclude):
                s.gate = GENERATION_DATE_OF_ANOTHER_MEMBER
                cur = best.get(rec.eid)
                if cur is None or s.weight > cur.score.weight:
                    best[rec.eid] = Candidate(rec.eid, rec.source_key, s)
        return sorted(best.values(), key=lambda c: (-c.score.weight, c.source_key))

    def _date_of_another_member(self, person: Person, rec: SourceRecord, candidates: dict[str, SourceRecord],
                                exclude: set[str]) -> bool:
        """Another active record at the same home, of another enterprise patient and with a first name that
        agrees with neither record, born on the new record's or the candidate's birth date."""
        other = self._person(rec)
        dates = {d for d in (person.dob, other.dob) if d}
        for member in candidates.values():
            if member.eid == rec.eid or member.status != "active" or member.eid in exclude:
                continue
            m = self._person(member)
            if m.dob not in dates:
                continue
            levels_new, _ = cmp.compare(person, m)
            if levels_new[_ADDRESS] != 0 or levels_new[_GIVEN] in cmp.GIVEN_AGREES:
                continue
            if cmp.compare(other, m)[0][_GIVEN] not in cmp.GIVEN_AGREES:
                return True
        return False

    def _decide(self, ranked: list[Candidate], th: Thresholds) -> tuple[Decision, Grade, float, str | None]:
        if not ranked:
            return "new", "certainly-not", 0.0, None
        top = ranked[0].score
        grade = top.grade(th)
        reason = top.gate
        if grade == "certainly-not":
            # A weaker candidate gated as a household member but sharing a personal identifier still
            # goes to a person: put it first so the review item shows it.
            flagged = next((i for i, c in enumerate(ranked) if c.score.grade(th) != "certainly-not"), None)
            if flagged is not None:
                ranked.insert(0, ranked.pop(flagged))
                top = ranked[0].score
                grade, reason = top.grade(th), top.gate
        if grade == "certain" and ranked[0].eid in self._same_system_eids:
            # The patient already has another number from this record's system: linking would declare a
            # duplicate inside that system (two people of one name at one home look the same), so a person decides.
            grade, reason = "probable", "the patient has another number from the same system"
        if grade == "certain" and self._gated_best > top.weight:
            grade, reason = "probable", "a gated household member fits better"
        # A junior/senior kept for review only because another member holds one of the birth dates is
        # still a gated household member: it blocks a link only by fitting better (above), never as a
        # runner-up, so that rule turns some certainly-not answers into review and changes no link.
        runners = [c for c in ranked[1:] if c.score.gate != GENERATION_DATE_OF_ANOTHER_MEMBER]
        if grade == "certain" and runners:
            runner = runners[0].score
            if runner.probability >= th.review and top.weight - runner.weight < th.margin_bits:
                grade, reason = "probable", "runner-up too close"
        if grade == "certain":
            return "link", grade, top.probability, None
        if grade in ("probable", "possible"):
            return "review", grade, top.probability, reason
        return "new", grade, top.probability, None

    def _review_item(self, tenant: str, source_key: str, eid: str, person: Person, ranked: list[Candidate],
                     candidates: dict[str, SourceRecord], th: Thresholds, reason: str | None) -> ReviewItem:
        shown = []
        for cand in ranked[:3]:
            other = self._person(candidates[cand.source_key])
            shown.append({"eid": cand.eid, "source_key": cand.source_key,
                          "score": round(cand.score.probability, 6), "grade": cand.score.grade(th),
                          "weights": self.model.explain(person, other, th),
                          "levels": self.model.level_names(cand.score.levels), "gate": cand.score.gate})
        created = self._now()
        review_id = "rv-" + hashlib.sha256(f"{tenant}|{source_key}|{created}".encode()).hexdigest()[:20]
        if reason:
            shown[0]["reason"] = reason
        return ReviewItem(review_id=review_id, source_key=source_key, provisional_eid=eid, candidates=shown,
                          created_at=created)

    # ---- resolve ---------------------------------------------------------------------------------
    def resolve(self, tenant: str, patient: dict[str, Any], *, message_id: str | None = None) -> Resolution:
        source_key = patient.get("id")
        if not isinstance(source_key, str) or not source_key:
            raise ResolveError("Patient has no id")
        person = person_from_patient(patient)
        pdict = person.to_dict()
        fp = fingerprint(pdict)
        rt0 = self.store.round_trips
        th = self._thresholds(tenant)

        keys = query_keys(person)
        buckets = self.store.blocks(tenant, keys)
        hits: Counter[str] = Counter()
        for key in keys:
            bucket = buckets.get(key)
            if bucket is not None and not bucket.full:
                # Counter.update counts in C; a key of weight w counts w times. Members sorted, keys in the
                # query's order: equal counts then rank the same way in every process (a store returns a
                # bucket's members in no particular order), the records met on the more personal keys first.
                members = sorted(bucket.members)
                for _ in range(key_weight(key)):
                    hits.update(members)
        hits.pop(source_key, None)
        wanted = [sk for sk, _ in hits.most_common(MAX_CANDIDATES)]
        candidates = self.store.records(tenant, [*wanted, source_key])
        existing = candidates.pop(source_key, None)

        def done(res: Resolution) -> Resolution:
            res.candidates = len(candidates)
            res.round_trips = self.store.round_trips - rt0
            return res

        if existing is not None and existing.status == "retired":
            # A retired (merged-away) identifier resolves to its survivor; it is never re-matched.
            return done(Resolution(source_key, existing.eid, "link", "certain", 1.0))
        if existing is not None and existing.fingerprint == fp:
            # Same demographics again (a replay or an update with no identity change): nothing to do,
            # except re-sending the changes if this very message is being redelivered.
            decision: Decision = "review" if existing.review_id else (
                "new" if existing.link_source == "new" else "link")
            grade: Grade = "probable" if existing.review_id else "certain"
            replay = [LinkChange(**c) for c in existing.last_changes] \
                if message_id and existing.last_message_id == message_id else []
            return done(Resolution(source_key, existing.eid, decision, grade, existing.score or 1.0,
                                   review_id=existing.review_id, changes=replay))

        exclude = set(existing.not_eids) if existing else set()
        ranked = self._score(person, candidates, exclude, th)
        decision, grade, score, reason = self._decide(ranked, th)
        commit = Commit()
        changes: list[LinkChange] = []
        now = self._now()

        if existing is None:
            rec = SourceRecord(source_key=source_key, eid="", person=pdict, fingerprint=fp, score=score,
                               updated_at=now)
            self._index(commit, rec, record_keys(person), buckets)
            if decision == "link":
                rec.eid, rec.link_source = ranked[0].eid, "auto"
                commit.history.append(self._event(rec.eid, "linked", source_key, "algorithm", score=score,
                                                  message_id=message_id))
                changes.append(LinkChange("linked", tenant, source_key, rec.eid, grade=grade, score=score))
            else:
                rec.eid, rec.link_source = enterprise_id(tenant, source_key), "new"
                commit.enterprises.append(Enterprise(rec.eid, created_at=now))
                commit.history.append(self._event(rec.eid, "created", source_key, "algorithm",
                                                  message_id=message_id))
                changes.append(LinkChange("created", tenant, source_key, rec.eid, grade=grade, score=score))
                if decision == "review":
                    item = self._review_item(tenant, source_key, rec.eid, person, ranked, candidates, th, reason)
                    rec.review_id = item.review_id
                    commit.reviews.append(item)
                    commit.history.append(self._event(rec.eid, "review-opened", source_key, "algorithm",
                                                      score=score, reason=reason, message_id=message_id))
                    changes.append(LinkChange("review-opened", tenant, source_key, rec.eid, grade=grade,
                                              score=score, review_id=item.review_id, reason=reason))
            _outbox(rec, message_id, changes)
            commit.put(rec, None)
            self.store.commit(tenant, commit)
            return done(Resolution(source_key, rec.eid, decision, grade, score, review_id=rec.review_id,
                                   changes=changes))

        # Known record, new demographics: re-index, and relink only on algorithmic links.
        rec = copy.copy(existing)
        expected = existing.version
        rec.person, rec.fingerprint, rec.updated_at = pdict, fp, now
        self._index(commit, rec, record_keys(person), buckets)
        if existing.link_source in ("manual", "merge"):
            # A person's decision (or an ADT merge) stands; new demographics only refresh the index.
            _outbox(rec, message_id, changes)
            commit.put(rec, expected)
            self.store.commit(tenant, commit)
            return done(Resolution(source_key, rec.eid, "link", "certain", 1.0, changes=changes))

        own = next((c for c in ranked if c.eid == existing.eid), None)
        if decision == "link" and ranked[0].eid != existing.eid:
            old = existing.eid
            rec.eid, rec.link_source, rec.score = ranked[0].eid, "auto", score
            self._close_review(tenant, commit, rec, "linked on new evidence", "algorithm")
            commit.history.append(self._event(old, "relinked", source_key, "algorithm", from_eid=old,
                                              to_eid=rec.eid, score=score, reason="new evidence",
                                              message_id=message_id))
            commit.history.append(self._event(rec.eid, "relinked", source_key, "algorithm", from_eid=old,
                                              to_eid=rec.eid, score=score, reason="new evidence",
                                              message_id=message_id))
            changes.append(LinkChange("relinked", tenant, source_key, rec.eid, previous_enterprise_id=old,
                                      grade=grade, score=score, reason="new evidence"))
            if not self._has_other_members(candidates, old, source_key):
                commit.enterprises.append(Enterprise(old, status="merged", merged_into=rec.eid))
            _outbox(rec, message_id, changes)
            commit.put(rec, expected)
            self.store.commit(tenant, commit)
            return done(Resolution(source_key, rec.eid, "link", grade, score, changes=changes))
        if existing.review_id and decision == "new":
            # New evidence settles an open review as a new patient.
            self._close_review(tenant, commit, rec, "new patient on new evidence", "algorithm")
            changes.append(LinkChange("review-resolved", tenant, source_key, rec.eid, grade=grade, score=score,
                                      reason="new evidence"))
        if (own is None and existing.link_source == "auto" and self._has_other_members(candidates, existing.eid,
                                                                                       source_key)) \
                or (own is not None and own.score.probability < th.review):
            # The link no longer fits: never unlinked automatically, a person decides.
            if not rec.review_id:
                item = self._review_item(tenant, source_key, rec.eid, person, ranked or [], candidates, th,
                                         "link no longer supported") if ranked else None
                if item is not None:
                    rec.review_id = item.review_id
                    commit.reviews.append(item)
                    changes.append(LinkChange("review-opened", tenant, source_key, rec.eid, grade=grade,
                                              score=score, review_id=item.review_id,
                                              reason="link no longer supported"))
        elif decision == "review" and not rec.review_id and ranked[0].eid != existing.eid:
            item = self._review_item(tenant, source_key, rec.eid, person, ranked, candidates, th, reason)
            rec.review_id = item.review_id
            commit.reviews.append(item)
            changes.append(LinkChange("review-opened", tenant, source_key, rec.eid, grade=grade, score=score,
                                      review_id=item.review_id, reason=reason))
        _outbox(rec, message_id, changes)
        commit.put(rec, expected)
        self.store.commit(tenant, commit)
        out_decision: Decision = "review" if rec.review_id else ("new" if rec.link_source == "new" else "link")
        return done(Resolution(source_key, rec.eid, out_decision, grade, score, review_id=rec.review_id,
                               changes=changes))

    @staticmethod
    def _has_other_members(candidates: dict[str, SourceRecord], eid: str, source_key: str) -> bool:
        return any(r.eid == eid and r.source_key != source_key and r.status == "active"
                   for r in candidates.values())

    def _close_review(self, tenant: str, commit: Commit, rec: SourceRecord, resolution: str, by: str) -> None:
        if not rec.review_id:
            return
        item = self.store.review(tenant, rec.review_id)
        if item is not None and item.status == "open":
            item.status, item.resolution, item.resolved_by, item.resolved_at = "resolved", resolution, by, self._now()
            commit.reviews.append(item)
            commit.history.append(self._event(rec.eid, "review-resolved", rec.source_key, by, reason=resolution))
        rec.review_id = None

    # ---- reconciliation --------------------------------------------------------------------------
    def _load(self, tenant: str, source_key: str) -> SourceRecord:
        rec = self.store.records(tenant, [source_key]).get(source_key)
        if rec is None:
            raise ResolveError("unknown source patient")
        return rec

    def merge(self, tenant: str, survivor_key: str, retired_key: str, *, retired_patient: dict[str, Any] | None
              = None, message_id: str | None = None, by: str = "adt") -> list[LinkChange]:
        """ADT^A40: PID-3 survives, MRG-1 retires. Idempotent; a reversal is refused, never applied."""
        if survivor_key == retired_key:
            raise ResolveError("a patient cannot be merged into itself")
        recs = self.store.records(tenant, [survivor_key, retired_key])
        survivor = recs.get(survivor_key)
        if survivor is None:
            raise ResolveError("surviving patient is unknown; resolve it before merging")
        retired = recs.get(retired_key)
        if survivor.status == "retired" and survivor.retired_into == retired_key:
            # The opposite merge already happened: reversing it is the costliest error there is.
            commit = Commit(history=[self._event(survivor.eid, "merge-refused", retired_key, by,
                                                 reason="would reverse an earlier merge", message_id=message_id)])
            self.store.commit(tenant, commit)
            return [LinkChange("merge-refused", tenant, retired_key, survivor.eid, by=by,
                               reason="would reverse an earlier merge")]
        # A "survivor" that was itself merged away earlier carries its own survivor's enterprise id, so the
        # merge goes there.
        if retired is not None and retired.status == "retired" and retired.retired_into == survivor_key:
            # Replay: nothing to change; re-send the events if this very message is redelivered.
            if message_id and retired.last_message_id == message_id:
                return [LinkChange(**c) for c in retired.last_changes]
            return []
        now = self._now()
        commit = Commit()
        target = survivor.eid
        changes: list[LinkChange] = []
        moved: list[str] = []
        if retired is None:
            person = person_from_patient(retired_patient or {"id": retired_key})
            pdict = person.to_dict()
            retired = SourceRecord(source_key=retired_key, eid=target, person=pdict, fingerprint=fingerprint(pdict),
                                   updated_at=now)
            expected: int | None = None
            old_eid = None
        else:
            expected = retired.version
            old_eid = retired.eid
            if old_eid != target:
                for member in self.store.members(tenant, old_eid):
                    if member.source_key == retired_key:
                        continue
                    member.eid = target
                    commit.put(member, member.version)
                    moved.append(member.source_key)
                    changes.append(LinkChange("merged", tenant, member.source_key, target,
                                              previous_enterprise_id=old_eid, by=by))
                commit.enterprises.append(Enterprise(old_eid, status="merged", merged_into=target))
        rec = copy.copy(retired)
        rec.eid, rec.status, rec.retired_into, rec.link_source, rec.updated_at = target, "retired", survivor_key, \
            "merge", now
        for key in rec.keys:
            commit.remove(key, retired_key)  # the survivor carries the identity from now on
        rec.keys = []
        self._close_review(tenant, commit, rec, "merged", by)
        commit.put(rec, expected)
        for eid in {target, old_eid} - {None}:
            commit.history.append(self._event(str(eid), "merged", retired_key, by, from_eid=old_eid, to_eid=target,
                                              reason=f"retired into {survivor_key}", message_id=message_id,
                                              moved=moved))
        changes.insert(0, LinkChange("merged", tenant, retired_key, target, previous_enterprise_id=old_eid, by=by))
        _outbox(rec, message_id, changes)
        self.store.commit(tenant, commit)
        return changes

    def unmerge(self, tenant: str, source_key: str, *, by: str = "manual",
                reason: str | None = None) -> list[LinkChange]:
        """Undo a merge (restore the retired record and the members moved with it) or detach a link."""
        rec = self._load(tenant, source_key)
        commit = Commit()
        changes: list[LinkChange] = []
        current = rec.eid
        now = self._now()
        if rec.status == "retired":
            merge_event = next((e for e in reversed(self.store.history(tenant, current))
                                if e.change == "merged" and e.source_key == source_key), None)
            restore = merge_event.from_eid if merge_event and merge_event.from_eid else enterprise_id(
                tenant, source_key, "unmerge", str(rec.version))
            for member in self.store.members(tenant, current):
                if merge_event and member.source_key in merge_event.moved:
                    member.eid = restore
                    commit.put(member, member.version)
                    changes.append(LinkChange("unmerged", tenant, member.source_key, restore,
                                              previous_enterprise_id=current, by=by, reason=reason))
            new = copy.copy(rec)
            new.status, new.retired_into = "active", None
            person = Person.from_dict(rec.person)
            self._index(commit, new, record_keys(person), {})
        else:
            if len(self.store.members(tenant, current)) <= 1:
                raise ResolveError("record is not linked to anyone else")
            restore = enterprise_id(tenant, source_key, "unlink", str(rec.version))
            new = copy.copy(rec)
        new.eid, new.link_source, new.updated_at = restore, "manual", now
        new.not_eids = sorted({*rec.not_eids, current})
        commit.enterprises.append(Enterprise(restore, created_at=now))
        commit.put(new, rec.version)
        change = "unmerged" if rec.status == "retired" else "unlinked"
        for eid in (current, restore):
            commit.history.append(self._event(eid, change, source_key, by, from_eid=current, to_eid=restore,
                                              reason=reason))
        changes.insert(0, LinkChange(change, tenant, source_key, restore, previous_enterprise_id=current, by=by,
                                     reason=reason))
        self.store.commit(tenant, commit)
        return changes

    def link(self, tenant: str, source_key: str, eid: str, *, by: str = "manual",
             reason: str | None = None) -> list[LinkChange]:
        """A person links a record to an enterprise patient; the algorithm will never undo it."""
        rec = self._load(tenant, source_key)
        if rec.status == "retired":
            raise ResolveError("record was merged away; unmerge it first")
        target = self.store.enterprise(tenant, eid)
        if target is not None and target.status == "merged" and target.merged_into:
            eid = target.merged_into
        commit = Commit()
        old = rec.eid
        new = copy.copy(rec)
        new.eid, new.link_source, new.updated_at = eid, "manual", self._now()
        new.not_eids = [x for x in rec.not_eids if x != eid]
        self._close_review(tenant, commit, new, f"linked to {eid}", by)
        if old != eid:
            if len(self.store.members(tenant, old)) <= 1:
                commit.enterprises.append(Enterprise(old, status="merged", merged_into=eid))
            for e in {old, eid}:
                commit.history.append(self._event(e, "relinked", source_key, by, from_eid=old, to_eid=eid,
                                                  reason=reason or "manual"))
        commit.put(new, rec.version)
        self.store.commit(tenant, commit)
        return [LinkChange("relinked", tenant, source_key, eid, previous_enterprise_id=old, by=by,
                           reason=reason or "manual")] if old != eid else []

    def resolve_review(self, tenant: str, review_id: str, decision: Literal["link", "new"], *,
                       eid: str | None = None, by: str = "manual") -> list[LinkChange]:
        item = self.store.review(tenant, review_id)
        if item is None:
            raise ResolveError("unknown review item")
        if item.status != "open":
            raise ResolveError("review item already resolved")
        if decision == "link":
            target = eid or (item.candidates[0]["eid"] if item.candidates else None)
            if target is None:
                raise ResolveError("no enterprise patient to link to")
            return self.link(tenant, item.source_key, target, by=by, reason="review")
        rec = self._load(tenant, item.source_key)
        commit = Commit()
        new = copy.copy(rec)
        new.link_source, new.updated_at = "manual", self._now()
        new.not_eids = sorted({*rec.not_eids, *(c["eid"] for c in item.candidates if c["eid"] != rec.eid)})
        self._close_review(tenant, commit, new, "confirmed as a new patient", by)
        commit.put(new, rec.version)
        self.store.commit(tenant, commit)
        return [LinkChange("review-resolved", tenant, item.source_key, rec.eid, by=by,
                           reason="confirmed as a new patient", review_id=review_id)]
