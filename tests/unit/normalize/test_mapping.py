"""HL7 v2 -> canonical bundle: contract shape, identities, names, merges, codes, policies, determinism."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.hl7.message import split_messages
from ehrbridge.normalize.context import EXT_DATA_QUALITY, EXT_SOURCE_EVENT_TIME, EXT_UNMAPPED
from ehrbridge.normalize.engine import normalize_hl7
from tests.unit.normalize.conftest import EVENTS, with_policy

ADT = ("MSH|^~\\&|DEMOADT|{fac}|EHR|X|20240102030405||ADT^A01^ADT_A01|C1|P|2.5.1\r"
       "EVN|A01|20240102030000\r"
       "PID|1||{mrn}^^^{aa}^MR~123-45-6789^^^SSA^SS||{name}||19800101|F|||1 Main St^^Town^MA^01000^USA^H\r"
       "PV1|1|I|W^1^A||||||||||||||||V1^^^{fac}^VN|||||||||||||||||||||||||20240102020000\r")


def adt(mrn: str = "MRN1", aa: str = "MRN", fac: str = "HOSP", name: str = "DOE^JANE^Q", extra: str = "") -> bytes:
    return (ADT.format(mrn=mrn, aa=aa, fac=fac, name=name) + extra).encode()


def resources(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def test_bundle_contract(tenant: TenantConfig) -> None:
    r = normalize_hl7(adt(), tenant)
    assert r.ok, r.reasons
    b = r.bundle
    assert b["resourceType"] == "Bundle" and b["type"] == "transaction"
    for entry in b["entry"]:
        res = entry["resource"]
        url = f"{res['resourceType']}/{res['id']}"
        assert entry["fullUrl"] == url and entry["request"] == {"method": "PUT", "url": url}
    patient = resources(b, "Patient")[0]
    encounter = resources(b, "Encounter")[0]
    assert encounter["subject"] == {"reference": f"Patient/{patient['id']}"}
    provenance = resources(b, "Provenance")[0]
    assert {t["reference"] for t in provenance["target"]} == {f"Patient/{patient['id']}",
                                                               f"Encounter/{encounter['id']}"}
    assert provenance["entity"][0]["what"]["identifier"]["value"] == "C1"
    # Source event time (EVN-2, sender zone America/New_York) for version comparison.
    assert patient["meta"]["lastUpdated"] == "2024-01-02T03:00:00-05:00"
    assert {"url": EXT_SOURCE_EVENT_TIME, "valueInstant": "2024-01-02T03:00:00-05:00"} in patient["extension"]


def test_identifiers_use_tenant_systems_and_keep_types(tenant: TenantConfig) -> None:
    patient = resources(normalize_hl7(adt(), tenant).bundle, "Patient")[0]
    mr = patient["identifier"][0]
    assert mr["system"] == "urn:oid:2.16.840.1.113883.3.999.1"  # MRN -> tenant map
    assert mr["type"]["coding"][0]["code"] == "MR" and mr["value"] == "MRN1"
    ss = patient["identifier"][1]
    assert ss["system"] == "http://hl7.org/fhir/sid/us-ssn" and ss["type"]["coding"][0]["code"] == "SS"


def test_unmapped_authority_gets_a_tenant_urn_and_is_reported(tenant: TenantConfig) -> None:
    r = normalize_hl7(adt(aa="OTHERAA"), tenant)
    assert resources(r.bundle, "Patient")[0]["identifier"][0]["system"] == \
        "urn:ehrbridge:demo-health:identifier:OTHERAA"
    assert "OTHERAA" in r.unmapped_systems


def test_same_mrn_two_facilities_two_patients(tenant: TenantConfig) -> None:
    a = resources(normalize_hl7(adt(aa=""), tenant).bundle, "Patient")[0]["id"]
    b = resources(normalize_hl7(adt(aa="", fac="OTHERHOSP"), tenant).bundle, "Patient")[0]["id"]
    same = resources(normalize_hl7(adt(aa=""), tenant).bundle, "Patient")[0]["id"]
    assert a != b and a == same


def test_determinism_same_input_same_bundle(tenant: TenantConfig) -> None:
    data = (EVENTS / "hl7" / "oru_r01_chem7.hl7").read_bytes()
    first = json.dumps(normalize_hl7(data, tenant).bundle, sort_keys=True)
    assert all(json.dumps(normalize_hl7(data, tenant).bundle, sort_keys=True) == first for _ in range(3))


@pytest.mark.parametrize("name,expected", [
    ("DOE^JANE^Q^JR^DR^MD^L", {"use": "official", "family": "DOE", "given": ["JANE", "Q"], "prefix": ["DR"],
                              "suffix": ["JR", "MD"]}),
    ("DOE, JANE MARIE", {"text": "DOE, JANE MARIE", "family": "DOE", "given": ["JANE", "MARIE"]}),
    ("JANE DOE", {"text": "JANE DOE"}),  # ambiguous: kept as text, not split
    ("SMITH, JOHN, JR", {"text": "SMITH, JOHN, JR"}),
])
def test_names(tenant: TenantConfig, name: str, expected: dict[str, Any]) -> None:
    patient = resources(normalize_hl7(adt(name=name), tenant).bundle, "Patient")[0]
    assert patient["name"][0] == expected


def test_a40_merge_links_survivor_and_retired(tenant: TenantConfig) -> None:
    data = (b"MSH|^~\\&|DEMOADT|HOSP|EHR|X|20240102030405||ADT^A40^ADT_A39|M1|P|2.5.1\r"
            b"EVN|A40|20240102030405\rPID|1||NEW1^^^MRN^MR||DOE^JANE\rMRG|OLD1^^^MRN^MR\r")
    r = normalize_hl7(data, tenant)
    assert r.ok, r.reasons
    survivor, retired = resources(r.bundle, "Patient")
    assert survivor["link"] == [{"other": {"reference": f"Patient/{retired['id']}"}, "type": "replaces"}]
    assert retired["active"] is False
    assert retired["link"] == [{"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"}]
    assert retired["identifier"][0]["value"] == "OLD1"


def test_a40_corpus_sample(tenant: TenantConfig, corpus: Any) -> None:
    r = normalize_hl7((corpus / "v2fhir-bridge" / "adt_a40_merge.hl7").read_bytes(), tenant)
    assert r.ok and len(resources(r.bundle, "Patient")) == 2


ORU = ("MSH|^~\\&|DEMOLAB|HOSP|EHR|X|20240102030405||ORU^R01^ORU_R01|L1|P|2.5.1\r"
       "PID|1||MRN1^^^MRN^MR||DOE^JANE\r"
       "OBR|1|P1^HOSP|F1^LAB|24323-8^CMP^LN|||20240102010000\r"
       "OBX|1|{vt}|{code}^Test^{sys}||{value}|{unit}|{range}|{flag}|||F\r")


def oru(code: str = "2345-7", sys: str = "LN", vt: str = "NM", value: str = "98", unit: str = "mg/dL",
        range_: str = "70-99", flag: str = "N") -> bytes:
    return ORU.format(code=code, sys=sys, vt=vt, value=value, unit=unit, range=range_, flag=flag).encode()


def observation(tenant: TenantConfig, **kw: str) -> tuple[Any, dict[str, Any]]:
    r = normalize_hl7(oru(**kw), tenant)
    assert r.ok, r.reasons
    return r, resources(r.bundle, "Observation")[0]


def test_oru_grouping_values_ranges_flags(tenant: TenantConfig) -> None:
    r, obs = observation(tenant)
    report = resources(r.bundle, "DiagnosticReport")[0]
    assert report["result"] == [{"reference": f"Observation/{obs['id']}"}]
    assert obs["valueQuantity"] == {"value": 98, "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                                    "code": "mg/dL"}
    assert obs["referenceRange"][0]["low"]["value"] == 70 and obs["referenceRange"][0]["high"]["value"] == 99
    assert obs["interpretation"][0]["coding"][0]["code"] == "N"
    # OBX-14 empty: OBR-7 (sender zone) is the effective time.
    assert obs["effectiveDateTime"] == "2024-01-02T01:00:00-05:00"


@pytest.mark.parametrize("value,key,expected", [
    ("<^5", "valueQuantity", {"value": 5, "comparator": "<", "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                              "code": "mg/dL"}),
    ("^1^:^128", "valueRatio", {"numerator": {"value": 1}, "denominator": {"value": 128}}),
    ("^10^-^20", "valueRange", None),
])
def test_sn_values(tenant: TenantConfig, value: str, key: str, expected: Any) -> None:
    _, obs = observation(tenant, vt="SN", value=value)
    assert key in obs
    if expected is not None:
        assert obs[key] == expected


def test_text_and_coded_values(tenant: TenantConfig) -> None:
    _, obs = observation(tenant, vt="FT", value="line one\\.br\\line two \\T\\ more", unit="", range_="", flag="")
    assert obs["valueString"] == "line one\nline two & more"
    _, obs = observation(tenant, vt="CWE", value="27268008^Salmonella^SCT", unit="", range_="", flag="A")
    assert obs["valueCodeableConcept"]["coding"][0] == {"system": "http://snomed.info/sct", "code": "27268008",
                                                        "display": "Salmonella"}


@pytest.mark.parametrize("code,sys,expected", [
    ("23457", "LN", "2345-7"), ("002345-7", "LOINC", "2345-7"), ("2345 7", "http://loinc.org", "2345-7"),
])
def test_loinc_repairs_are_applied_and_reported(tenant: TenantConfig, code: str, sys: str, expected: str) -> None:
    r, obs = observation(tenant, code=code, sys=sys)
    assert obs["code"]["coding"][0] == {"system": "http://loinc.org", "code": expected, "display": "Test"}
    assert any(rep["kind"] == "code-format" for rep in r.repairs)


def test_invalid_loinc_keep_local_policy(tenant: TenantConfig) -> None:
    r, obs = observation(tenant, code="2345-8")
    coding = obs["code"]["coding"][0]
    assert coding["system"] != "http://loinc.org" and coding["system"].startswith("urn:ehrbridge:demo-health:")
    assert coding["extension"][0]["url"] == EXT_DATA_QUALITY
    assert any(i["code"] == "invalid-code" for i in r.issues)


def test_invalid_loinc_quarantine_policy(tenant: TenantConfig) -> None:
    strict = with_policy(tenant, terminology={"on_invalid_code": "quarantine"})
    r = normalize_hl7(oru(code="2345-8"), strict)
    assert r.status == "quarantined" and r.reasons == ["OBX-3: loinc: invalid check digit"]


def test_invalid_snomed_value_is_caught(tenant: TenantConfig) -> None:
    strict = with_policy(tenant, terminology={"on_invalid_code": "quarantine"})
    r = normalize_hl7(oru(vt="CWE", value="27268009^X^SCT", unit="", range_=""), strict)
    assert not r.ok and "Verhoeff" in r.reasons[0]


def test_ucum_repair_and_non_ucum_unit(tenant: TenantConfig) -> None:
    r, obs = observation(tenant, unit="mEq/L")
    assert obs["valueQuantity"]["code"] == "meq/L" and any(rep["kind"] == "ucum" for rep in r.repairs)
    r, obs = observation(tenant, unit="MMOLL")
    assert "system" not in obs["valueQuantity"] and obs["valueQuantity"]["unit"] == "MMOLL"
    assert any(i["code"] == "non-ucum-unit" for i in r.issues)


def test_tenant_code_map_adds_loinc_and_is_reported(tenant: TenantConfig) -> None:
    mapped = with_policy(tenant, code_maps={"L": {"GLU": "2345-7"}})
    r = normalize_hl7(oru(code="GLU", sys="L"), mapped)
    codings = resources(r.bundle, "Observation")[0]["code"]["coding"]
    assert codings[0]["code"] == "GLU" and codings[1] == {"system": "http://loinc.org", "code": "2345-7"}
    assert any(rep["kind"] == "concept-map" for rep in r.repairs)


def test_z_segments_and_unmapped_fields_are_listed_and_kept(tenant: TenantConfig) -> None:
    r = normalize_hl7(adt(extra="ZPI|1|custom value\r"), tenant)
    assert "ZPI" in r.unmapped
    provenance = resources(r.bundle, "Provenance")[0]
    assert {"url": EXT_UNMAPPED, "valueString": "ZPI|1|custom value"} in provenance["entity"][0]["extension"]
    assert "MSH-5" in r.unmapped  # receiving application: not mapped, listed


@pytest.mark.parametrize("data,reason", [
    (b"MSH|^~\\&|A|B|C|D|20240102||ADT^A29^ADT_A21|Q1|P|2.5\rPID|1||M1\r", "unsupported message type ADT^A29"),
    (b"MSH|^~\\&|A|B|C|D|20240102||ORU^R01|Q2|P|2.5\rOBR|1\r", "without required segment(s): PID"),
    (b"MSH|^~\\&|A|B|C|D|20240102||ADT^A01|Q3|P|2.5\rPID|1||\r", "PID-3 patient identifier list is empty"),
    (b"MSH|^~\\&|A|B|C|D|not-a-date||ADT^A01|Q4|P|2.5\rPID|1||M1\r", "MSH-7"),
    (b"garbage", "unparseable HL7"),
])
def test_quarantine_reasons_are_specific(tenant: TenantConfig, data: bytes, reason: str) -> None:
    r = normalize_hl7(data, tenant)
    assert r.status == "quarantined" and reason in r.reasons[0]


def test_sample_events(tenant: TenantConfig) -> None:
    results = {}
    for path in sorted((EVENTS / "hl7").glob("*.hl7")):
        for i, message in enumerate(split_messages(path.read_bytes())):
            results[f"{path.name}#{i}"] = normalize_hl7(message, tenant)
    assert not results["adt_a01_no_patient_id.hl7#0"].ok
    assert results["adt_a08_batch.hl7#1"].ok and results["vxu_v04_hepb.hl7#0"].ok
    oru_result = results["oru_r01_chem7.hl7#0"]
    assert len(resources(oru_result.bundle, "Observation")) == 10
    imm = resources(results["vxu_v04_hepb.hl7#0"].bundle, "Immunization")[0]
    assert imm["vaccineCode"]["coding"][0] == {"system": "http://hl7.org/fhir/sid/cvx", "code": "08",
                                               "display": "Hep B, adolescent or pediatric"}
    assert imm["route"]["coding"][0]["code"] == "IM"


def test_orc_without_obr_is_still_a_service_request(tenant: TenantConfig) -> None:
    data = (b"MSH|^~\\&|DEMOADT|HOSP|EHR|X|20240102030405||ORM^O01^ORM_O01|O1|P|2.5\r"
            b"PID|1||MRN1^^^MRN^MR||DOE^JANE\rORC|NW|PL1^HOSP|FL1^LAB||SC\rODS|D||REG^Regular diet^L\r")
    r = normalize_hl7(data, tenant)
    [sr] = resources(r.bundle, "ServiceRequest")
    assert sr["status"] == "active" and sr["identifier"][0]["value"] == "PL1"
    assert "ODS" in r.unmapped


def test_a17_swap_gives_two_patients_with_their_encounters(tenant: TenantConfig) -> None:
    data = (b"MSH|^~\\&|DEMOADT|HOSP|EHR|X|20240102030405||ADT^A17^ADT_A17|S1|P|2.5\rEVN|A17|20240102030405\r"
            b"PID|1||MRN1^^^MRN^MR||DOE^JANE\rPV1|1|I|W1^1^A||||||||||||||||V1^^^HOSP^VN\r"
            b"PID|2||MRN2^^^MRN^MR||ROE^RICH\rPV1|1|I|W1^2^B||||||||||||||||V2^^^HOSP^VN\r")
    r = normalize_hl7(data, tenant)
    p1, p2 = resources(r.bundle, "Patient")
    e1, e2 = resources(r.bundle, "Encounter")
    assert e1["subject"]["reference"] == f"Patient/{p1['id']}" and e2["subject"]["reference"] == f"Patient/{p2['id']}"


def test_mutated_corpus_messages_never_crash_and_stay_valid(tenant: TenantConfig, corpus: Any) -> None:
    """Random corruption of real messages: a quarantine with a reason or a bundle the R4B models accept."""
    import random

    from ehrbridge.normalize.validate import validate_with_models

    rng = random.Random(20261124)
    messages = [m for p in sorted(corpus.glob("*/*.hl7")) for m in split_messages(p.read_bytes())]
    ok = 0
    for _ in range(300):
        data = bytearray(rng.choice(messages))
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            op = rng.random()
            if op < 0.4:
                data[i] = rng.choice(b"|^~\\&\r0123456789AZaz \"")
            elif op < 0.7:
                del data[i:i + rng.randint(1, 20)]
            else:
                data[i:i] = bytes(rng.choice(b"|^~\\&\r0123456789+-. ") for _ in range(rng.randint(1, 6)))
        r = normalize_hl7(bytes(data), tenant)
        if r.ok:
            ok += 1
            assert validate_with_models(r.bundle) == []
        else:
            assert r.reasons and not r.reasons[0].startswith("mapping failed"), r.reasons
    assert ok > 100


@pytest.mark.parametrize("vt,value,key,expected", [
    ("SN", "^2^+", "valueString", "2 +"),
    ("DR", "20240101^20240102", "valuePeriod", {"start": "2024-01-01", "end": "2024-01-02"}),
    ("VR", "5^10", "valueString", "5-10"),
    ("TM", "1230", "valueTime", "12:30:00"),
    ("NR", "3^7", "valueRange", {"low": {"value": 3}, "high": {"value": 7}}),
])
def test_other_value_types_follow_the_ig_obx_map(tenant: TenantConfig, vt: str, value: str, key: str,
                                                  expected: Any) -> None:
    _, obs = observation(tenant, vt=vt, value=value, unit="", range_="", flag="")
    assert obs[key] == expected


def test_cancelled_result_gets_the_ig_data_absent_reason(tenant: TenantConfig) -> None:
    data = oru(value="").replace(b"|||F\r", b"|||X\r")
    r = normalize_hl7(data, tenant)
    obs = resources(r.bundle, "Observation")[0]
    assert obs["status"] == "cancelled"
    assert obs["dataAbsentReason"]["coding"][0]["code"] == "cannot-be-obtained"


def test_date_only_event_time_is_local_midnight_of_the_sender(tenant: TenantConfig) -> None:
    data = b"MSH|^~\\&|DEMOADT|HOSP|EHR|X|20240102||ADT^A08^ADT_A01|D1|P|2.5\rPID|1||MRN1^^^MRN^MR||DOE^JANE\r"
    r = normalize_hl7(data, tenant)
    assert r.source_event_time == "2024-01-02T00:00:00-05:00"  # America/New_York, not UTC, not the server


def test_siu_appointment_has_the_patient_and_resources_as_participants(tenant: TenantConfig) -> None:
    data = (b"MSH|^~\\&|SCHED|HOSP|EHR|X|20240102030405||SIU^S12^SIU_S12|A1|P|2.5\r"
            b"SCH|APT1^HOSP|APT1F^SCHED|||||CHECKUP^Checkup^L|ROUTINE|30|min|^^30^20240105100000^20240105103000"
            b"||||||||||||||Booked\r"
            b"PID|1||MRN1^^^MRN^MR||DOE^JANE\rRGS|1\rAIP|1||1234^WELBY^MARCUS\r")
    r = normalize_hl7(data, tenant)
    [appt] = resources(r.bundle, "Appointment")
    patient = resources(r.bundle, "Patient")[0]
    assert appt["status"] == "booked"
    assert appt["participant"][0] == {"actor": {"reference": f"Patient/{patient['id']}"}, "status": "accepted"}
    assert appt["participant"][1]["actor"]["display"] == "MARCUS WELBY"
    assert appt["start"] == "2024-01-05T10:00:00-05:00" and appt["end"] == "2024-01-05T10:30:00-05:00"
