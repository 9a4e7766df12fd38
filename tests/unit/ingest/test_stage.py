"""hl7_ingest stage logic with in-memory stores: split, archive, route, quarantine, stable ids."""

from __future__ import annotations

import base64
import json

import pytest

from ehrbridge.aws.s3 import InMemoryBlobStore
from ehrbridge.aws.sqs import InMemoryPublisher, PublishError
from ehrbridge.contracts.claim_check import ClaimCheck
from ehrbridge.contracts.envelope import Envelope, new_envelope, patient_key_for
from ehrbridge.ingest.stage import Hl7Ingest
from ehrbridge.pipeline.stages import Quarantine
from tests.conftest import CORPUS

ORU = (b"MSH|^~\\&|DEMOLAB|LABFAC|EHRBRIDGE|HOSP|20240102030405||ORU^R01^ORU_R01|{cid}|P|2.5.1\r"
       b"PID|1||MRN{n}^^^MRN^MR||DOE^JANE||19800101|F\r"
       b"OBX|1|NM|718-7^Hemoglobin^LN||13.{n}|g/dL|12-16|N|||F\r")


def oru(n: int) -> bytes:
    return ORU.replace(b"{cid}", f"CID{n}".encode()).replace(b"{n}", str(n).encode())


def inbound(raw: bytes, kind: str = "ORU^R01", charset: str = "ASCII") -> Envelope:
    return new_envelope(tenant_id="demo-health", source="hl7v2", kind=kind, body=raw,
                        natural_key=["demo-lab", "x", raw], patient_key="src-demo-lab",
                        attributes={"source_id": "demo-lab", "msh10": "x", "charset": charset, "version": "2.5.1"})


class Harness:
    def __init__(self) -> None:
        self.archive = InMemoryBlobStore("archive")
        self.qstore = InMemoryBlobStore("quarantine")
        self.out = InMemoryPublisher()
        self.qqueue = InMemoryPublisher()
        self.stage = Hl7Ingest(archive=self.archive, claim_check=ClaimCheck(self.archive), out=self.out,
                               quarantine=Quarantine(self.qstore, self.qqueue))


def test_single_message_is_archived_and_routed_with_patient_key() -> None:
    h = Harness()
    env = inbound(oru(1))
    h.stage(env)
    [out] = h.out.sent
    assert out.message_id == env.message_id and out.correlation_id == env.correlation_id
    assert out.body_encoding == "base64" and base64.b64decode(out.body) == oru(1)
    assert out.kind == "ORU^R01" and out.patient_key == patient_key_for("demo-health", "MRN", "MRN1")
    assert out.attributes["source_id"] == "demo-lab" and out.attributes["msh10"] == "CID1"
    assert list(h.archive.objects.values()) == [oru(1)]
    assert next(iter(h.archive.objects)).startswith("raw/demo-health/")
    assert h.qqueue.sent == []


def test_batch_file_is_split_with_stable_child_ids() -> None:
    batch = b"FHS|^~\\&|DEMOLAB\rBHS|^~\\&|DEMOLAB\r" + oru(1) + oru(2) + b"BTS|2\rFTS|1\r"
    first, second = Harness(), Harness()
    env = inbound(batch)
    first.stage(env)
    second.stage(env)  # a retry: same ids, so FIFO dedup / idempotency drop the copies
    ids = [e.message_id for e in first.out.sent]
    assert ids == [e.message_id for e in second.out.sent] and len(set(ids)) == 2
    assert env.message_id not in ids
    assert {e.correlation_id for e in first.out.sent} == {env.correlation_id}
    assert [base64.b64decode(e.body) for e in first.out.sent] == [oru(1), oru(2)]
    assert [e.attributes["msh10"] for e in first.out.sent] == ["CID1", "CID2"]
    assert [e.attributes["batch_index"] for e in first.out.sent] == ["0", "1"]
    assert {e.attributes["parent_message_id"] for e in first.out.sent} == {env.message_id}
    assert first.out.sent[0].patient_key != first.out.sent[1].patient_key
    assert list(first.archive.objects.values()) == [batch]  # the file is archived once, whole


