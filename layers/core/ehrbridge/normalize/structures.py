"""Message structures as data: which trigger events share a structure (HL7 table 0354) and what
each segment becomes in that structure (the V2-to-FHIR IG message maps, condensed).

A role names a segment map in ``segments.py``; the same segment can play different roles in
different structures (OBX is a result in ORU_R01, document content in MDM_T02, an immunization
observation in VXU_V04). Segments a structure does not list are counted as unmapped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Table 0354 (message structure) for the events we map; MSH-9.3 wins when the sender gives it.
STRUCTURE_OF: dict[str, str] = {
    **{f"ADT^{t}": "ADT_A01" for t in ("A01", "A04", "A08", "A13")},
    "ADT^A02": "ADT_A02", "ADT^A03": "ADT_A03",
    **{f"ADT^{t}": "ADT_A05" for t in ("A05", "A14", "A28", "A31")},
    "ADT^A06": "ADT_A06", "ADT^A07": "ADT_A06",
    **{f"ADT^{t}": "ADT_A09" for t in ("A09", "A10", "A11")},
    "ADT^A12": "ADT_A12", "ADT^A17": "ADT_A17", "ADT^A40": "ADT_A39",
    "ORU^R01": "ORU_R01", "ORM^O01": "ORM_O01", "OML^O21": "OML_O21",
    **{f"SIU^S{n}": "SIU_S12" for n in range(12, 27) if n != 25},
    "VXU^V04": "VXU_V04",
    **{f"MDM^T{n:02d}": ("MDM_T02" if n % 2 == 0 else "MDM_T01") for n in range(1, 12)},
    "RDE^O11": "RDE_O11", "RDE^O01": "RDE_O11",
}
# MSH-9.3 values that may legitimately differ from our event table (structure aliases).
STRUCTURE_ALIASES = {"ADT_A04": "ADT_A01", "ADT_A08": "ADT_A01", "ADT_A13": "ADT_A01", "ADT_A28": "ADT_A05",
                     "ADT_A31": "ADT_A05", "ADT_A40": "ADT_A39", "ADT_A11": "ADT_A09", "RDE_O01": "RDE_O11",
                     "SIU_S13": "SIU_S12", "SIU_S14": "SIU_S12", "SIU_S15": "SIU_S12", "SIU_S17": "SIU_S12",
                     "SIU_S26": "SIU_S12", "MDM_T06": "MDM_T02", "MDM_T10": "MDM_T02", "MDM_T04": "MDM_T02",
                     "MDM_T08": "MDM_T02", "ADT_A03": "ADT_A03"}

# Segments with no FHIR target in our maps, but which are understood (not "unknown") everywhere.
_ENVELOPE = {"MSH": "header", "SFT": "skip", "EVN": "event", "UAC": "skip"}
_PATIENT = {"PID": "patient", "PD1": "patient_extra", "NK1": "contact", "PV1": "encounter",
            "PV2": "encounter_extra"}
_ORDER = {"ORC": "order", "TQ1": "timing", "OBR": "order_detail", "NTE": "note", "SPM": "specimen"}


@dataclass(frozen=True)
class Structure:
    name: str
    roles: dict[str, str]
    # The structure needs these segments; a message without them is quarantined (a specific reason).
    required: tuple[str, ...] = ("PID",)
    produces: tuple[str, ...] = field(default=())


def _adt(**extra: str) -> dict[str, str]:
    return {**_ENVELOPE, **_PATIENT, "OBX": "observation", "AL1": "allergy", "DG1": "condition",
            "PR1": "procedure", "NTE": "note", **extra}


STRUCTURES: dict[str, Structure] = {
    "ADT_A01": Structure("ADT_A01", _adt()),
    "ADT_A02": Structure("ADT_A02", _adt()),
    "ADT_A03": Structure("ADT_A03", _adt()),
    "ADT_A05": Structure("ADT_A05", _adt()),
    "ADT_A06": Structure("ADT_A06", _adt(MRG="merge_note")),
    "ADT_A09": Structure("ADT_A09", _adt()),
    "ADT_A12": Structure("ADT_A12", _adt()),
    "ADT_A17": Structure("ADT_A17", _adt(), required=("PID", "PID")),
    "ADT_A39": Structure("ADT_A39", {**_ENVELOPE, **_PATIENT, "MRG": "merge"}, required=("PID", "MRG")),
    "ORU_R01": Structure("ORU_R01", {**_ENVELOPE, **_PATIENT, **_ORDER, "OBR": "report", "OBX": "result",
                                     "CTI": "skip", "FT1": "skip"}, required=("PID", "OBR")),
    "ORM_O01": Structure("ORM_O01", {**_ENVELOPE, **_PATIENT, **_ORDER, "OBX": "order_observation",
                                     "DG1": "condition", "AL1": "allergy", "RXO": "medication_order",
                                     "RXR": "route"}, required=("PID",)),
    "OML_O21": Structure("OML_O21", {**_ENVELOPE, **_PATIENT, **_ORDER, "OBX": "order_observation",
                                     "DG1": "condition", "AL1": "allergy", "SAC": "skip"}, required=("PID",)),
    "SIU_S12": Structure("SIU_S12", {**_ENVELOPE, **_PATIENT, "SCH": "appointment", "TQ1": "timing",
                                     "NTE": "note", "RGS": "skip", "AIS": "resource", "AIG": "resource",
                                     "AIL": "resource", "AIP": "resource", "OBX": "observation",
                                     "DG1": "condition"}, required=("SCH",)),
    "VXU_V04": Structure("VXU_V04", {**_ENVELOPE, **_PATIENT, "ORC": "order", "TQ1": "timing", "RXA": "immunization",
                                     "RXR": "route", "OBX": "immunization_observation", "NTE": "note",
                                     "IN1": "skip", "IN2": "skip", "IN3": "skip", "GT1": "skip"},
                         required=("PID", "RXA")),
    "MDM_T02": Structure("MDM_T02", {**_ENVELOPE, **_PATIENT, "ORC": "order", "TQ1": "timing",
                                     "OBR": "order_detail", "TXA": "document", "OBX": "document_content",
                                     "NTE": "note", "CON": "skip"}, required=("PID", "TXA")),
    "MDM_T01": Structure("MDM_T01", {**_ENVELOPE, **_PATIENT, "ORC": "order", "TQ1": "timing",
                                     "OBR": "order_detail", "TXA": "document", "CON": "skip",
                                     "OBX": "document_content", "NTE": "note"}, required=("PID", "TXA")),
    "RDE_O11": Structure("RDE_O11", {**_ENVELOPE, **_PATIENT, "ORC": "order", "RXE": "medication",
                                     "RXO": "skip_rxo", "RXR": "route", "RXC": "skip", "TQ1": "timing",
                                     "NTE": "note", "AL1": "allergy", "OBX": "order_observation", "IN1": "skip",
                                     "GT1": "skip", "TQ2": "skip", "RXD": "skip", "FT1": "skip", "PRT": "skip",
                                     "CDO": "skip", "BLG": "skip"},
                         required=("PID", "RXE")),
}
# Structures FHIR-mapped by trigger (table lookups in segments.py): unsupported events are quarantined.
SUPPORTED_EVENTS = frozenset(STRUCTURE_OF)


def resolve(kind: str, structure_field: str) -> tuple[str | None, str]:
    """(structure name or None, reason when not supported)."""
    if kind not in SUPPORTED_EVENTS:
        return None, f"unsupported message type {kind}"
    structure = STRUCTURE_OF[kind]
    sent = STRUCTURE_ALIASES.get(structure_field, structure_field)
    if sent and sent in STRUCTURES and sent != structure and kind.split("^")[0] == sent.split("_")[0]:
        structure = sent
    return structure, ""
