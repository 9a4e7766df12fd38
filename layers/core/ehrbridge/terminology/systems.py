"""Coding-system names as sent in CWE-3/CWE-6 (HL7 table 0396 and common aliases) -> FHIR system URIs.

Source: HL7 table 0396 and the V2-to-FHIR IG's coding-system ConceptMap. Unknown names are not
invented into URIs: they become the tenant's local namespace (``local_system``) so they stay
traceable, and the preflight lists them.
"""

from __future__ import annotations

from urllib.parse import quote

from ehrbridge.terminology.checks import CVX, LOINC, RXNORM, SNOMED, UCUM

SYSTEMS: dict[str, str] = {
    "LN": LOINC, "LOINC": LOINC, "HTTP://LOINC.ORG": LOINC, "2.16.840.1.113883.6.1": LOINC,
    "SCT": SNOMED, "SNM": SNOMED, "SNOMED": SNOMED, "SNOMEDCT": SNOMED, "SNOMED-CT": SNOMED, "SNM3": SNOMED,
    "HTTP://SNOMED.INFO/SCT": SNOMED, "2.16.840.1.113883.6.96": SNOMED,
    "RXNORM": RXNORM, "RXN": RXNORM, "2.16.840.1.113883.6.88": RXNORM,
    "CVX": CVX, "HL70292": CVX, "2.16.840.1.113883.12.292": CVX,
    "MVX": "http://hl7.org/fhir/sid/mvx", "HL70227": "http://hl7.org/fhir/sid/mvx",
    "UCUM": UCUM, "ANS+": UCUM, "ISO+": UCUM,
    "I10": "http://hl7.org/fhir/sid/icd-10", "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "I10C": "http://hl7.org/fhir/sid/icd-10-cm", "ICD10CM": "http://hl7.org/fhir/sid/icd-10-cm",
    "I9": "http://hl7.org/fhir/sid/icd-9-cm", "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "ICD9": "http://hl7.org/fhir/sid/icd-9-cm",
    "C4": "http://www.ama-assn.org/go/cpt", "CPT": "http://www.ama-assn.org/go/cpt", "CPT4": "http://www.ama-assn.org/go/cpt",
    "HCPCS": "urn:oid:2.16.840.1.113883.6.285", "HPC": "urn:oid:2.16.840.1.113883.6.285",
    "NDC": "http://hl7.org/fhir/sid/ndc", "CDCREC": "urn:oid:2.16.840.1.113883.6.238",
    "NCIT": "http://ncithesaurus-stage.nci.nih.gov", "NUCC": "http://nucc.org/provider-taxonomy",
    "ISO3166": "urn:iso:std:iso:3166", "ISO639": "urn:ietf:bcp:47", "NPI": "http://hl7.org/fhir/sid/us-npi",
}

V2_TABLE_BASE = "http://terminology.hl7.org/CodeSystem/v2-"
LOCAL_MARKERS = frozenset({"L", "99LOCAL", "LOCAL", "99ZZZ"})


def local_system(tenant_id: str, name: str) -> str:
    """The tenant's namespace for a local or unknown coding system (never a standard URI)."""
    return f"urn:ehrbridge:{tenant_id}:codesystem:{quote(name or 'local', safe='')}"


def system_uri(name: str, tenant_id: str) -> tuple[str, bool]:
    """(URI, known). ``HL7nnnn``/``HL7nnnn`` tables map to terminology.hl7.org; 99zzz and L are local."""
    key = name.strip().upper()
    if not key:
        return "", False
    uri = SYSTEMS.get(key)
    if uri:
        return uri, True
    if key.startswith("HL7") and key[3:].isdigit() and len(key) == 7:
        return V2_TABLE_BASE + key[3:], True
    if key.startswith(("HTTP://", "HTTPS://", "URN:")):
        return name.strip(), True
    if key.replace(".", "").isdigit() and key.count(".") >= 2:
        return "urn:oid:" + key, True
    return local_system(tenant_id, name.strip()), False
