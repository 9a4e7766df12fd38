"""ADT feeds the FHIR poller's roster: the normalizer records the PID-3 identifier, idempotently, no PHI logged."""

from __future__ import annotations

import io

import pytest

from ehrbridge.aws.s3 import InMemoryBlobStore
from ehrbridge.aws.sqs import InMemoryPublisher
from ehrbridge.contracts.envelope import new_envelope
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.contracts.tenant_store import InMemoryTenantStore
from ehrbridge.normalize.roster import feeds_roster, roster_identifier
from ehrbridge.normalize.stage import NormalizerStage
from ehrbridge.pipeline.stages import Quarantine
from ehrbridge.poll.cursor import InMemoryCursorStore, identifier_key
from tests.unit.normalize.conftest import EVENTS

MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.999.1"  # demo-health's MRN assigning authority
ADT = (b"MSH|^~\\&|DEMOADT|HOSP|EHR|X|20240102030405||ADT^{event}^ADT_A01|C{event}|P|2.5.1\r"
       b"EVN|{event}|20240102030405\r"
       b"PID|1||SECRETMRN^^^MRN^MR~998877^^^GHH^PI||ZEBRAFAMILY^QUINTESSA||19800101|F|||||||||||123-45-6789\r"
       b"PV1|1|I|W^1^1\r")
A40 = (b"MSH|^~\\&|DEMOADT|HOSP|EHR|X|20240102030405||ADT^A40^ADT_A39|M1|P|2.5.1\r"
       b"EVN|A40|20240102030405\r"
       b"PID|1||SURVIVORMRN^^^MRN^MR||ZEBRAFAMILY^QUINTESSA||19800101|F\r"
       b"MRG|OLDMRN^^^MRN^MR\r")
ORU = (b"MSH|^~\\&|DEMOLAB|HOSP|EHR|X|20240102030405||ORU^R01^ORU_R01|L77|P|2.5.1\r"
       b"PID|1||SECRETMRN^^^MRN^MR||ZEBRAFAMILY^QUINTESSA||19800101|F\r"
       b"OBR|1|P1|F1|24323-8^CMP^LN|||20240102010000\r"
       b"OBX|1|NM|2345-7^Glucose^LN||98|mg/dL|70-99|N|||F\r")


def adt(event: str) -> bytes:
    return ADT.replace(b"{event}", event.encode())


@pytest.fixture()
def epic_tenant() -> TenantConfig:
    base = TenantConfig.from_yaml(EVENTS / "tenants" / "demo-health.yaml")
    return TenantConfig.model_validate({**base.model_dump(), "vendor": "epic",
                                        "fhir_base_url": "https://ehr.example.org/fhir/R4"})


def stage_for(tenant: TenantConfig, roster: InMemoryCursorStore) -> tuple[NormalizerStage, InMemoryPublisher]:
    out = InMemoryPublisher()
    quarantine = Quarantine(InMemoryBlobStore("quarantine"), InMemoryPublisher())
    return NormalizerStage(InMemoryTenantStore([tenant]).get, out, quarantine, roster=roster), out


def envelope(raw: bytes, kind: str, tenant_id: str = "demo-health"):  # type: ignore[no-untyped-def]
    return new_envelope(tenant_id=tenant_id, source="hl7v2", kind=kind, body=raw, natural_key=["src", raw],
                        attributes={"source_id": "demo-adt", "charset": "ASCII", "version": "2.5.1"})




@pytest.mark.parametrize("event", ["A01", "A04", "A08", "A28", "A31"])
def test_adt_records_the_mrn_as_an_identifier_roster_entry(epic_tenant: TenantConfig, event: str) -> None:
    roster = InMemoryCursorStore()
    stage, out = stage_for(epic_tenant, roster)
    assert stage(envelope(adt(event), f"ADT^{event}")).ok
    [entry] = roster.pending_roster_identifiers("demo-health")
    # The MR-typed PID-3 repetition, system as the normalizer maps its assigning authority (not the PI, not SSN).
    assert (entry.system, entry.value, entry.attempts) == (MRN_SYSTEM, "SECRETMRN", 0)
    assert entry.key == identifier_key(MRN_SYSTEM, "SECRETMRN")
    assert roster.roster("demo-health") == []  # no Patient id yet: the poller resolves it
    assert len(out.sent) == 1  # the message still flows on