def test_corpus_batch_files_split() -> None:
    for name in ("python-hl7/batch_bhs_bts.hl7", "python-hl7/file_fhs_two_batches.hl7"):
        raw = (CORPUS / name).read_bytes()
        h = Harness()
        h.stage(inbound(raw))
        # Every MSH becomes exactly one outcome: published or quarantined, never dropped.
        assert len(h.out.sent) + len(h.qqueue.sent) == raw.count(b"MSH|") >= 1, name
        assert all(e.attributes["batch_size"] == str(raw.count(b"MSH|")) for e in h.out.sent)


def test_bad_child_is_quarantined_and_good_ones_still_flow() -> None:
    bad = b"MSH|^~\\&|DEMOLAB|LABFAC|EHRBRIDGE|HOSP|2024||ORU^R01|BAD|P|2.5.1||||||UNICODE UTF-8\rPID|1||\xc3\x28\r"
    batch = b"BHS|^~\\&|DEMOLAB\r" + oru(1) + bad + b"BTS|2\r"
    h = Harness()
    h.stage(inbound(batch))
    assert [e.attributes["msh10"] for e in h.out.sent] == ["CID1"]
    [notice] = h.qqueue.sent
    record = json.loads(notice.body)
    assert record["stage"] == "hl7_ingest" and "not valid utf-8" in record["reasons"][0]
    bodies = [v for k, v in h.qstore.objects.items() if k.endswith(".body")]
    assert bodies == [bad]


def test_garbage_is_quarantined_not_raised() -> None:
    h = Harness()
    h.stage(inbound(b"not an hl7 message at all", kind="UNKNOWN"))
    assert h.out.sent == []
    [notice] = h.qqueue.sent
    assert "no MSH segment" in json.loads(notice.body)["reasons"][0]


def test_charset_attribute_decides_decoding() -> None:
    latin = oru(5).replace(b"DOE^JANE", b"M\xdcLLER^J")
    h = Harness()
    h.stage(inbound(latin, charset="8859/1"))
    [out] = h.out.sent
    assert base64.b64decode(out.body) == latin and out.attributes["charset"] == "8859/1"
    h2 = Harness()
    h2.stage(inbound(latin, charset="ASCII"))  # not ASCII, not UTF-8 either: quarantined, never replaced
    assert h2.out.sent == [] and len(h2.qqueue.sent) == 1


def test_claim_checked_body_is_resolved() -> None:
    h = Harness()
    big = oru(1) + b"NTE|1||" + b"x" * 300_000 + b"\r"
    env = ClaimCheck(h.archive).outbound(inbound(big))
    assert env.body_ref is not None
    h.stage(env)
    [out] = h.out.sent
    assert base64.b64decode(out.body) == big


def test_publish_failure_raises_for_a_retry() -> None:
    class Failing(InMemoryPublisher):
        def publish(self, envelopes):  # type: ignore[no-untyped-def]
            raise PublishError({e.message_id: "ServiceUnavailable" for e in envelopes})

    h = Harness()
    h.stage.out = Failing()
    with pytest.raises(PublishError):
        h.stage(inbound(oru(1)))


def test_no_phi_in_logs(capsys: pytest.CaptureFixture[str]) -> None:
    h = Harness()
    h.stage(inbound(oru(1)))
    h.stage(inbound(b"BHS|^~\\&|DEMOLAB\r" + oru(2) + b"MSH|^~\\&|X\rPID|1||SECRETMRN^^^MRN||SMITH^JOHN\r"))
    captured = capsys.readouterr()
    logs = captured.out + captured.err
    for phi in ("MRN1", "DOE", "JANE", "SMITH", "SECRETMRN", "19800101"):
        assert phi not in logs
