"""Issue 11: no clinical value lost, no invalid output, the IG's field maps. One test per defect class
(messages written here, made-up data), and the field walk: every populated field mapped or listed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.hl7.message import parse
from ehrbridge.normalize import segments
from ehrbridge.normalize.engine import NormalizeResult, normalize_hl7
from ehrbridge.normalize.validate import validate_with_models
from tests.unit.normalize.conftest import with_policy

MSH = "MSH|^~\\&|LAB|PHL^2.16.840.1.114222.4.1.1^ISO|EHR|X|20240102030405-0500||{kind}|F{n}|P|2.5.1\r"
PID = "PID|1||MRN1^^^MRN^MR||DOE^JANE||19800101|F\r"
OBR = "OBR|1|P1^HOSP|F1^LAB|24323-8^CMP^LN|||20240102010000-0500\r"


def oru(*obx: str, n: int = 1, obr: str = OBR) -> bytes:
    return (MSH.format(kind="ORU^R01^ORU_R01", n=n) + PID + obr + "".join(o + "\r" for o in obx)).encode()


def resources(r: NormalizeResult, rtype: str) -> list[dict[str, Any]]:
    assert r.ok, r.reasons
    return [e["resource"] for e in r.bundle["entry"] if e["resource"]["resourceType"] == rtype]


def ok_and_valid(data: bytes, tenant: TenantConfig) -> NormalizeResult:
    r = normalize_hl7(data, tenant)
    assert r.ok, r.reasons
    assert validate_with_models(r.bundle) == []
    return r


# ---------------------------------------------------------------- 1. alternate triplet / text
def test_1_result_coded_only_in_the_alternate_triplet_is_kept(tenant: TenantConfig) -> None:
    r = ok_and_valid(oru("OBX|1|NM|^^^2345-7^17-Hydroxyprogesterone^LN||39|nmol/L|0.3-6.6|H|||F"), tenant)
    [obs] = resources(r, "Observation")
    assert obs["code"]["coding"][0]["system"] == "http://loinc.org"
    assert obs["code"]["coding"][0]["code"] == "2345-7" and obs["code"]["text"] == "17-Hydroxyprogesterone"
    assert obs["valueQuantity"]["value"] == 39 and obs["interpretation"][0]["coding"][0]["code"] == "H"
    assert not any(u.startswith("OBX(no OBX-3)") for u in r.unmapped)


def test_1_text_only_code_becomes_code_text(tenant: TenantConfig) -> None:
    r = ok_and_valid(oru("OBX|1|ST|^^^^^^^^Comment on specimen||hemolyzed||||||F"), tenant)
    [obs] = resources(r, "Observation")
    assert obs["code"] == {"text": "Comment on specimen"} and obs["valueString"] == "hemolyzed"


def test_1_alternate_triplet_in_other_coded_fields(tenant: TenantConfig) -> None:
    spm = "SPM|1|S1&HOSP||^^^119297000^Blood specimen^SCT"
    r = ok_and_valid(oru("OBX|1|CWE|^^^600-7^Bacteria^LN||^^^27268008^Salmonella^SCT||||||F", spm), tenant)
    [obs] = resources(r, "Observation")
    assert obs["valueCodeableConcept"]["coding"][0]["code"] == "27268008"
    [specimen] = resources(r, "Specimen")
    assert specimen["type"]["coding"][0] == {"system": "http://snomed.info/sct", "code": "119297000",
                                             "display": "Blood specimen"}


def test_1_result_with_a_value_and_no_code_at_all_is_quarantined(tenant: TenantConfig) -> None:
    r = normalize_hl7(oru("OBX|1|NM|^^L||39|nmol/L|||H|||F"), tenant)
    assert r.status == "quarantined" and "has a value but OBX-3 carries no code" in r.reasons[0]


# ---------------------------------------------------------------- 2. invalid output
@pytest.mark.parametrize("birth,death", [("0000", ""), ("20231301", ""), ("20230230", ""), ("", "000001"),
                                         ("２０２３", ""), ("19800101", "00000101120000")])
def test_2_impossible_dates_are_dropped_and_listed_never_emitted(tenant: TenantConfig, birth: str,
                                                                  death: str) -> None:
    pid = f"PID|1||MRN1^^^MRN^MR||DOE^JANE||{birth}|F" + "|" * 21 + death
    data = (MSH.format(kind="ADT^A08^ADT_A01", n=2) + "EVN|A08|20240102030405\r" + pid + "\r").encode()
    r = ok_and_valid(data, tenant)
    [patient] = resources(r, "Patient")
    field = "PID-29" if death else "PID-7"
    assert ("deceasedDateTime" if death else "birthDate") not in patient
    assert f"{field}(invalid date/time)" in r.unmapped
    assert {"code": "invalid-datetime", "where": field} in r.issues


def test_2_year_below_1000_is_written_with_four_digits(tenant: TenantConfig) -> None:
    r = ok_and_valid(oru("OBX|1|NM|2345-7^Glucose^LN||98|mg/dL|||||F|||09990101120000+0000"), tenant)
    [obs] = resources(r, "Observation")
    assert obs["effectiveDateTime"] == "0999-01-01T12:00:00+00:00"


def test_2_codes_with_runs_of_spaces_are_normalized(tenant: TenantConfig) -> None:
    r = ok_and_valid(oru("OBX|1|CWE|LOCAL1^Local test^L||POS  ITIVE^Positive^L||||||F"), tenant)
    [obs] = resources(r, "Observation")
    assert obs["valueCodeableConcept"]["coding"][0]["code"] == "POS ITIVE"
    assert any(rep["kind"] == "code-whitespace" for rep in r.repairs)


# ---------------------------------------------------------------- 3. statuses
def test_3_empty_obx11_is_unknown_and_repaired(tenant: TenantConfig) -> None:
    r = ok_and_valid(oru("OBX|1|NM|2345-7^Glucose^LN||98|mg/dL|70-99|N|||"), tenant)
    [obs] = resources(r, "Observation")
    assert obs["status"] == "unknown"
    assert {"kind": "status", "where": "OBX-11", "detail": "empty result status -> unknown"} in r.repairs


@pytest.mark.parametrize("code,status", [("F", "final"), ("C", "corrected"), ("P", "preliminary"),
                                         ("W", "entered-in-error"), ("Q", "unknown")])
def test_3_obx11_follows_the_ig_concept_map(tenant: TenantConfig, code: str, status: str) -> None:
    r = ok_and_valid(oru(f"OBX|1|NM|2345-7^Glucose^LN||98|mg/dL|||||{code}"), tenant)
    assert resources(r, "Observation")[0]["status"] == status


# ---------------------------------------------------------------- 4. units
@pytest.mark.parametrize("unit,expected", [
    ("1^ML^METRIC", {"unit": "ML", "code": "1", "system": "urn:ehrbridge:demo-health:codesystem:LAB-unit-METRIC"}),
    ("mL^mL^METRIC", {"unit": "mL", "code": "mL", "system": "http://unitsofmeasure.org"}),
    ("^^^mg/dL^milligram per deciliter^UCUM", {"unit": "milligram per deciliter", "code": "mg/dL",
                                              "system": "http://unitsofmeasure.org"}),
    ("mg/dL", {"unit": "mg/dL", "code": "mg/dL", "system": "http://unitsofmeasure.org"}),
    ("1^ML", {"unit": "ML"}),
])
def test_4_units_follow_their_coding_system(tenant: TenantConfig, unit: str, expected: dict[str, Any]) -> None:
    r = ok_and_valid(oru(f"OBX|1|NM|2345-7^Glucose^LN||5|{unit}|||||F"), tenant)
    q = resources(r, "Observation")[0]["valueQuantity"]
    assert {k: v for k, v in q.items() if k != "value"} == expected
    if expected.get("system") != "http://unitsofmeasure.org":
        assert any(i["code"] == "non-ucum-unit" for i in r.issues)


# ---------------------------------------------------------------- 5. check digits everywhere
@pytest.mark.parametrize("segment,rtype,path", [
    ("SPM|1|S1&HOSP||440500555^Blood^SCT", "Specimen", ("type",)),
    ("SPM|1|S1&HOSP||12333-0^Blood^LN", "Specimen", ("type",)),
])
def test_5_failed_check_digits_never_under_the_standard_system(tenant: TenantConfig, segment: str, rtype: str,
                                                               path: tuple[str, ...]) -> None:
    r = ok_and_valid(oru("OBX|1|NM|2345-7^Glucose^LN||98|mg/dL|||||F", segment), tenant)
    node = resources(r, rtype)[0]
    for p in path:
        node = node[p]
    coding = node["coding"][0]
    assert coding["system"].startswith("urn:ehrbridge:demo-health:codesystem:")
    assert any(i["code"] == "invalid-code" for i in r.issues)


def test_5_every_coded_element_is_checked_through_one_function(tenant: TenantConfig) -> None:
    strict = with_policy(tenant, terminology={"on_invalid_code": "quarantine"})
    bad = {"DG1|1||440500555^Thing^SCT": "DG1-3", "AL1|1|DA|440500555^Thing^SCT": "AL1-3",
           "PR1|1||440500555^Thing^SCT": "PR1-3"}
    for segment, where in bad.items():
        data = (MSH.format(kind="ADT^A08^ADT_A01", n=3) + "EVN|A08|20240102030405\r" + PID + segment + "\r").encode()
        r = normalize_hl7(data, strict)
        assert not r.ok and r.reasons[0].startswith(f"{where}: snomed"), (segment, r.reasons)


# ---------------------------------------------------------------- 6. times of any precision
def test_6_minute_precision_obr22_maps_to_issued(tenant: TenantConfig) -> None:
    obr = "OBR|1|P1^HOSP|F1^LAB|24323-8^CMP^LN|||20240102010000-0500" + "|" * 15 + "202401020930-0500||||F\r"
    r = ok_and_valid(oru("OBX|1|NM|2345-7^Glucose^LN||98|mg/dL|||||F", obr=obr), tenant)
    assert resources(r, "DiagnosticReport")[0]["issued"] == "2024-01-02T09:30:00-05:00"


def test_6_date_only_obr22_is_listed_not_invented(tenant: TenantConfig) -> None:
    obr = "OBR|1|P1^HOSP|F1^LAB|24323-8^CMP^LN|||20240102010000-0500" + "|" * 15 + "20240102||||F\r"
    r = ok_and_valid(oru("OBX|1|NM|2345-7^Glucose^LN||98|mg/dL|||||F", obr=obr), tenant)
    assert "issued" not in resources(r, "DiagnosticReport")[0]
    assert "OBR-22(date only: not an instant)" in r.unmapped


# ---------------------------------------------------------------- 7. IG rows
def test_7_performing_organization_with_clia_and_director(tenant: TenantConfig) -> None:
    obx = ("OBX|1|NM|2345-7^Glucose^LN||98|mg/dL|||||F||||05D0000000^Lab One^CLIA||||||||"
           "Lab One^L^^^^CLIA&2.16.840.1.113883.4.7&ISO^XX^^^05D0000000|1 Lab Way^^Town^ST^00001|"
           "1234^DIRECTOR^DANA^^^DR")
    r = ok_and_valid(oru(obx), tenant)
    [obs] = resources(r, "Observation")
    [role] = obs["contained"]
    assert obs["performer"] == [{"reference": "#director"}]
    assert role["organization"] == {"identifier": {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "XX"}]},
        "system": "urn:oid:2.16.840.1.113883.4.7", "value": "05D0000000"}, "display": "Lab One"}
    assert role["practitioner"]["display"] == "DR DANA DIRECTOR"
    assert role["code"][0]["coding"][0]["code"] == "MDIR"
    assert not any(u.startswith(("OBX-15", "OBX-23", "OBX-25")) for u in r.unmapped)
    assert "OBX-24" in r.unmapped  # performing organization address: listed (logical references carry none)


def test_7_producer_id_without_xon10_is_the_organization_identifier(tenant: TenantConfig) -> None:
    r = ok_and_valid(oru("OBX|1|NM|2345-7^Glucose^LN||98|mg/dL|||||F||||05D0000001^^CLIA||||||||Lab Two"), tenant)
    [obs] = resources(r, "Observation")
    assert obs["performer"] == [{"identifier": {"system": "urn:ehrbridge:demo-health:identifier:CLIA",
                                                "value": "05D0000001"}, "display": "Lab Two"}]


def test_7_order_group_facility_primary_facility_contact_org_and_unformatted_phone(tenant: TenantConfig) -> None:
    data = (MSH.format(kind="ORM^O01^ORM_O01", n=4)
            + "PID|1||MRN1^^^MRN^MR||DOE^JANE||19800101|F|||||(555) 555-1234^PRN^PH^^^555^5551234^^^^^5555551234\r"
            + "PD1|||Clinic One^^^^^HOSP^XX^^^C1|1234^WELBY^MARCUS\r"
            + "NK1|1|DOE^JOHN|EMC^Emergency contact^HL70131" + "|" * 10 + "Acme Corp^^^^^^^^^ACME1\r"
            + "ORC|NW|PL1^HOSP|FL1^LAB|GRP7^HOSP|SC||||20240102030405-0500|||1234^WELBY^MARCUS" + "|" * 9
            + "Ordering Clinic^^^^^HOSP^XX^^^OC1\r"
            + "OBR|1|PL1^HOSP|FL1^LAB|24323-8^CMP^LN\r").encode()
    r = ok_and_valid(data, tenant)
    [patient] = resources(r, "Patient")
    assert patient["telecom"][0]["value"] == "5555551234"  # XTN.12 over XTN.1
    assert patient["generalPractitioner"][0]["display"] == "Clinic One"
    assert patient["generalPractitioner"][0]["identifier"]["value"] == "C1"
    assert patient["contact"][0]["organization"]["display"] == "Acme Corp"
    [sr] = resources(r, "ServiceRequest")
    assert sr["requisition"]["value"] == "GRP7" and sr["requisition"]["type"]["coding"][0]["code"] == "PGN"
    assert sr["requester"] == {"reference": "#orderer"}
    assert sr["contained"][0]["organization"]["display"] == "Ordering Clinic"
    assert sr["contained"][0]["practitioner"]["display"] == "MARCUS WELBY"


# ---------------------------------------------------------------- the field walk
FULL_ORU = (
    "MSH|^~\\&|LAB|PHL|EHR|X|20240102030405-0500||ORU^R01^ORU_R01|W1|P|2.5.1\r"
    "PID|1||MRN1^^^MRN^MR||DOE^JANE^Q||19800101|F|||1 Main St^^Town^ST^00001||^PRN^PH^^^555^5551234^^^^^5555551234"
    "|^WPN^PH^^^555^5550000|||||||||||||20240101\r"
    "PD1|||Clinic One^^^^^^^^^C1|1234^WELBY^MARCUS\r"
    "NK1|1|DOE^JOHN|SPO^Spouse^HL70063|2 Main St^^Town^ST^00001|^PRN^PH^^^555^5559999||||||||Acme Corp\r"
    "PV1|1|O|LAB^^^HOSP||||1234^WELBY^MARCUS||||||||||||V1^^^HOSP^VN|||||||||||||||||||||||||"
    "202401020100-0500|202401020200-0500\r"
    "ORC|RE|P1^HOSP|F1^LAB|GRP1^HOSP|CM||||202401020300-0500|||1234^WELBY^MARCUS|||||||||Ordering Clinic\r"
    "OBR|1|P1^HOSP|F1^LAB|24323-8^CMP^LN|R||20240102010000-0500|20240102013000-0500||||||||1234^WELBY^MARCUS"
    "||||||202401020930-0500|||F\r"
    "OBX|1|NM|^^^2345-7^Glucose^LN|1|98|mg/dL^mg/dL^UCUM|70-99|N|||F|||20240102010000-0500|05D0000000^^CLIA|"
    "1234^TECH^TINA|||||||Lab One^^^^^^^^^05D0000000||9999^DIRECTOR^DANA\r"
    "SPM|1|S1&HOSP||119297000^Blood specimen^SCT|||||||||||||20240102005500-0500|20240102011000-0500\r"
)
# Populated field -> where its value must be in the bundle (resource type, path; "*" = any entry).
WALK_TARGETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "PID-3": ("Patient", ("identifier",)), "PID-5": ("Patient", ("name",)), "PID-7": ("Patient", ("birthDate",)),
    "PID-8": ("Patient", ("gender",)), "PID-11": ("Patient", ("address",)), "PID-13": ("Patient", ("telecom",)),
    "PID-14": ("Patient", ("telecom",)), "PID-29": ("Patient", ("deceasedDateTime",)),
    "PD1-3": ("Patient", ("generalPractitioner",)), "PD1-4": ("Patient", ("generalPractitioner",)),
    "NK1-2": ("Patient", ("contact",)), "NK1-3": ("Patient", ("contact",)), "NK1-4": ("Patient", ("contact",)),
    "NK1-5": ("Patient", ("contact",)), "NK1-13": ("Patient", ("contact",)),
    "PV1-2": ("Encounter", ("class",)), "PV1-3": ("Encounter", ("location",)),
    "PV1-7": ("Encounter", ("participant",)), "PV1-19": ("Encounter", ("identifier",)),
    "PV1-44": ("Encounter", ("period",)), "PV1-45": ("Encounter", ("period",)),
    "ORC-1": ("ServiceRequest", ("status",)), "ORC-2": ("ServiceRequest", ("identifier",)),
    "ORC-3": ("ServiceRequest", ("identifier",)), "ORC-4": ("ServiceRequest", ("requisition",)),
    "ORC-5": ("ServiceRequest", ("status",)), "ORC-9": ("ServiceRequest", ("authoredOn",)),
    "ORC-12": ("ServiceRequest", ("contained",)), "ORC-21": ("ServiceRequest", ("contained",)),
    "OBR-2": ("DiagnosticReport", ("identifier",)), "OBR-3": ("DiagnosticReport", ("identifier",)),
    "OBR-4": ("DiagnosticReport", ("code",)), "OBR-5": ("ServiceRequest", ("priority",)),
    "OBR-7": ("DiagnosticReport", ("effectivePeriod",)), "OBR-8": ("DiagnosticReport", ("effectivePeriod",)),
    "OBR-16": ("ServiceRequest", ("contained",)), "OBR-22": ("DiagnosticReport", ("issued",)),
    "OBR-25": ("DiagnosticReport", ("status",)),
    "OBX-2": ("Observation", ("valueQuantity",)), "OBX-3": ("Observation", ("code",)),
    "OBX-5": ("Observation", ("valueQuantity",)), "OBX-6": ("Observation", ("valueQuantity",)),
    "OBX-7": ("Observation", ("referenceRange",)), "OBX-8": ("Observation", ("interpretation",)),
    "OBX-11": ("Observation", ("status",)), "OBX-14": ("Observation", ("effectiveDateTime",)),
    "OBX-15": ("Observation", ("contained",)), "OBX-16": ("Observation", ("performer",)),
    "OBX-23": ("Observation", ("contained",)), "OBX-25": ("Observation", ("contained",)),
    "SPM-2": ("Specimen", ("identifier",)), "SPM-4": ("Specimen", ("type",)),
    "SPM-17": ("Specimen", ("collection",)), "SPM-18": ("Specimen", ("receivedTime",)),
}
# Fields that identify or frame rather than carry a value of their own (set ids, encoding, keys).
WALK_FRAMING = {"MSH-1", "MSH-2", "MSH-3", "MSH-4", "MSH-7", "MSH-9", "MSH-10", "MSH-11", "MSH-12", "PID-1",
                "NK1-1", "PV1-1", "OBR-1", "OBX-1", "OBX-4", "SPM-1"}


def test_field_walk_every_populated_field_is_mapped_or_listed(tenant: TenantConfig) -> None:
    data = FULL_ORU.replace("|||||||||||||20240101\r", "|||||||||||||20240101120000-0500\r").encode()
    r = ok_and_valid(data, tenant)
    msg = parse(data)
    walked = 0
    for seg in msg.segments:
        for n in range(1, len(seg.fields)):
            if not seg.fields[n]:
                continue
            field = f"{seg.name}-{n}"
            walked += 1
            listed = any(u == field or u.startswith((field + " ", field + "(")) for u in r.unmapped)
            if field in WALK_FRAMING or listed:
                continue
            assert field in WALK_TARGETS, f"{field} is populated but neither listed in unmapped nor expected"
            assert n in (segments.MAPPED_BY_ROLE.get("report", set()) or segments.MAPPED[seg.name]), field
            rtype, path = WALK_TARGETS[field]
            found = [res for res in resources(r, rtype) if _at(res, path)]
            assert found, f"{field}: nothing at {rtype}.{'.'.join(path)} and not listed in unmapped"
    assert walked >= 60
    # The receiving application/facility (MSH-5/6) have no FHIR target in the IG maps we implement: listed.
    assert {"MSH-5", "MSH-6"} <= set(r.unmapped)


def _at(res: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = res
    for p in path:
        node = node.get(p) if isinstance(node, dict) else None
    return node


def test_field_walk_catches_a_silent_drop(tenant: TenantConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk can fail: a map that drops OBR-22 without listing it is caught."""
    original = segments.report

    def dropping_report(seg: Any, st: Any) -> None:
        original(seg, st)
        st.report.pop("issued", None)

    monkeypatch.setitem(segments.ROLES, "report", dropping_report)
    with pytest.raises(AssertionError, match="OBR-22"):
        test_field_walk_every_populated_field_is_mapped_or_listed(tenant)


def test_bundle_json_has_no_shared_object_surprises(tenant: TenantConfig) -> None:
    """Shared meta/Reference objects serialize like separate ones (the bundle is sent as JSON)."""
    r = ok_and_valid(FULL_ORU.encode(), tenant)
    assert json.loads(json.dumps(r.bundle)) == r.bundle