def test_redelivery_is_harmless_and_counted_once(epic_tenant: TenantConfig, capsys: pytest.CaptureFixture[str]) -> None:
    roster = InMemoryCursorStore()
    stage, _ = stage_for(epic_tenant, roster)
    for _ in range(2):
        assert stage(envelope(adt("A08"), "ADT^A08")).ok
    assert stage(envelope(adt("A31"), "ADT^A31")).ok  # another event, same patient
    assert len(roster.pending_roster_identifiers("demo-health")) == 1
    emitted = capsys.readouterr().out
    assert len([line for line in emitted.splitlines() if '"RosterFed":' in line]) == 1


def test_a40_merge_records_the_surviving_patient(epic_tenant: TenantConfig) -> None:
    roster = InMemoryCursorStore()
    stage, _ = stage_for(epic_tenant, roster)
    assert stage(envelope(A40, "ADT^A40")).ok
    assert [e.value for e in roster.pending_roster_identifiers("demo-health")] == ["SURVIVORMRN"]


def test_only_adts_for_tenants_polled_per_patient_feed_the_roster(epic_tenant: TenantConfig) -> None:
    roster = InMemoryCursorStore()
    stage, _ = stage_for(epic_tenant, roster)
    assert stage(envelope(ORU, "ORU^R01")).ok
    assert roster.pending_roster_identifiers("demo-health") == []
    generic = TenantConfig.from_yaml(EVENTS / "tenants" / "demo-health.yaml")  # no FHIR server, no patient= need
    assert not feeds_roster(generic, "ADT^A01")
    assert not feeds_roster(TenantConfig.model_validate({**generic.model_dump(), "vendor": "generic",
                                                         "fhir_base_url": "https://x.example/fhir"}), "ADT^A01")
    assert feeds_roster(epic_tenant, "ADT^A04") and not feeds_roster(epic_tenant, "ORU^R01")
    stage, _ = stage_for(generic, roster)
    assert stage(envelope(adt("A04"), "ADT^A04")).ok
    assert roster.pending_roster_identifiers("demo-health") == []


def test_identifier_choice_prefers_mr_and_never_ssn() -> None:
    def bundle(*identifiers: dict[str, object]) -> dict[str, object]:
        return {"entry": [{"resource": {"resourceType": "Patient", "identifier": list(identifiers)}}]}

    ssn = {"type": {"coding": [{"code": "SS"}]}, "system": "http://hl7.org/fhir/sid/us-ssn", "value": "1"}
    pi = {"type": {"coding": [{"code": "PI"}]}, "system": "urn:pi", "value": "2"}
    mr = {"type": {"coding": [{"code": "MR"}]}, "system": "urn:mr", "value": "3"}
    assert roster_identifier(bundle(ssn, pi, mr)) == ("urn:mr", "3")
    assert roster_identifier(bundle(ssn, pi)) == ("urn:pi", "2")
    assert roster_identifier(bundle(ssn)) is None
    assert roster_identifier(bundle({"value": "no-system"})) is None
    assert roster_identifier({"entry": []}) is None


