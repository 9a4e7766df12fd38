"""Vendor FHIR input: same ids/namespacing/terminology rules as the HL7 path."""

from __future__ import annotations

import json

from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.normalize.fhir_input import normalize_fhir
from tests.unit.normalize.conftest import EVENTS, with_policy


def _obs(code: str) -> str:
    return json.dumps({"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "MRN", "value": "X1"}]}},
        {"resource": {"resourceType": "Observation", "id": "o1", "status": "final",
                      "subject": {"reference": "Patient/p1"},
                      "code": {"coding": [{"system": "http://loinc.org", "code": code}]}}}]})


def test_ids_are_deterministic_and_references_rewritten(tenant: TenantConfig) -> None:
    a = normalize_fhir(_obs("2345-7"), tenant)
    b = normalize_fhir(_obs("2345-7"), tenant)
    assert a.ok and a.bundle == b.bundle
    patient = a.bundle["entry"][0]["resource"]
    obs = a.bundle["entry"][1]["resource"]
    assert patient["id"] != "p1" and obs["subject"]["reference"] == f"Patient/{patient['id']}"
    assert {"system": "urn:ehrbridge:demo-health:vendor-id:Patient", "value": "p1"} in patient["identifier"]
    # The tenant's identifier map namespaces vendor systems too.
    assert patient["identifier"][0]["system"] == "urn:oid:2.16.840.1.113883.3.999.1"
    assert a.bundle["entry"][-1]["resource"]["resourceType"] == "Provenance"


def test_terminology_checks_and_policy(tenant: TenantConfig) -> None:
    kept = normalize_fhir(_obs("2345-8"), tenant)
    coding = kept.bundle["entry"][1]["resource"]["code"]["coding"][0]
    assert kept.ok and coding["system"] != "http://loinc.org" and "extension" in coding
    strict = with_policy(tenant, terminology={"on_invalid_code": "quarantine"})
    quarantined = normalize_fhir(_obs("2345-8"), strict)
    assert not quarantined.ok and "invalid check digit" in quarantined.reasons[0]


def test_bad_vendor_input_is_quarantined(tenant: TenantConfig) -> None:
    assert normalize_fhir("not json", tenant).reasons == ["vendor FHIR body is not JSON"]
    assert not normalize_fhir(json.dumps({"resourceType": "Patient"}), tenant).ok  # no id


def test_samples(tenant: TenantConfig) -> None:
    for path in (EVENTS / "fhir").glob("*.json"):
        assert normalize_fhir(path.read_bytes(), tenant).ok, path.name


def test_invalid_vendor_content_is_quarantined_by_the_models(tenant: TenantConfig) -> None:
    bad = json.dumps({"resourceType": "Observation", "id": "o1", "status": "not-a-status",
                      "code": {"text": "x"}, "valueQuantity": {"value": "abc"}})
    r = normalize_fhir(bad, tenant)
    assert not r.ok and all(reason.startswith("invalid FHIR: ") for reason in r.reasons)
    assert all("abc" not in reason for reason in r.reasons)  # no input values (PHI) in reasons
    weird = json.dumps({"resourceType": "Observation", "id": "o2", "status": "final", "code": {"text": "x"},
                        "component": {"not": "a list"}})
    assert not normalize_fhir(weird, tenant).ok
