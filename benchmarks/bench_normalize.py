"""Normalization benchmark: ORU^R01 with 10 OBX and ADT^A01, messages/s on one core.

Measured in the same run, same messages:
- ehrbridge: ``normalize_hl7`` (clean, parse, map, terminology checks, bundle, fast structural check)
  including ``json.dumps`` of the bundle (what the stage sends on; serialized there for the output-size limit);
- naive baseline: ``hl7.parse`` + one ``fhir.resources`` R4B model per resource + ``Bundle`` validation +
  ``model_dump_json`` (the straightforward way to write this with the same libraries).

Each message gets a distinct MSH-10/MRN/value so caches cannot short-circuit the work (building the
message bytes is inside the timed loop for both sides). Rates are per CPU-second of this one
process (``time.process_time``), best of 3 rounds, because the machine is shared. Prints msgs/s for
each, the ratio, and the targets (>= 10x baseline, >= 1,000 ORU/s). Single process, one core.

    python benchmarks/bench_normalize.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "layers" / "core"))

from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.normalize.engine import normalize_hl7

LOINC = ["718-7", "4544-3", "789-8", "785-6", "786-4", "787-2", "788-0", "777-3", "6690-2", "770-8"]
TENANT = TenantConfig.parse_obj({"tenant_id": "bench", "vendor": "generic", "timezone": "America/New_York",
                                 "identifier_systems": {"MRN": "urn:oid:2.16.840.1.113883.3.999.1"}})


def oru(n: int) -> bytes:
    head = (f"MSH|^~\\&|DEMOLAB|LABFAC|EHRBRIDGE|HOSP|20240102030405||ORU^R01^ORU_R01|C{n}|P|2.5.1\r"
            f"PID|1||MRN{n:06d}^^^MRN^MR||DOE^JANE^Q||19800101|F|||1 MAIN ST^^TOWN^ST^12345\r"
            f"PV1|1|O|LAB^^^HOSP||||1234^WELBY^MARCUS||||||||||||V{n}^^^HOSP^VN\r"
            f"ORC|RE|ORD{n}|FIL{n}\r"
            f"OBR|1|ORD{n}|FIL{n}|58410-2^CBC panel^LN|||20240102030000|||||||||1234^WELBY^MARCUS||||||"
            f"20240102040000|||F\r")
    obx = "".join(f"OBX|{i + 1}|NM|{code}^Analyte {i}^LN||{10 + i}.{n % 10}|g/dL|12-16|N|||F|||20240102030000\r"
                  for i, code in enumerate(LOINC))
    return (head + obx).encode("ascii")


def adt(n: int) -> bytes:
    return (f"MSH|^~\\&|DEMOADT|HOSP|EHRBRIDGE|HOSP|20240102030405||ADT^A01^ADT_A01|A{n}|P|2.5.1\r"
            f"EVN|A01|20240102030000\r"
            f"PID|1||MRN{n:06d}^^^MRN^MR~{n:09d}^^^SSA^SS||DOE^JANE^Q^^^^L||19800101|F|||1 MAIN ST^^TOWN^ST^12345^USA^H"
            f"||^PRN^PH^^1^555^5551234|||M\r"
            f"NK1|1|DOE^JOHN|SPO^Spouse^HL70063\r"
            f"PV1|1|I|W4^401^A^HOSP||||1234^WELBY^MARCUS|||MED||||7|||1234^WELBY^MARCUS|IN|V{n}^^^HOSP^VN"
            f"|||||||||||||||||||||||||20240102020000\r"
            f"AL1|1|DA|7980^Penicillin^RXNORM|SV|Hives\r").encode("ascii")


# ---------------------------------------------------------------- ours
def ours(data: bytes) -> str:
    result = normalize_hl7(data, TENANT)
    if not result.ok:
        raise RuntimeError(result.reasons)
    return result.bundle_json  # serialized inside normalize_hl7 (its size is a per-message limit)


# ---------------------------------------------------------------- naive baseline
def naive(data: bytes) -> str:
    """The straightforward way: hl7.parse, one R4B model per resource (same content as ours), Bundle, dump."""
    import hl7
    from fhir.resources.R4B.allergyintolerance import AllergyIntolerance
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport
    from fhir.resources.R4B.encounter import Encounter
    from fhir.resources.R4B.observation import Observation
    from fhir.resources.R4B.patient import Patient
    from fhir.resources.R4B.provenance import Provenance

    msg = hl7.parse(data.decode("ascii").replace("\n", "\r"))
    names = {str(s[0][0]) for s in msg}
    msh10 = str(msg.segment("MSH")[10])
    pid = msg.segment("PID")
    identifiers = [{"system": f"urn:aa:{rep[3]}", "value": str(rep[0]),
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                         "code": str(rep[4])}]}} for rep in pid[3]]
    patient_data: dict[str, Any] = {
        "id": f"p-{pid[3][0][0]}", "identifier": identifiers,
        "name": [{"family": str(pid[5][0][0]), "given": [str(pid[5][0][1]), str(pid[5][0][2])]}],
        "gender": {"F": "female", "M": "male"}.get(str(pid[8]), "unknown"),
        "birthDate": f"{str(pid[7])[:4]}-{str(pid[7])[4:6]}-{str(pid[7])[6:8]}",
        "address": [{"line": [str(pid[11][0][0])], "city": str(pid[11][0][2]), "state": str(pid[11][0][3]),
                     "postalCode": str(pid[11][0][4])}]}
    if len(pid) > 13 and str(pid[13]):
        patient_data["telecom"] = [{"system": "phone", "value": f"({pid[13][0][5]}) {pid[13][0][6]}", "use": "home"}]
        patient_data["maritalStatus"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                                                     "code": str(pid[16])}]}
    if "NK1" in names:
        nk1 = msg.segment("NK1")
        patient_data["contact"] = [{"name": {"family": str(nk1[2][0][0]), "given": [str(nk1[2][0][1])]},
                                    "relationship": [{"coding": [{"code": str(nk1[3][0][0])}]}]}]
    patient = Patient.model_validate(patient_data)
    resources: list[Any] = [patient]
    ref = {"reference": f"Patient/{patient.id}"}
    pv1 = msg.segment("PV1")
    resources.append(Encounter.model_validate({
        "id": f"e-{msh10}", "status": "in-progress", "subject": ref,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "identifier": [{"system": "urn:visit", "value": str(pv1[19][0][0])}],
        "participant": [{"individual": {"display": f"{pv1[7][0][2]} {pv1[7][0][1]}"}}],
        "location": [{"location": {"display": str(pv1[3][0][0])}}]}))
    if "AL1" in names:
        al1 = msg.segment("AL1")
        resources.append(AllergyIntolerance.model_validate({
            "id": f"a-{msh10}", "patient": ref, "criticality": "high",
            "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": str(al1[3][0][0])}]},
            "reaction": [{"manifestation": [{"text": str(al1[5])}]}]}))
    results = []
    for i, obx in enumerate(s for s in msg if s[0][0] == "OBX"):
        low, high = str(obx[7]).split("-")
        obs = Observation.model_validate({
            "id": f"o-{msh10}-{i}", "status": "final", "subject": ref,
            "code": {"coding": [{"system": "http://loinc.org", "code": str(obx[3][0][0])}]},
            "valueQuantity": {"value": float(str(obx[5])), "unit": str(obx[6]),
                              "system": "http://unitsofmeasure.org", "code": str(obx[6])},
            "referenceRange": [{"low": {"value": float(low)}, "high": {"value": float(high)}}],
            "interpretation": [{"coding": [{"code": str(obx[8])}]}],
            "effectiveDateTime": "2024-01-02T03:00:00-05:00"})
        resources.append(obs)
        results.append({"reference": f"Observation/{obs.id}"})
    if results:
        obr = msg.segment("OBR")
        resources.append(DiagnosticReport.model_validate({
            "id": f"r-{msh10}", "status": "final", "subject": ref, "result": results,
            "code": {"coding": [{"system": "http://loinc.org", "code": str(obr[4][0][0])}]}}))
    resources.append(Provenance.model_validate({
        "id": f"prov-{msh10}", "recorded": "2024-01-02T03:04:05-05:00",
        "target": [{"reference": f"{r.get_resource_type()}/{r.id}"} for r in resources],
        "agent": [{"who": {"display": "sender"}}]}))
    bundle = Bundle.model_validate({"type": "transaction", "entry": [
        {"fullUrl": f"{r.get_resource_type()}/{r.id}", "resource": r.model_dump(),
         "request": {"method": "PUT", "url": f"{r.get_resource_type()}/{r.id}"}} for r in resources]})
    return bundle.model_dump_json()


def measure(fn: Callable[[bytes], str], make: Callable[[int], bytes], seconds: float, rounds: int = 3) -> float:
    """Messages per CPU-second of this process (one core), best of ``rounds`` (the machine is shared)."""
    for i in range(20):  # warm up (imports, caches of the first message)
        fn(make(10_000_000 + i))
    best = 0.0
    n = 0
    for _ in range(rounds):
        count = 0
        start = time.process_time()
        deadline = start + seconds / rounds
        while time.process_time() < deadline:
            for _ in range(25):
                fn(make(n))
                n += 1
                count += 1
        best = max(best, count / (time.process_time() - start))
    return best


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print("normalization benchmark (one process, one core)")
    rows = []
    for label, make in (("ORU^R01 10 OBX", oru), ("ADT^A01", adt)):
        mine = measure(ours, make, args.seconds)
        base = measure(naive, make, args.seconds)
        rows.append((label, mine, base))
        print(f"  {label:16} ehrbridge {mine:9,.0f} msgs/s   naive baseline {base:8,.0f} msgs/s   "
              f"ratio {mine / base:5.1f}x")
    oru_rate, oru_base = rows[0][1], rows[0][2]
    print(f"targets: >= 10x baseline on ORU: {'met' if oru_rate >= 10 * oru_base else 'NOT met'} "
          f"({oru_rate / oru_base:.1f}x); >= 1,000 ORU/s: {'met' if oru_rate >= 1000 else 'NOT met'} "
          f"({oru_rate:,.0f}/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
