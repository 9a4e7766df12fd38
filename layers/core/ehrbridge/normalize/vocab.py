"""HL7 v2 tables -> FHIR codes, as data (V2-to-FHIR IG vocabulary ConceptMaps, the subset we map).

Where the IG ConceptMap maps a code, we follow it (checked against HL7/v2-to-fhir mappings/codesystems).
Where it leaves a code unmapped but FHIR requires a value (statuses), our choice is marked "ext:".

Tables: 0001 gender, 0002 marital status, 0004 patient class, 0078 interpretation, 0085 observation
status, 0123 report status, 0119/0038 order control/status, 0190 address use, 0200 name use,
0201/0202 telecom use/equipment, 0203 identifier type, 0278 appointment status, 0322 completion
status, 0127/0128 allergy type/severity.
"""

from __future__ import annotations

V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_INTERP = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
V3_MARITAL = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"

GENDER = {"M": "male", "F": "female", "O": "other", "A": "other", "U": "unknown", "N": "unknown",
          "MALE": "male", "FEMALE": "female"}
MARITAL = {"A": "L", "D": "D", "M": "M", "S": "S", "W": "W", "C": "C", "P": "T", "E": "L", "I": "I", "N": "A",
           "G": "T", "R": "T", "U": "UNK", "B": "U", "T": "T", "O": "OTH"}
# IG PatientClass[EncounterClass]: E I O P -> v3 ActCode; R B C N U stay v2-0004 codes.
V2_0004 = "http://terminology.hl7.org/CodeSystem/v2-0004"
ENCOUNTER_CLASS = {"E": (V3_ACT, "EMER", "emergency"), "I": (V3_ACT, "IMP", "inpatient encounter"),
                   "O": (V3_ACT, "AMB", "ambulatory"), "P": (V3_ACT, "PRENC", "pre-admission"),
                   "R": (V2_0004, "R", "Recurring patient"), "B": (V2_0004, "B", "Obstetrics"),
                   "C": (V2_0004, "C", "Commercial Account"), "N": (V2_0004, "N", "Not Applicable"),
                   "U": (V2_0004, "U", "Unknown"),
                   # ext: spelled-out classes some senders use
                   "EMERGENCY": (V3_ACT, "EMER", "emergency"), "INPATIENT": (V3_ACT, "IMP", "inpatient encounter"),
                   "OUTPATIENT": (V3_ACT, "AMB", "ambulatory")}
# Encounter status by trigger event (ADT semantics); A08 and friends: derived from PV1-45.
ENCOUNTER_STATUS = {"A01": "in-progress", "A02": "in-progress", "A03": "finished", "A04": "arrived",
                    "A05": "planned", "A06": "in-progress", "A07": "in-progress", "A09": "in-progress",
                    "A10": "arrived", "A11": "cancelled", "A12": "in-progress", "A13": "in-progress",
                    "A14": "planned", "A17": "in-progress", "A27": "cancelled", "A38": "cancelled"}
INTERPRETATION_V3 = frozenset({"<", ">", "A", "AA", "B", "D", "H", "HH", "HU", "I", "IE", "L", "LL", "LU", "MS", "N",
                               "NCL", "NEG", "NR", "ND", "POS", "QCF", "R", "RR", "S", "SDD", "SYN-R", "SYN-S",
                               "TOX", "U", "VS", "W", "WR", "EX", "EXP", "HX", "LX", "IND", "E", "CAR", "DET",
                               "H>", "L<", "HM", "LM", "CARRIER", "UNE", "OBX"})
# IG 0085 (ObservationResultStatusCodesInterpretation): A C D F P X W mapped. The IG leaves B I N O R S U V
# unmapped; ext where the v2 definition names a FHIR status plainly: R (entered, not verified) and S (partial)
# -> preliminary, I (specimen in lab) and O (order detail, no result) -> registered, U (changed to final) and
# V (verified final) -> final, B (appended to a final) -> amended; N (not asked) -> unknown (plus
# dataAbsentReason not-asked). Empty OBX-11 (required) or a code outside 0085 -> unknown, reported.
OBSERVATION_STATUS = {"A": "amended", "C": "corrected", "D": "entered-in-error", "F": "final", "P": "preliminary",
                      "X": "cancelled", "W": "entered-in-error",
                      "R": "preliminary", "S": "preliminary", "I": "registered", "O": "registered", "U": "final",
                      "V": "final", "B": "amended", "N": "unknown"}
# IG 0123 (ResultStatus[Non-Queries]): O I S registered, P preliminary, C corrected, R partial, F final,
# X cancelled. ext (IG: unmapped): A (some results) and M (corrected, not final) -> partial, N (procedure
# done, results pending) -> registered; Y/Z (no order / no patient on record; IG: "if not mapped, error")
# -> unknown with an issue. Empty OBR-25 -> unknown, reported.
REPORT_STATUS = {"O": "registered", "I": "registered", "S": "registered", "P": "preliminary", "C": "corrected",
                 "R": "partial", "F": "final", "X": "cancelled",
                 "A": "partial", "M": "partial", "N": "registered", "Y": "unknown", "Z": "unknown"}
