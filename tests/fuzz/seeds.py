"""Seed messages for the fuzz targets: the repository's sample events plus synthetic messages (made-up
names and numbers, no real data) covering every structure the normalizer maps, so mutations reach
every segment map and not only the parser."""

from __future__ import annotations

from pathlib import Path

EVENTS = Path(__file__).resolve().parents[2] / "events" / "hl7"

_MSH = "MSH|^~\\&|DEMOLAB|LABFAC|EHRBRIDGE|HOSP|20240102030405-0500||{type}|{cid}|P|2.5.1|||AL|NE||{charset}\r"
_PID = ("PID|1||MRN100^^^HOSP^MR~999-00-1234^^^SSA^SS||DOE^JANE^Q^^MS||19800101|F||2106-3^White^CDCREC|"
        "1 MAIN ST^^BOSTON^MA^02110^USA||^PRN^PH^^1^617^5551234|||M||ACCT1|||||||||||20240101\r")
_PV1 = ("PV1|1|I|W4^401^A^HOSP||||1234^WELBY^MARCUS^^^DR|5678^KILDARE^JAMES|||MED||||7|||1234^WELBY^MARCUS|"
        "IN|V100^^^HOSP^VN|||||||||||||||||||||||||20240102020000|20240105020000\r")

SYNTHETIC = {
    "adt_a01": _MSH.format(type="ADT^A01^ADT_A01", cid="S1", charset="UNICODE UTF-8") + "EVN|A01|20240102030405\r"
    + _PID + "PD1|||HOSP^^123\rNK1|1|DOE^JOHN|SPO^Spouse^HL70063||^PRN^PH^^1^617^5550000\r" + _PV1
    + "PV2|||CHEST PAIN\rOBX|1|NM|8302-2^Body height^LN||170|cm^centimeter^UCUM|||||F\r"
    "AL1|1|DA|7980^Penicillin^RXNORM|SV|Hives|20200101\rDG1|1||I10^Hypertension^I10||20240102|A\r"
    "PR1|1||0DTJ4ZZ^Appendectomy^ICD10PCS||20240103\r",
    "adt_a39": _MSH.format(type="ADT^A40^ADT_A39", cid="S2", charset="") + "EVN|A40|20240102030405\r" + _PID
    + "MRG|MRN099^^^HOSP^MR\r",
    "adt_a17": _MSH.format(type="ADT^A17^ADT_A17", cid="S3", charset="") + "EVN|A17|20240102\r" + _PID + _PV1
    + _PID.replace("MRN100", "MRN101") + _PV1,
    "oru_r01": _MSH.format(type="ORU^R01^ORU_R01", cid="S4", charset="8859/1") + _PID + _PV1
    + "ORC|RE|ORD1|FIL1||CM\rOBR|1|ORD1|FIL1|24323-8^Comprehensive metabolic panel^LN|||20240102010000|||||||"
    "20240102013000|BLD&Blood&HL70070|1234^WELBY^MARCUS||||||20240102040000|||F\r"
    "OBX|1|NM|2345-7^Glucose^LN||95|mg/dL^mg/dL^UCUM|70-99|N|||F|||20240102013000\r"
    "OBX|2|ST|5778-6^Color of Urine^LN||Yellow||||||F\r"
    "OBX|3|CWE|5767-9^Appearance^LN||CLR^Clear^L||||||F\r"
    "OBX|4|SN|2160-0^Creatinine^LN||<^1.2|mg/dL|0.6-1.2|N|||F\r"
    "OBX|5|TX|11526-1^Pathology study^LN||Line one\\.br\\line two||||||F\r"
    "OBX|6|DT|21112-8^Birth date^LN||19800101||||||F\r"
    "OBX|7|TS|21112-8^Birth date^LN||20240102030405+0100||||||F\r"
    "OBX|8|ED|11502-2^Lab report^LN||^application^pdf^Base64^JVBERi0xLjQK||||||F\r"
    "NTE|1|L|Specimen slightly hemolyzed\r"
    "SPM|1|SP1||BLD^Blood^HL70487|||||||||||||20240102010000\r",
    "orm_o01": _MSH.format(type="ORM^O01^ORM_O01", cid="S5", charset="") + _PID + _PV1
    + "ORC|NW|ORD2||||||^^^20240102||||1234^WELBY^MARCUS\rTQ1|1||||||20240102|20240103\r"
    "OBR|1|ORD2||58410-2^CBC^LN|||20240102\rDG1|1||R07.9^Chest pain^I10\r"
    "RXO|00409-4888^Heparin^NDC|5000||U\rRXR|SC^Subcutaneous^HL70162\r",
    "oml_o21": _MSH.format(type="OML^O21^OML_O21", cid="S6", charset="") + _PID
    + "ORC|NW|ORD3\rOBR|1|ORD3||2093-3^Cholesterol^LN\rSPM|1|SP2||SER^Serum^HL70487\r",
    "siu_s12": _MSH.format(type="SIU^S12^SIU_S12", cid="S7", charset="")
    + "SCH|APT1|APT1|||||ROUTINE^Routine^HL70276|FOLLOWUP|30|min|^^30^20240110090000^20240110093000|||||"
    "1234^WELBY^MARCUS|||||||||BOOKED\r" + _PID + _PV1
    + "RGS|1\rAIS|1||99213^Office visit^CPT|20240110090000|||30|min\rAIL|1||CLINIC1^^^HOSP\r"
    "AIP|1||1234^WELBY^MARCUS|ATND\r",
    "vxu_v04": _MSH.format(type="VXU^V04^VXU_V04", cid="S8", charset="") + _PID
    + "ORC|RE||IZ1\rRXA|0|1|20240102||08^HepB pediatric^CVX|0.5|mL^mL^UCUM||00^New record^NIP001||||||"
    "LOT123|20251231|MSD^Merck^MVX|||CP|A\rRXR|IM^Intramuscular^HL70162|LD^Left deltoid^HL70163\r"
    "OBX|1|CE|64994-7^Eligibility^LN|1|V02^VFC eligible^HL70064||||||F\r",
    "mdm_t02": _MSH.format(type="MDM^T02^MDM_T02", cid="S9", charset="") + "EVN|T02|20240102\r" + _PID + _PV1
    + "TXA|1|DS^Discharge summary^HL70270|TX|20240102||||||||DOC1|||||AU\r"
    "OBX|1|TX|18842-5^Discharge summary^LN||Patient discharged in good condition.||||||F\r",
    "rde_o11": _MSH.format(type="RDE^O11^RDE_O11", cid="S10", charset="") + _PID + _PV1
    + "ORC|NW|RX1\rRXE|^^^20240102^^R|00409-4888^Heparin^NDC|5000||U|INJ^Injection^HL70292||||10|"
    "vial\rRXR|IV^Intravenous^HL70162\rTQ1|1||Q8H\r",
}


def seed_messages() -> list[bytes]:
    files = [p.read_bytes() for p in sorted(EVENTS.glob("*.hl7"))]
    return files + [text.encode("latin-1") for text in SYNTHETIC.values()]
