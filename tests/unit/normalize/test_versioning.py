"""Writers' stale-write guard: older source events and status downgrades never replace newer data."""

from __future__ import annotations

from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.normalize.engine import normalize_hl7
from ehrbridge.normalize.versioning import should_replace

ORU = ("MSH|^~\\&|DEMOLAB|HOSP|EHR|X|{ts}||ORU^R01^ORU_R01|{cid}|P|2.5.1\r"
       "PID|1||MRN1^^^MRN^MR||DOE^JANE\r"
       "OBR|1|P1^HOSP|F1^LAB|24323-8^CMP^LN|||20240102010000||||||||||||||||{st}\r"
       "OBX|1|NM|2345-7^Glucose^LN||{v}|mg/dL|70-99|N|||{st}\r")


def _obs(tenant: TenantConfig, ts: str, status: str, value: str) -> dict:
    r = normalize_hl7(ORU.format(ts=ts, cid=ts, st=status, v=value).encode(), tenant)
    assert r.ok, r.reasons
    return next(e["resource"] for e in r.bundle["entry"] if e["resource"]["resourceType"] == "Observation")


def test_same_business_object_same_id_and_ordering_by_instant(tenant: TenantConfig) -> None:
    older = _obs(tenant, "20240102030405", "F", "98")
    newer = _obs(tenant, "20240102040405", "C", "99")
    assert older["id"] == newer["id"]
    assert should_replace(older, newer) == (True, "newer or same source event")
    assert should_replace(newer, older) == (False, "older source event")
    assert should_replace(None, older)[0]


def test_offsets_are_compared_as_instants(tenant: TenantConfig) -> None:
    a = _obs(tenant, "20240102030405-0500", "F", "98")  # 08:04:05Z
    b = _obs(tenant, "20240102070405+0100", "F", "99")  # 06:04:05Z: earlier although the string is "later"
    assert should_replace(a, b) == (False, "older source event")


def test_a_resent_preliminary_never_downgrades_a_final(tenant: TenantConfig) -> None:
    final = _obs(tenant, "20240102030405", "F", "98")
    preliminary_resent_later = _obs(tenant, "20240102050405", "P", "97")
    assert should_replace(final, preliminary_resent_later) == (False, "lower result status")