def test_no_mrn_in_logs_or_metrics(epic_tenant: TenantConfig, log_buffer: io.StringIO,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    stage, _ = stage_for(epic_tenant, InMemoryCursorStore())
    stage(envelope(adt("A04"), "ADT^A04"))
    stage(envelope(A40, "ADT^A40"))
    emitted = log_buffer.getvalue() + capsys.readouterr().out
    assert "RosterFed" in emitted
    for phi in ("SECRETMRN", "SURVIVORMRN", "998877", "ZEBRAFAMILY", "123-45-6789"):
        assert phi not in emitted


def test_a40_retires_the_merged_away_entry_and_its_patient_id(epic_tenant: TenantConfig,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    roster = InMemoryCursorStore()
    stage, _ = stage_for(epic_tenant, roster)
    roster.add_roster_identifier("demo-health", MRN_SYSTEM, "OLDMRN")  # an earlier ADT, resolved by the poller
    [old] = roster.pending_roster_identifiers("demo-health")
    roster.resolve_roster_identifier("demo-health", old.key, "epic-old-1")
    roster.add_to_roster("demo-health", {"epic-other"})
    assert stage(envelope(A40, "ADT^A40")).ok
    assert [e.value for e in roster.pending_roster_identifiers("demo-health")] == ["SURVIVORMRN"]
    assert roster.roster("demo-health") == ["epic-other"]  # the merged-away id is crawled no more
    assert '"RosterRetired":' in capsys.readouterr().out
    # Re-delivery of the A40: nothing left to retire, the survivor is not doubled, no second metric.
    assert stage(envelope(A40, "ADT^A40")).ok
    assert len(roster.pending_roster_identifiers("demo-health")) == 1
    assert '"RosterRetired":' not in capsys.readouterr().out


def test_merged_identifiers_come_from_the_replaced_by_patient_only() -> None:
    from ehrbridge.normalize.roster import merged_identifiers

    mr = {"type": {"coding": [{"code": "MR"}]}}
    survivor = {"resourceType": "Patient", "identifier": [{**mr, "system": "urn:mr", "value": "NEW"}],
                "link": [{"other": {"reference": "Patient/x"}, "type": "replaces"}]}
    retired = {"resourceType": "Patient", "active": False, "identifier": [{**mr, "system": "urn:mr", "value": "OLD"}],
               "link": [{"other": {"reference": "Patient/y"}, "type": "replaced-by"}]}
    # Whatever the entry order, the survivor feeds the roster and the merged-away one retires.
    for entries in ([retired, survivor], [survivor, retired]):
        bundle = {"entry": [{"resource": r} for r in entries]}
        assert roster_identifier(bundle) == ("urn:mr", "NEW")
        assert merged_identifiers(bundle) == [("urn:mr", "OLD")]
    assert merged_identifiers({"entry": [{"resource": survivor}]}) == []


def test_expiry_in_memory_follows_activity() -> None:
    now = [1000.0]
    store = InMemoryCursorStore(roster_expiry_s=100.0, clock=lambda: now[0])
    store.add_roster_identifier("t", "urn:mr", "A")
    store.add_to_roster("t", {"p1"})
    now[0] = 1090.0
    assert not store.add_roster_identifier("t", "urn:mr", "A")  # another ADT: activity, not a new entry
    now[0] = 1150.0
    assert store.roster("t") == [] and len(store.pending_roster_identifiers("t")) == 1
    now[0] = 1200.0
    assert store.pending_roster_identifiers("t") == []
    assert store.add_roster_identifier("t", "urn:mr", "A")  # after expiry a new ADT starts afresh
    assert store.pending_roster_identifiers("t")[0].attempts == 0


def test_unresolved_entries_back_off_exponentially_up_to_six_hours() -> None:
    from ehrbridge.poll.cursor import RETRY_MAX_S, RosterIdentifier

    fresh = RosterIdentifier("k", "urn:mr", "A")
    assert fresh.due(0.0)
    waits = []
    for attempts in range(1, 10):
        entry = RosterIdentifier("k", "urn:mr", "A", attempts=attempts, last_attempt_at=1000.0)
        wait = next(w for w in range(0, 30_000, 60) if entry.due(1000.0 + w))
        waits.append(wait)
    assert waits[:4] == [300, 600, 1200, 2400] and waits[-1] == RETRY_MAX_S
    now = [1000.0]
    store = InMemoryCursorStore(clock=lambda: now[0])
    store.add_roster_identifier("t", "urn:mr", "A")
    [entry] = store.pending_roster_identifiers("t")
    store.roster_identifier_unresolved("t", entry.key)
    [entry] = store.pending_roster_identifiers("t")
    assert entry.last_attempt_at == 1000.0 and not entry.due(1200.0) and entry.due(1300.0)