REPORT_RANK = {"registered": 0, "partial": 1, "preliminary": 2, "final": 3, "amended": 4, "corrected": 4,
               "appended": 4, "cancelled": 5, "entered-in-error": 6, "unknown": -1}
# IG OrderControlCode[ServiceRequest.status] (0119; used when ORC-5 is empty): CA/HD are *requests*
# (cancel/hold requested, not yet done) -> active, as the IG maps them; CR DC DF DR OC OD -> revoked,
# HR OH -> on-hold, FU -> completed. ext: codes the IG leaves unmapped but whose meaning is plain.
ORDER_CONTROL_STATUS = {"NW": "active", "OK": "active", "CA": "active", "HD": "active", "RL": "active",
                        "RO": "active", "AF": "active", "PR": "active", "PY": "active", "RQ": "active",
                        "CR": "revoked", "DC": "revoked", "DF": "revoked", "DR": "revoked", "OC": "revoked",
                        "OD": "revoked", "HR": "on-hold", "OH": "on-hold", "FU": "completed",
                        # ext (IG: unmapped)
                        "SC": "active", "XO": "active", "XX": "active", "RP": "active", "OR": "active",
                        "CH": "active", "PA": "active", "NA": "active", "RE": "completed", "SN": "draft"}
ORDER_STATUS = {"A": "active", "CA": "revoked", "CM": "completed", "DC": "revoked", "ER": "entered-in-error",
                "HD": "on-hold", "IP": "active", "RP": "revoked", "SC": "active"}
MEDREQ_STATUS = {"active": "active", "revoked": "cancelled", "on-hold": "on-hold", "completed": "completed",
                 "draft": "draft", "entered-in-error": "entered-in-error"}
PRIORITY = {"S": "stat", "A": "asap", "R": "routine", "P": "urgent", "C": "urgent", "T": "urgent"}
# IG Address Use (0190), NameType (0200), TelecommunicationUseCode (0201), EquipmentType (0202).
ADDRESS_USE = {"BA": "old", "BI": "billing", "C": "temp", "B": "work", "H": "home", "O": "work"}
NAME_USE = {"BAD": "old", "D": "usual", "L": "official", "M": "maiden", "MSK": "anonymous", "N": "nickname",
            "NAV": "temp", "R": "official", "TEMP": "temp"}
TELECOM_USE = {"PRN": "home", "WPN": "work", "PRS": "mobile"}
TELECOM_SYSTEM = {"PH": "phone", "FX": "fax", "CP": "phone", "BP": "pager", "INTERNET": "email", "X.400": "email",
                  "MD": "other", "TDD": "other", "TTY": "other", "SAT": "other", "": "phone"}
IDENTIFIER_TYPE_DISPLAY = {"MR": "Medical record number", "SS": "Social Security number",
                           "PI": "Patient internal identifier", "PT": "Patient external identifier",
                           "DL": "Driver's license number", "AN": "Account number", "VN": "Visit number",
                           "PN": "Person number", "NI": "National unique individual identifier",
                           "PLAC": "Placer Identifier", "FILL": "Filler Identifier", "MC": "Patient's Medicare number",
                           "MA": "Patient Medicaid number", "NPI": "National provider identifier"}
IDENTIFIER_TYPE_SYSTEM = {"SS": "http://hl7.org/fhir/sid/us-ssn", "NPI": "http://hl7.org/fhir/sid/us-npi",
                          "MC": "http://hl7.org/fhir/sid/us-medicare"}
# IG FillerStatusCodes (0278); Discontinued/Blocked/Overbook unmapped there: the trigger event decides.
APPOINTMENT_STATUS = {"PENDING": "pending", "WAITLIST": "waitlist", "BOOKED": "booked", "STARTED": "checked-in",
                      "COMPLETE": "fulfilled", "CANCELLED": "cancelled", "DELETED": "entered-in-error",
                      "NOSHOW": "noshow"}
APPOINTMENT_STATUS_BY_TRIGGER = {"S12": "booked", "S13": "booked", "S14": "booked", "S15": "cancelled",
                                 "S16": "cancelled", "S17": "entered-in-error", "S18": "booked", "S19": "booked",
                                 "S20": "booked", "S21": "booked", "S22": "booked", "S23": "booked",
                                 "S24": "booked", "S26": "noshow"}
PARTICIPANT_STATUS = {"appointment": "accepted", "cancelled": "declined", "noshow": "declined",
                      "entered-in-error": "declined"}
IMMUNIZATION_STATUS = {"CP": "completed", "PA": "completed", "RE": "not-done", "NA": "not-done"}
ALLERGY_CATEGORY = {"DA": "medication", "FA": "food", "EA": "environment", "MA": "medication", "AA": "environment",
                    "LA": "environment", "PA": "environment", "MC": "medication"}
ALLERGY_CRITICALITY = {"SV": "high", "MO": "low", "MI": "low", "U": "unable-to-assess"}
DOCUMENT_STATUS = {"AU": "final", "LA": "final", "DI": "preliminary", "DO": "preliminary", "IP": "preliminary",
                   "IN": "preliminary", "PA": "preliminary"}
DOCUMENT_RELATION = {"T06": "appends", "T08": "replaces", "T10": "replaces", "T07": "appends", "T09": "replaces"}
