from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from ehrbridge.aws.s3 import InMemoryBlobStore
from ehrbridge.contracts.claim_check import ClaimCheck, ClaimCheckError
from ehrbridge.contracts.envelope import (
    CLAIM_CHECK_THRESHOLD_BYTES,
    ContractError,
    Envelope,
    new_envelope,
    patient_key_for,
    stable_id,
)

CANARY_NAME = "ZZCANARY^PHIPATIENT"


def _env(**overrides: object) -> Envelope:
    data = dict(tenant_id="demo-health", source="hl7v2", kind="ADT^A01", body="MSH|...",
                natural_key=["src", "CTRL1"])
    data.update(overrides)
    return new_envelope(**data)  # type: ignore[arg-type]


def test_message_id_is_stable_for_the_same_input_and_differs_otherwise() -> None:
    assert _env().message_id == _env().message_id
    assert _env().message_id != _env(natural_key=["src", "CTRL2"]).message_id
    assert _env().message_id != _env(tenant_id="other-tenant").message_id
    # Length-prefixed hashing: ("ab","c") and ("a","bc") must not collide.
    assert stable_id("ab", "c") != stable_id("a", "bc")


def test_round_trip_json_and_bytes_body() -> None:
    raw = "MSH|^~\\&|Ä".encode("latin-1")
    env = _env(body=raw)
    assert env.body_encoding == "base64" and base64.b64decode(env.body or "") == raw
    again = Envelope.parse_json(env.to_json())
    assert again == env and again.body_bytes() == raw


def test_patient_key_is_opaque_and_scoped() -> None:
    key = patient_key_for("demo-health", "HOSP", "123456")
    assert "123456" not in key
    assert key == patient_key_for("demo-health", "hosp", "123456")
    assert key != patient_key_for("demo-health", "OTHER", "123456")
    assert key != patient_key_for("other", "HOSP", "123456")
    env = _env(patient_key=key)
    assert env.group_id == f"demo-health:{key}" and len(env.group_id) <= 128


def test_invalid_envelope_errors_name_fields_never_values() -> None:
    good = json.loads(_env().to_json())
    bad = {**good, "tenant_id": CANARY_NAME, "received_at": "not-a-date", "extra_field": "x"}
    with pytest.raises(ContractError) as info:
        Envelope.parse_json(json.dumps(bad))
    text = str(info.value)
    assert "tenant_id" in text and "received_at" in text and "extra_field" in text
    assert "ZZCANARY" not in text and "not-a-date" not in text


def test_body_xor_body_ref() -> None:
    good = json.loads(_env().to_json())
    with pytest.raises(ContractError, match="exactly one of body or body_ref"):
        Envelope.parse_obj({k: v for k, v in good.items() if k != "body"})
    with pytest.raises(ContractError):
        Envelope.parse_json(b"{not json")


def test_received_at_must_be_timezone_aware() -> None:
    good = json.loads(_env().to_json())
    with pytest.raises(ContractError, match="received_at"):
        Envelope.parse_obj({**good, "received_at": datetime(2026, 1, 1).isoformat()})
    assert _env(received_at=datetime(2026, 1, 1, tzinfo=UTC)).received_at.tzinfo is not None


def test_claim_check_moves_large_bodies_to_the_store_and_back() -> None:
    store = InMemoryBlobStore("archive-bucket")
    check = ClaimCheck(store)
    small = _env()
    assert check.outbound(small) is small
    big = _env(body="X" * (CLAIM_CHECK_THRESHOLD_BYTES + 1))
    out = check.outbound(big)
    assert out.body is None and out.body_ref is not None and out.body_ref.bucket == "archive-bucket"
    assert len(out.to_json()) < 2000
    restored = check.inbound(Envelope.parse_json(out.to_json()))
    assert restored.body == big.body and restored.body_ref is None


def test_claim_check_detects_a_tampered_body() -> None:
    store = InMemoryBlobStore()
    out = ClaimCheck(store).outbound(_env(body="Y" * (CLAIM_CHECK_THRESHOLD_BYTES + 10)))
    assert out.body_ref is not None
    store.objects[out.body_ref.key] = b"tampered"
    with pytest.raises(ClaimCheckError):
        ClaimCheck(store).inbound(out)


def test_derive_keeps_lineage() -> None:
    parent = _env(patient_key="pk-abc")
    child = parent.derive(kind="Bundle", body="{}", body_encoding="json")
    assert child.correlation_id == parent.correlation_id and child.patient_key == "pk-abc"
    assert child.message_id != parent.message_id
    assert child.message_id == parent.derive(kind="Bundle", body="{}").message_id
