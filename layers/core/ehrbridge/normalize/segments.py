"""Segment maps (V2-to-FHIR IG segment maps, condensed): one function per role, plus the fields each reads.

Every map declares the fields it maps (``MAPPED``); any other non-empty field of the segment is
reported as unmapped (``PID-9``), so nothing is silently dropped.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

from ehrbridge.hl7.message import Segment
from ehrbridge.normalize import datatypes as dt
from ehrbridge.normalize import vocab
from ehrbridge.normalize.context import _CONTAINERS, Ctx, QuarantineError, drop_empty

Resource = dict[str, Any]


class State:
    """Where the mapper is in the message: current patient, encounter, order, report, ..."""

    def __init__(self, ctx: Ctx, trigger: str, message_time: str) -> None:
        self.ctx = ctx
        self.trigger = trigger
        self.message_time = message_time
        self.resources: list[Resource] = []
        self.patient: Resource | None = None
        self.patient_key: tuple[str, str] | None = None
        self.encounter: Resource | None = None
        self.order: Resource | None = None
        self.order_key = ""
        self.report: Resource | None = None
        self.observation: Resource | None = None
        self.immunization: Resource | None = None
        self.appointment: Resource | None = None
        self.document: Resource | None = None
        self.medication: Resource | None = None
        self.specimen: Resource | None = None
        self.notable: Resource | None = None
        self.obx_seen: dict[str, int] = {}
        self.merges: list[tuple[Resource, Resource]] = []
        self._refs: dict[str, dict[str, str]] = {}

    def add(self, resource: Resource) -> Resource:
        key = (resource["resourceType"], resource["id"])
        if key in self.ctx.ids:
            # Same deterministic id twice in one message (e.g. a repeated OBR-2): keep both, never merge.
            resource["id"] = self.ctx.rid(resource["resourceType"], resource["id"], str(len(self.resources)))
            self.ctx.issue("duplicate-business-key", resource["resourceType"])
        self.ctx.ids.add((resource["resourceType"], resource["id"]))
        self.resources.append(resource)
        return resource

    def ref(self, resource: Resource | None) -> dict[str, str] | None:
        """One Reference object per target, shared by every resource that points at it (the fast
        validator checks a shared object once)."""
        if not resource:
            return None
        key = f"{resource['resourceType']}/{resource['id']}"
        ref = self._refs.get(key)
        if ref is None:
            ref = self._refs[key] = {"reference": key}
        return ref

    def subject(self) -> dict[str, str] | None:
        return self.ref(self.patient)


def _where(seg: Segment, n: int) -> str:
    return f"{seg.name}-{n}"


def _unused(seg: Segment, st: State, why: str) -> None:
    """A segment whose map has nothing to attach it to: listed whole, with the reason (never dropped)."""
    if any(f and f != '""' for f in seg.fields[2:]):
        st.ctx.unmapped[f"{seg.name}({why})"] += 1


def _dt(seg: Segment, n: int, st: State) -> str | None:
    t = st.ctx.ts(seg.value(n), _where(seg, n))
    return t.fhir if t else None


def _cwe(seg: Segment, n: int, st: State, rep: int = 0) -> dict[str, Any] | None:
    reps = seg.reps(n)
    return dt.cwe(reps[rep], seg.seps, st.ctx, _where(seg, n)) if len(reps) > rep else None


def _unit(seg: Segment, n: int, st: State) -> dict[str, Any]:
    reps = seg.reps(n)
    return dt.unit(reps[0], seg.seps, st.ctx, _where(seg, n)) if reps else {}


def _xon(seg: Segment, n: int, st: State) -> dict[str, Any] | None:
    """The first XON of the field as a logical Reference; further repetitions (the FHIR target holds one)
    are listed, not dropped."""
    reps = seg.reps(n)
    if len(reps) > 1:
        st.ctx.unmapped[f"{_where(seg, n)}(repetition 2+)"] += 1
    return dt.xon_reference(reps[0], seg.seps, st.ctx) if reps else None


def _cwes(seg: Segment, n: int, st: State) -> list[dict[str, Any]]:
    return [c for c in (dt.cwe(r, seg.seps, st.ctx, _where(seg, n)) for r in seg.reps(n)) if c]


def _xcn(seg: Segment, n: int, st: State) -> dict[str, Any] | None:
    reps = seg.reps(n)
    return dt.xcn_reference(reps[0], seg.seps, st.ctx) if reps else None


def _v2(table: str, code: str, display: str = "") -> dict[str, Any]:
    coding = {"system": f"http://terminology.hl7.org/CodeSystem/v2-{table}", "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


# ------------------------------------------------------------------ patient
def patient(seg: Segment, st: State) -> None:
    ctx, seps = st.ctx, seg.seps
    identifiers = []
    primary = None
    for n in (3, 2, 4):
        for rep in seg.reps(n):
            ident = dt.cx(rep, seps, ctx, _where(seg, n))
            if ident:
                identifiers.append(ident)
                code = ident.get("type", {}).get("coding", [{}])[0].get("code", "")
                if primary is None or (code == "MR" and primary[2] != "MR" and n == 3):
                    primary = (dt.authority_of(rep, seps, ctx), ident["value"], code)
    ssn = seg.value(19)
    if ssn:
        identifiers.append({"type": _v2("0203", "SS"), "system": "http://hl7.org/fhir/sid/us-ssn", "value": ssn})
    dl = seg.reps(20)
    if dl:
        ident = dt.cx(dl[0], seps, ctx, "PID-20")
        if ident:
            ident["type"] = _v2("0203", "DL")
            identifiers.append(ident)
    if primary is None:
        raise QuarantineError("PID-3 patient identifier list is empty (no identifier to key the patient on)")
    pid = ctx.rid("Patient", primary[0].upper(), primary[1])
    res: Resource = {"resourceType": "Patient", "id": pid, "identifier": identifiers}
    names = [x for x in (dt.xpn(r, seps) for r in seg.reps(5)) if x]
    # PID-9 patient alias (IG PID[Patient]: another Patient.name).
    names += [x for x in (dt.xpn(r, seps) for r in seg.reps(9)) if x]
    if names:
        res["name"] = names
    tel = [x for x in (dt.xtn(r, seps) for r in seg.reps(13)) if x]
    for x in (dt.xtn(r, seps) for r in seg.reps(14)):
        if x:
            x.setdefault("use", "work")
            tel.append(x)
    if tel:
        res["telecom"] = tel
    gender = seg.value(8)
    if gender:
        mapped = vocab.GENDER.get(gender.upper())
        if mapped:
            res["gender"] = mapped
        else:
            ctx.issue("unmapped-code", "PID-8")
    birth = ctx.ts(seg.value(7), "PID-7")
    if birth:
        res["birthDate"] = birth.date if birth.precision not in ("year", "month") else birth.fhir
        if birth.instant is not None:
            res["_birthDate"] = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                                "valueDateTime": birth.fhir}]}
    death_indicator = seg.value(30).upper()
    death = ctx.ts(seg.value(29), "PID-29")
    if death:
        res["deceasedDateTime"] = death.fhir
    elif death_indicator in ("Y", "N"):
        res["deceasedBoolean"] = death_indicator == "Y"
    addresses = [x for x in (dt.xad(r, seps) for r in seg.reps(11)) if x]
    if addresses:
        res["address"] = addresses
    marital = seg.value(16).upper()
    if marital in vocab.MARITAL:
        res["maritalStatus"] = {"coding": [{"system": vocab.V3_MARITAL, "code": vocab.MARITAL[marital]}]}
    multiple = seg.value(24).upper()
    order = dt.decimal(seg.value(25))
    if isinstance(order, int) and 0 < order <= dt.FHIR_INT_MAX:  # FHIR integer: 32-bit
        res["multipleBirthInteger"] = order
    elif multiple in ("Y", "N"):
        res["multipleBirthBoolean"] = multiple == "Y"
    lang = _cwe(seg, 15, st)
    if lang:
        res["communication"] = [{"language": lang}]
    mothers = seg.reps(6)
    if mothers:
        maiden = dt.xpn(mothers[0], seps)
        if maiden and maiden.get("family"):
            res["extension"] = [{"url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
                                 "valueString": maiden["family"]}]
    if st.patient is None or st.patient["id"] != pid:
        st.patient = st.add(res)
    st.patient_key = (primary[0], primary[1])
    st.encounter = None
    st.notable = None


def patient_extra(seg: Segment, st: State) -> None:
    """PD1: primary facility (PD1-3, IG: generalPractitioner(Organization)) and primary care provider
    (PD1-4) as generalPractitioner (logical references)."""
    if st.patient is None:
        _unused(seg, st, "no patient")
        return
    facilities = [dt.xon_reference(r, seg.seps, st.ctx) for r in seg.reps(3)]  # PD1-3 repeats: every one
    for gp in (*facilities, _xcn(seg, 4, st)):
        if gp:
            st.patient.setdefault("generalPractitioner", []).append(gp)


def contact(seg: Segment, st: State) -> None:
    if st.patient is None:
        _unused(seg, st, "no patient")
        return
    seps = seg.seps
    c: Resource = {}
    names = [x for x in (dt.xpn(r, seps) for r in seg.reps(2)) if x]
    if names:
        c["name"] = names[0]
    rel = _cwe(seg, 3, st)
    if rel:
        c["relationship"] = [rel]
    addr = [x for x in (dt.xad(r, seps) for r in seg.reps(4)) if x]
    if addr:
        c["address"] = addr[0]
    tel = [x for x in (dt.xtn(r, seps) for r in seg.reps(5) + seg.reps(6)) if x]
    if tel:
        c["telecom"] = tel
    org = _xon(seg, 13, st)  # IG NK1[Patient]: NK1-13 contact organization -> contact.organization
    if org:
        c["organization"] = org
    if c:
        st.patient.setdefault("contact", []).append(c)


# ------------------------------------------------------------------ encounter
def encounter(seg: Segment, st: State) -> None:
    ctx = st.ctx
    patient_class = seg.value(2).upper()
    if patient_class in ("N", "") and not seg.reps(19):
        # "not applicable": no visit (A28/A31 person updates); whatever else it carries is listed.
        if any(f and f != '""' for i, f in enumerate(seg.fields) if i > 2):
            st.ctx.unmapped["PV1(no visit: PV1-2 N or empty, no PV1-19)"] += 1
        return
    visit = seg.reps(19)
    if visit:
        key = dt.authority_of(visit[0], seg.seps, ctx).upper() + "|" + seg.value(19)
    else:
        key = "msg|" + (st.patient["id"] if st.patient else "") + "|" + seg.value(44) + "|" + ctx.sender + \
              "|" + st.message_time
    status = vocab.ENCOUNTER_STATUS.get(st.trigger)
    end = _dt(seg, 45, st)
    if status is None:
        status = "finished" if end else "in-progress"
    res: Resource = {"resourceType": "Encounter", "id": ctx.rid("Encounter", key), "status": status}
    cls = vocab.ENCOUNTER_CLASS.get(patient_class)
    if cls:
        res["class"] = {"system": cls[0], "code": cls[1], "display": cls[2]}
    elif not patient_class:
        res["class"] = {"extension": _ABSENT["extension"]}
        ctx.issue("missing-code", "PV1-2")
    else:
        res["class"] = {"system": "http://terminology.hl7.org/CodeSystem/v2-0004", "code": patient_class}
        ctx.issue("unmapped-code", "PV1-2")
    if visit:
        ident = dt.cx(visit[0], seg.seps, ctx, "PV1-19")
        if ident:
            ident.setdefault("type", _v2("0203", "VN"))
            res["identifier"] = [ident]
    admit_type = seg.value(4)
    if admit_type:
        res["type"] = [_v2("0007", admit_type)]
    start = _dt(seg, 44, st)
    if start or end:
        res["period"] = drop_empty({"start": start, "end": end})
    participants = []
    for n, code in ((7, "ATND"), (8, "REF"), (9, "CON"), (17, "ADM")):
        for rep in seg.reps(n):
            who = dt.xcn_reference(rep, seg.seps, ctx)
            if who:
                participants.append({"type": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": code}]}],
                    "individual": who})
    if participants:
        res["participant"] = participants
    hosp = {}
    disp = _cwe(seg, 36, st)
    if disp:
        hosp["dischargeDisposition"] = disp
    source = _cwe(seg, 14, st)
    if source:
        hosp["admitSource"] = source
    if hosp:
        res["hospitalization"] = hosp
    loc = seg.value(3, 1)
    if loc:
        text = " ".join(x for x in (seg.value(3, 4), seg.value(3, 1), seg.value(3, 2), seg.value(3, 3)) if x)
        res["location"] = [{"location": {"display": text}}]
    service = seg.value(10)
    if service:
        res["serviceType"] = _v2("0069", service)
    res["subject"] = st.subject()
    st.encounter = st.add(drop_empty(res))


def encounter_extra(seg: Segment, st: State) -> None:
    """PV2: admit reason -> reasonCode; expected admit/discharge (PV2-8/9) -> period when PV1-44/45 are empty."""
    if st.encounter is None:
        _unused(seg, st, "no encounter")
        return
    reason = _cwe(seg, 3, st)
    if reason:
        st.encounter["reasonCode"] = [reason]
    period = st.encounter.get("period") or {}
    for n, key in ((8, "start"), (9, "end")):
        if key not in period:
            value = _dt(seg, n, st)
            if value:
                period[key] = value
    if period:
        st.encounter["period"] = period


# ------------------------------------------------------------------ orders and results
def _order_ids(seg: Segment, placer_n: int, filler_n: int, st: State) -> tuple[list[Resource], str]:
    ids, key = [], ""
    for n, code in ((placer_n, "PLAC"), (filler_n, "FILL")):
        reps = seg.reps(n)
        if reps:
            ident = dt.ei(reps[0], seg.seps, st.ctx, code)
            if ident:
                ids.append(ident)
                key = key or (code + "|" + dt.ei_key(reps[0], seg.seps, st.ctx))
    return ids, key


def flush_order(st: State) -> None:
    """An ORC whose group had no OBR (and no RXE/RXO) is still an order: emit its ServiceRequest."""
    res = st.order
    if res is None or "id" in res or res.get("_consumed") or res["resourceType"] != "ServiceRequest":
        return
    res["id"] = st.ctx.rid("ServiceRequest", st.order_key)
    st.add(res)


def order(seg: Segment, st: State) -> None:
    """ORC -> ServiceRequest (completed by OBR in the same group)."""
    flush_order(st)
    ids, key = _order_ids(seg, 2, 3, st)
    status = vocab.ORDER_STATUS.get(seg.value(5).upper()) or vocab.ORDER_CONTROL_STATUS.get(seg.value(1).upper())
    requester = _xcn(seg, 12, st)
    facility = _xon(seg, 21, st)
    res: Resource = {"resourceType": "ServiceRequest", "status": status or "unknown", "intent": "order",
                     "identifier": ids, "subject": st.subject(), "encounter": st.ref(st.encounter),
                     "authoredOn": _dt(seg, 9, st), "requester": requester}
    group = seg.reps(4)
    if group:
        # IG ORC[ServiceRequest]: ORC-4 placer group number (type PGN) -> requisition.
        requisition = dt.ei(group[0], seg.seps, st.ctx, "PGN")
        if requisition:
            res["requisition"] = requisition
    if facility:
        # IG: ORC-21 ordering facility -> requester(PractitionerRole.organization), with ORC-12 as its
        # practitioner: a contained PractitionerRole (practitioners and organizations stay logical).
        role: Resource = {"resourceType": "PractitionerRole", "id": "orderer", "organization": facility}
        if requester:
            role["practitioner"] = requester
        res["contained"] = [role]
        res["requester"] = {"reference": "#orderer"}
    st.order, st.order_key = res, key or f"ORC|{seg.index}|{st.message_time}"
    st.report = st.observation = None
    st.notable = res
    st.medication = None


def order_detail(seg: Segment, st: State) -> Resource:
    """OBR -> ServiceRequest (merged with its ORC when there is one)."""
    ids, key = _order_ids(seg, 2, 3, st)
    if st.order is None or st.order.get("_obr"):
        # OBR without ORC (allowed in ORU): a new ServiceRequest.
        st.order = {"resourceType": "ServiceRequest", "status": "unknown", "intent": "order", "identifier": ids,
                    "subject": st.subject(), "encounter": st.ref(st.encounter), "_obr": True}
        st.order_key = key or f"OBR|{seg.index}|{st.message_time}"
    elif ids and not st.order.get("identifier"):
        st.order["identifier"] = ids
    res = st.order
    res["_obr"] = True
    if st.order_key.startswith(("ORC|", "OBR|")) and key:
        st.order_key = key
    code = _cwe(seg, 4, st)
    if code is None:
        st.ctx.issue("missing-code", "OBR-4")
    else:
        res["code"] = code
    priority = vocab.PRIORITY.get(seg.value(5).upper() or seg.value(27, 6).upper())
    if priority:
        res["priority"] = priority
    res.setdefault("requester", _xcn(seg, 16, st))
    when = _dt(seg, 7, st)
    if when and not res.get("occurrenceDateTime"):
        res["occurrenceDateTime"] = when
    reasons = _cwes(seg, 31, st)
    if reasons:
        res["reasonCode"] = reasons
    res["id"] = st.ctx.rid("ServiceRequest", st.order_key)
    st.add(res)
    st.notable = res
    st.observation = None
    return res


def report(seg: Segment, st: State) -> None:
    """OBR in ORU -> DiagnosticReport + its ServiceRequest (basedOn)."""
    sr = order_detail(seg, st)
    report_code = seg.value(25).upper()
    status = vocab.REPORT_STATUS.get(report_code, "unknown")
    if not report_code:
        st.ctx.repair("status", "OBR-25", "empty result status -> unknown")
    elif report_code not in vocab.REPORT_STATUS or status == "unknown":
        st.ctx.issue("unmapped-code", "OBR-25", report_code[:10])
    res: Resource = {"resourceType": "DiagnosticReport", "id": st.ctx.rid("DiagnosticReport", st.order_key),
                     "identifier": sr.get("identifier"), "basedOn": [st.ref(sr)], "status": status,
                     "code": sr.get("code") or _ABSENT, "subject": st.subject(), "encounter": st.ref(st.encounter)}
    start, end = _dt(seg, 7, st), _dt(seg, 8, st)
    if start and end:
        res["effectivePeriod"] = {"start": start, "end": end}
    elif start:
        res["effectiveDateTime"] = start
    issued = st.ctx.ts(seg.value(22), "OBR-22")
    if issued:
        # issued is an instant: any precision with a time maps (seconds padded, as the IG DTM map says);
        # a date alone names no instant, so it is listed rather than given an invented time.
        if issued.instant is not None:
            res["issued"] = issued.fhir
        else:
            st.ctx.unmapped["OBR-22(date only: not an instant)"] += 1
    interpreter = _xcn(seg, 32, st)
    if interpreter:
        res["resultsInterpreter"] = [interpreter]
    st.report = st.add(drop_empty(res))
    st.obx_seen = {}


_ABSENT = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}


def _observation_value(seg: Segment, st: State, res: Resource) -> None:
    ctx, seps = st.ctx, seg.seps
    vtype = seg.value(2).upper()
    reps = seg.reps(5)
    where = "OBX-5"
    if not reps:
        return
    unit_raw = seg.reps(6)[0] if seg.reps(6) else ""
    if vtype in ("NM", "SN", "CQ"):
        values = []
        for rep in reps:
            if vtype == "SN":
                got = dt.sn(rep, seps, unit_raw, ctx, where)
            else:
                q = dt.quantity(dt.leaf_text(rep, seps), unit_raw, seps, ctx, where)
                got = ("valueQuantity", q) if q else None
            if got is None:
                ctx.issue("unparseable-value", where, vtype)
                res["valueString"] = seg.text(5)
                return
            values.append(got)
        if len(values) == 1:
            res[values[0][0]] = values[0][1]
        else:
            # IG: several OBX-5 repetitions -> Observation.component, one per value.
            res["component"] = [{"code": res["code"], values[i][0]: values[i][1]} for i in range(len(values))]
        return
    if vtype in ("CE", "CWE", "CNE", "CF", "IS", "ID"):
        ccs = [c for c in (dt.cwe(r, seps, ctx, where) for r in reps) if c]
        if len(ccs) == 1:
            res["valueCodeableConcept"] = ccs[0]
        elif ccs:
            res["component"] = [{"code": res["code"], "valueCodeableConcept": c} for c in ccs]
        return
    if vtype in ("ST", "TX", "FT"):
        text = "\n".join(dt.unescape_text(r, seps) for r in reps)
        if dt.fhir_string(text):
            res["valueString"] = text
        else:  # only blanks (e.g. U+2028 made a space): FHIR has no blank string; reported, not emitted invalid
            ctx.issue("blank-value", where, vtype)
        return
    if vtype in ("DT", "DTM", "TS"):
        t = ctx.ts(dt.leaf_text(reps[0], seps), where)
        if t:
            res["valueDateTime"] = t.fhir
        return
    if vtype == "TM":
        m = _TM.match(dt.leaf_text(reps[0], seps))
        if m:  # HL7 TM HH[MM[SS[.S]]] (offset dropped): FHIR time needs HH:MM:SS, ASCII digits, in range
            res["valueTime"] = f"{m.group(1)}:{m.group(2)}:{m.group(3) or '00'}"
        else:
            ctx.issue("invalid-time", where)
        return
    if vtype == "DR":
        parts = reps[0].split(seps.component)
        start = ctx.ts(dt.leaf(parts[0], seps), where)
        end = ctx.ts(dt.leaf(parts[1], seps), where) if len(parts) > 1 else None
        if start or end:
            res["valuePeriod"] = {k: v.fhir for k, v in (("start", start), ("end", end)) if v}
        return
    if vtype == "VR":
        parts = [dt.leaf(p, seps) for p in reps[0].split(seps.component)]
        res["valueString"] = "-".join(parts[:2])  # IG: OBX-5.1 + "-" + OBX-5.2
        return
    if vtype == "NR":
        parts = reps[0].split(seps.component)
        low, high = dt.decimal(parts[0]), dt.decimal(parts[1]) if len(parts) > 1 else None
        res["valueRange"] = drop_empty({"low": {"value": low} if low is not None else None,
                                        "high": {"value": high} if high is not None else None})
        return
    ctx.unmapped[f"OBX-5({vtype or 'no type'})"] += 1


def _no_code(seg: Segment, st: State) -> None:
    """An OBX whose OBX-3 has no code in any triplet and no text. With a value it must not vanish:
    the message is quarantined; without one there is nothing clinical to lose, it is listed."""
    if seg.reps(5):
        raise QuarantineError(f"OBX {seg.value(1) or seg.index} has a value but OBX-3 carries no code in any "
                              "triplet and no text (Observation.code is required; the result cannot be mapped)")
    st.ctx.issue("missing-code", "OBX-3")
    st.ctx.unmapped["OBX(no OBX-3)"] += 1


def _observation(seg: Segment, st: State, key: str) -> Resource | None:
    ctx = st.ctx
    code = _cwe(seg, 3, st)
    if code is None:
        _no_code(seg, st)
        return None
    code_key = seg.raw(3) + "|" + seg.raw(4)
    nth = st.obx_seen.get(code_key, 0)
    st.obx_seen[code_key] = nth + 1
    status_code = seg.value(11).upper()
    status = vocab.OBSERVATION_STATUS.get(status_code)
    if status is None:
        # IG ConceptMap OBX-11 (table 0085): what it does not map is not known -> "unknown". OBX-11 is
        # required: an empty one is repaired to "unknown" (never "final"), an unmapped code is an issue.
        status = "unknown"
        if status_code:
            ctx.issue("unmapped-code", "OBX-11", status_code[:10])
        else:
            ctx.repair("status", "OBX-11", "empty result status -> unknown")
    res: Resource = {"resourceType": "Observation", "id": ctx.rid("Observation", key, code_key, str(nth)),
                     "status": status, "code": code, "subject": st.subject(), "encounter": st.ref(st.encounter)}
    _observation_value(seg, st, res)
    if seg.raw(6) and not ({"valueQuantity", "valueRange"} & res.keys() or any(
            "valueQuantity" in c or "valueRange" in c for c in res.get("component", ()))):
        # A unit belongs to a quantity: with no numeric value OBX-6 has nowhere to go. Listed, not dropped.
        ctx.unmapped["OBX-6(no quantity value)"] += 1
    unit_q = res.get("valueQuantity")
    rr = dt.reference_range(seg.text(7), unit_q)
    if rr:
        res["referenceRange"] = [rr]
    interps = []
    for rep in seg.reps(8):
        c = " ".join(dt.leaf(rep, seg.seps, 1).split())
        if c:
            system = vocab.V3_INTERP if c in vocab.INTERPRETATION_V3 else "http://terminology.hl7.org/CodeSystem/v2-0078"
            disp = dt.fhir_string(dt.leaf(rep, seg.seps, 2))
            coding = {"system": system, "code": c}
            if disp:
                coding["display"] = disp
            interps.append({"coding": [coding]})
    if interps:
        res["interpretation"] = interps
    effective = _dt(seg, 14, st)
    if effective is None and st.report is not None:
        effective = st.report.get("effectiveDateTime") or (st.report.get("effectivePeriod") or {}).get("start")
    if effective:
        res["effectiveDateTime"] = effective
    method = _cwe(seg, 17, st)
    if method:
        res["method"] = method
    performers = [p for p in (dt.xcn_reference(r, seg.seps, ctx) for r in seg.reps(16)) if p]
    performers += _performing_organization(seg, st, res)
    if performers:
        res["performer"] = performers
    if status_code in ("X", "N") and "component" not in res and not any(k.startswith("value") for k in res):
        # IG OBX[Observation]: OBX-11 X -> cannot-be-obtained, N -> not-asked.
        absent = "cannot-be-obtained" if status_code == "X" else "not-asked"
        res["dataAbsentReason"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                                               "code": absent}]}
    return res


def _performing_organization(seg: Segment, st: State, res: Resource) -> list[dict[str, Any]]:
    """IG OBX[Observation]: OBX-23 performing organization (identifier XON.10, e.g. a CLIA number),
    OBX-15 producer's ID (its identifier when XON.10 is empty, else a performer of its own), OBX-25
    medical director: with OBX-25 the performer is a PractitionerRole (code MDIR) whose organization is
    OBX-23, contained in the Observation (practitioners and organizations stay logical references)."""
    ctx = st.ctx
    if len(seg.fields) <= 15:
        return []  # no OBX-15/23/25
    org = _xon(seg, 23, st)
    producer = None
    producer_code = seg.value(15)
    if len(seg.reps(15)) > 1:
        ctx.unmapped["OBX-15(repetition 2+)"] += 1  # OBX-15 does not repeat: a second one is listed
    if producer_code:
        producer = {"identifier": {"system": ctx.identifier_system(seg.value(15, 3) or ctx.facility),
                                   "value": producer_code}}
        name = dt.fhir_string(seg.value(15, 2))
        if name:
            producer["display"] = name
    out: list[dict[str, Any]] = []
    if producer is not None:
        if org is not None and "identifier" not in org:
            org["identifier"] = producer["identifier"]
        elif org is None or org["identifier"]["value"] != producer_code:
            out.append(producer)
    director = _xcn(seg, 25, st)
    if director is not None:
        role: Resource = {"resourceType": "PractitionerRole", "id": "director", "practitioner": director,
                          "code": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0912",
                                                "code": "MDIR"}]}]}
        if org is not None:
            role["organization"] = org
        res["contained"] = [role]
        out.insert(0, {"reference": "#director"})
    elif org is not None:
        out.insert(0, org)
    return out


def result(seg: Segment, st: State) -> None:
    """OBX in ORU -> Observation, referenced from the report of its group.

    A text OBX without OBX-3 (report lines, as radiology systems send them) becomes the report's
    presentedForm (text/plain), not an Observation without a code.
    """
    if not seg.raw(3) and seg.value(2).upper() in ("TX", "FT", "ST") and st.report is not None:
        text = "\n".join(dt.unescape_text(r, seg.seps) for r in seg.reps(5))
        st.report.setdefault("_text", []).append(text)
        for n in range(6, len(seg.fields)):  # a report line keeps only its text: anything else is listed
            if seg.fields[n] and seg.fields[n] != '""':
                st.ctx.unmapped[f"OBX-{n}(report text line)"] += 1
        return
    res = _observation(seg, st, "R|" + st.order_key)
    if res is None:
        return
    if st.report is not None:
        st.report.setdefault("result", []).append(st.ref(res))
        res["basedOn"] = st.report.get("basedOn")
    if st.specimen is not None:
        res["specimen"] = st.ref(st.specimen)
    st.observation = st.add(drop_empty(res))
    st.notable = res


def observation(seg: Segment, st: State) -> None:
    """OBX at patient/visit level (ADT, SIU) -> Observation."""
    key = "P|" + (st.encounter["id"] if st.encounter else st.patient["id"] if st.patient else "") + "|" + \
        seg.value(14)
    res = _observation(seg, st, key)
    if res is None:
        return
    st.observation = st.add(drop_empty(res))
    st.notable = res


def order_observation(seg: Segment, st: State) -> None:
    """OBX in an order (ORM/OML/RDE) -> Observation referenced from ServiceRequest.supportingInfo."""
    res = _observation(seg, st, "O|" + st.order_key)
    if res is None:
        return
    st.add(drop_empty(res))
    if st.order is not None:
        st.order.setdefault("supportingInfo", []).append(st.ref(res))
    st.notable = res


def immunization_observation(seg: Segment, st: State) -> None:
    """OBX in VXU (eligibility, VIS, funding) -> Observation partOf the Immunization."""
    key = "I|" + (st.immunization["id"] if st.immunization else st.patient["id"] if st.patient else "")
    res = _observation(seg, st, key)
    if res is None:
        return
    if st.immunization is not None:
        res["partOf"] = [st.ref(st.immunization)]
    st.add(drop_empty(res))
    st.notable = res


def note(seg: Segment, st: State) -> None:
    """NTE -> Annotation on the resource it follows (ServiceRequest for OBR notes, as in the IG)."""
    text = "\n".join(dt.unescape_text(r, seg.seps) for r in seg.reps(3))
    if not text:
        return
    target = st.notable
    if target is not None and target["resourceType"] == "DiagnosticReport":
        target = st.order
    if target is None or target["resourceType"] not in ("Observation", "ServiceRequest", "Immunization",
                                                      "MedicationRequest", "AllergyIntolerance", "Procedure",
                                                      "Condition", "Specimen"):
        if st.appointment is not None:
            st.appointment["comment"] = (st.appointment.get("comment", "") + "\n" + text).strip()
            return
        st.ctx.unmapped["NTE(no target)"] += 1
        return
    target.setdefault("note", []).append({"text": text})


def specimen(seg: Segment, st: State) -> None:
    ctx = st.ctx
    ids = []
    key = ""
    reps = seg.reps(2)
    if reps:
        for sub, code in ((1, "PLAC"), (2, "FILL")):
            part = reps[0].split(seg.seps.component)
            if len(part) >= sub and dt.leaf(part[sub - 1], seg.seps, 1):
                raw = part[sub - 1].replace(seg.seps.subcomponent, seg.seps.component)
                ident = dt.ei(raw, seg.seps, ctx, code)
                if ident:
                    ids.append(ident)
                    key = key or dt.ei_key(raw, seg.seps, ctx)
    res: Resource = {"resourceType": "Specimen",
                     "id": ctx.rid("Specimen", key or f"{st.order_key}|{seg.value(1)}|{seg.index}"),
                     "identifier": ids, "type": _cwe(seg, 4, st), "subject": st.subject()}
    collected = ctx.ts(seg.value(17, 1), "SPM-17")
    if collected:
        res["collection"] = {"collectedDateTime": collected.fhir}
    received = _dt(seg, 18, st)
    if received:
        res["receivedTime"] = received
    if st.order is not None and st.order.get("id"):
        res["request"] = [st.ref(st.order)]
    st.specimen = st.add(drop_empty(res))
    st.notable = st.specimen


def timing(seg: Segment, st: State) -> None:
    """TQ1: priority and start/end for the current order or appointment."""
    priority = vocab.PRIORITY.get(seg.value(9).upper())
    if st.order is not None and priority:
        st.order["priority"] = priority
    if st.order is None and st.appointment is None:
        _unused(seg, st, "no order or appointment")
    elif st.appointment is None:
        for n in (7, 8):  # start/end of an order's timing: no ServiceRequest element in our map, listed
            if seg.value(n):
                st.ctx.unmapped[f"TQ1-{n}(order timing)"] += 1
    if st.appointment is not None:
        start, end = _dt(seg, 7, st), _dt(seg, 8, st)
        if start and not st.appointment.get("start"):
            st.appointment["start"] = start
        if end and not st.appointment.get("end"):
            st.appointment["end"] = end


# ------------------------------------------------------------------ clinical lists
def allergy(seg: Segment, st: State) -> None:
    code = _cwe(seg, 3, st)
    if code is None:
        st.ctx.issue("missing-code", "AL1-3")
        return
    res: Resource = {"resourceType": "AllergyIntolerance",
                     "id": st.ctx.rid("AllergyIntolerance", st.patient["id"] if st.patient else "", seg.value(3)),
                     "clinicalStatus": {"coding": [{
                         "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                         "code": "active"}]},
                     "code": code, "patient": st.subject()}
    category = vocab.ALLERGY_CATEGORY.get(seg.value(2).upper())
    if category:
        res["category"] = [category]
    crit = vocab.ALLERGY_CRITICALITY.get(seg.value(4).upper())
    if crit:
        res["criticality"] = crit
    manifest = [{"text": r} for r in (dt.unescape_text(x, seg.seps) for x in seg.reps(5)) if r]
    if manifest:
        res["reaction"] = [{"manifestation": manifest}]
    onset = _dt(seg, 6, st)
    if onset:
        res["onsetDateTime"] = onset
    if res["patient"] is None:
        raise QuarantineError("AL1 before PID (AllergyIntolerance.patient is required)")
    st.add(res)
    st.notable = res


def condition(seg: Segment, st: State) -> None:
    code = _cwe(seg, 3, st) or ({"text": seg.text(4)} if seg.value(4) else None)
    if code is None:
        st.ctx.issue("missing-code", "DG1-3")
        return
    res: Resource = {"resourceType": "Condition",
                     "id": st.ctx.rid("Condition", st.patient["id"] if st.patient else "", seg.value(3),
                                      seg.value(20) or seg.value(1)),
                     "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                               "code": "encounter-diagnosis"}]}],
                     "code": code, "subject": st.subject(), "encounter": st.ref(st.encounter),
                     "recordedDate": _dt(seg, 5, st)}
    if res["subject"] is None:
        raise QuarantineError("DG1 before PID (Condition.subject is required)")
    st.add(drop_empty(res))
    st.notable = res


def procedure(seg: Segment, st: State) -> None:
    code = _cwe(seg, 3, st)
    if code is None:
        st.ctx.issue("missing-code", "PR1-3")
        return
    res: Resource = {"resourceType": "Procedure",
                     "id": st.ctx.rid("Procedure", st.patient["id"] if st.patient else "", seg.value(3), seg.value(5)),
                     "status": "completed", "code": code, "subject": st.subject(),
                     "encounter": st.ref(st.encounter), "performedDateTime": _dt(seg, 5, st)}
    st.add(drop_empty(res))
    st.notable = res


# ------------------------------------------------------------------ immunization, medication
def immunization(seg: Segment, st: State) -> None:
    ctx = st.ctx
    vaccine = _cwe(seg, 5, st)
    if vaccine is None:
        raise QuarantineError("RXA-5 administered code is empty (Immunization.vaccineCode is required)")
    when = ctx.ts(seg.value(3), "RXA-3")
    if when is None:
        raise QuarantineError("RXA-3 date/time start of administration is empty or invalid "
                              "(Immunization.occurrence is required)")
    status = vocab.IMMUNIZATION_STATUS.get(seg.value(20).upper(), "completed")
    if seg.value(21).upper() == "D":
        status = "entered-in-error"
    res: Resource = {"resourceType": "Immunization",
                     "id": ctx.rid("Immunization", st.patient["id"] if st.patient else "", seg.value(5),
                                   when.fhir, str(st.order_key)),
                     "status": status, "vaccineCode": vaccine, "patient": st.subject(),
                     "encounter": st.ref(st.encounter), "occurrenceDateTime": when.fhir}
    if st.order is not None:
        st.order["_consumed"] = True  # IG VXU_V04: ORC feeds the Immunization, not a ServiceRequest
        if st.order.get("identifier"):
            res["identifier"] = st.order["identifier"]
        # IG ORC[Immunization]: ORC-12 ordering provider -> performer (function OP). What the
        # Immunization has no element for is listed, never dropped silently.
        if st.order.get("requester"):
            res["performer"] = [{"function": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0443",
                                                          "code": "OP"}]}, "actor": st.order["requester"]}]
            if st.order.get("contained"):
                res["contained"] = st.order["contained"]
        for key, field in (("requisition", "ORC-4"), ("authoredOn", "ORC-9")):
            if st.order.get(key):
                ctx.unmapped[f"{field}(no Immunization element)"] += 1
    amount = dt.decimal(seg.value(6))
    if amount is not None and amount != 999:
        res["doseQuantity"] = {"value": amount, **_unit(seg, 7, st)}
    info = seg.value(9, 1)
    if info in ("00", "01"):
        # NIP001: 00 = new record (primary source), 01 = historical.
        res["primarySource"] = info == "00"
    performer = _xcn(seg, 10, st)
    if performer:
        administering = {"function": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0443",
                                                  "code": "AP"}]}, "actor": performer}
        res["performer"] = [*res.get("performer", []), administering]
    lot = seg.value(15)
    if lot:
        res["lotNumber"] = lot
    exp = ctx.ts(seg.value(16), "RXA-16")
    if exp:
        res["expirationDate"] = exp.date if exp.instant is not None else exp.fhir  # a date keeps its precision
    mfr = seg.value(17, 2) or seg.value(17, 1)
    if mfr:
        res["manufacturer"] = {"display": mfr}
    refusal = _cwe(seg, 18, st)
    if refusal and status == "not-done":
        res["statusReason"] = refusal
    if status == "completed" and seg.value(20).upper() == "PA":
        res["isSubpotent"] = True
    if res["patient"] is None:
        raise QuarantineError("RXA without PID (Immunization.patient is required)")
    st.immunization = st.add(drop_empty(res))
    st.notable = st.immunization


def route(seg: Segment, st: State) -> None:
    target = st.immunization if st.immunization is not None and st.medication is None else st.medication
    rt, site = _cwe(seg, 1, st), _cwe(seg, 2, st)
    if target is None:
        _unused(seg, st, "no immunization or medication")
        return
    if target["resourceType"] == "Immunization":
        if rt:
            target["route"] = rt
        if site:
            target["site"] = site
    else:
        dosage = target.setdefault("dosageInstruction", [{}])[0]
        if rt:
            dosage["route"] = rt
        if site:
            dosage["site"] = site


def medication(seg: Segment, st: State) -> None:
    """RXE (with its ORC) -> MedicationRequest."""
    ctx = st.ctx
    med = _cwe(seg, 2, st)
    if med is None:
        raise QuarantineError("RXE-2 give code is empty (MedicationRequest.medication is required)")
    status = vocab.MEDREQ_STATUS.get((st.order or {}).get("status", ""), "unknown")
    if st.order is not None:
        st.order["_consumed"] = True  # the ORC describes this medication order, not a ServiceRequest
    res: Resource = {"resourceType": "MedicationRequest",
                     "id": ctx.rid("MedicationRequest", st.order_key or f"RXE|{seg.index}|{st.message_time}"),
                     "identifier": (st.order or {}).get("identifier"), "status": status, "intent": "order",
                     "medicationCodeableConcept": med, "subject": st.subject(), "encounter": st.ref(st.encounter),
                     "authoredOn": (st.order or {}).get("authoredOn"), "requester": (st.order or {}).get("requester"),
                     "contained": (st.order or {}).get("contained")}
    dose: Resource = {}
    amount = dt.decimal(seg.value(3))
    if amount is not None:
        dose["doseAndRate"] = [{"doseQuantity": {"value": amount, **_unit(seg, 5, st)}}]
    text = seg.text(1) if seg.value(1, 2) else ""
    instructions = "; ".join(dt.unescape_text(r, seg.seps) for r in seg.reps(21)) or seg.value(7, 2)
    if instructions or text:
        dose["text"] = instructions or text
    if dose:
        res["dosageInstruction"] = [dose]
    dispense: Resource = {}
    qty = dt.decimal(seg.value(10))
    if qty is not None:
        dispense["quantity"] = {"value": qty, **_unit(seg, 11, st)}
    refills = dt.decimal(seg.value(12))
    if isinstance(refills, int) and 0 <= refills <= dt.FHIR_INT_MAX:  # unsignedInt
        dispense["numberOfRepeatsAllowed"] = refills
    if dispense:
        res["dispenseRequest"] = dispense
    if res["subject"] is None:
        raise QuarantineError("RXE without PID (MedicationRequest.subject is required)")
    st.medication = st.add(drop_empty(res))
    st.notable = st.medication


def medication_order(seg: Segment, st: State) -> None:
    """RXO in ORM (pharmacy order) -> MedicationRequest."""
    ctx = st.ctx
    med = _cwe(seg, 1, st)
    if med is None:
        ctx.issue("missing-code", "RXO-1")
        return
    if st.order is not None:
        st.order["_consumed"] = True
    order = st.order or {}
    res: Resource = {"resourceType": "MedicationRequest",
                     "id": ctx.rid("MedicationRequest", st.order_key or f"RXO|{seg.index}|{st.message_time}"),
                     "identifier": order.get("identifier"),
                     "status": vocab.MEDREQ_STATUS.get(order.get("status", ""), "unknown"),
                     "intent": "order", "medicationCodeableConcept": med, "subject": st.subject(),
                     "encounter": st.ref(st.encounter), "authoredOn": order.get("authoredOn"),
                     "requester": order.get("requester"), "contained": order.get("contained")}
    if order.get("requisition"):
        res["groupIdentifier"] = order["requisition"]  # ORC-4 placer group number
    st.medication = st.add(drop_empty(res))
    st.notable = st.medication


# ------------------------------------------------------------------ scheduling, documents
def appointment(seg: Segment, st: State) -> None:
    ctx = st.ctx
    ids, key = [], ""
    for n, code in ((1, "PLAC"), (2, "FILL")):
        reps = seg.reps(n)
        if reps:
            ident = dt.ei(reps[0], seg.seps, ctx, code)
            if ident:
                ids.append(ident)
                key = key or dt.ei_key(reps[0], seg.seps, ctx)
    status = vocab.APPOINTMENT_STATUS.get(seg.value(25).upper()) or \
        vocab.APPOINTMENT_STATUS_BY_TRIGGER.get(st.trigger, "booked")
    res: Resource = {"resourceType": "Appointment", "id": ctx.rid("Appointment", key or f"SCH|{st.message_time}"),
                     "identifier": ids, "status": status, "participant": []}
    reason = _cwe(seg, 7, st)
    if reason:
        res["reasonCode"] = [reason]
    atype = _cwe(seg, 8, st)
    if atype:
        res["appointmentType"] = atype
    start = end = None
    tq = seg.reps(11)
    if tq:
        start_ts = ctx.ts(dt.leaf(tq[0], seg.seps, 4), "SCH-11.4")
        end_ts = ctx.ts(dt.leaf(tq[0], seg.seps, 5), "SCH-11.5")
        start, end = (start_ts.fhir if start_ts else None), (end_ts.fhir if end_ts else None)
    if start:
        res["start"] = start
    if end:
        res["end"] = end
    duration = dt.decimal(seg.value(9))
    # FHIR positiveInt: 1 .. 2,147,483,647.
    if isinstance(duration, int) and 0 < duration <= dt.FHIR_INT_MAX and seg.value(10, 1).lower() in (
            "min", "minutes", ""):
        res["minutesDuration"] = duration
    st.appointment = st.add(res)
    st.notable = None


def resource(seg: Segment, st: State) -> None:
    """AIS/AIG/AIL/AIP -> Appointment.participant (or serviceType for AIS)."""
    if st.appointment is None:
        _unused(seg, st, "no appointment")
        return
    if seg.name == "AIS":
        svc = _cwe(seg, 3, st)
        if svc:
            st.appointment.setdefault("serviceType", []).append(svc)
        start = _dt(seg, 4, st)
        if start and not st.appointment.get("start"):
            st.appointment["start"] = start
        return
    if seg.name == "AIP":
        actor = _xcn(seg, 3, st)
    elif seg.name == "AIL":
        loc = seg.value(3, 1) or seg.value(3, 4)
        actor = {"display": loc} if loc else None
    else:
        actor = {"display": seg.value(3, 2) or seg.value(3, 1)} if seg.value(3) else None
    if actor:
        st.appointment["participant"].append({"actor": actor, "status": "accepted"})


def document(seg: Segment, st: State) -> None:
    ctx = st.ctx
    unique = seg.reps(12)
    key = dt.ei_key(unique[0], seg.seps, ctx) if unique else f"TXA|{st.message_time}|{seg.value(1)}"
    doc_status = vocab.DOCUMENT_STATUS.get(seg.value(17).upper())
    res: Resource = {"resourceType": "DocumentReference", "id": ctx.rid("DocumentReference", key),
                     "status": "entered-in-error" if seg.value(17).upper() == "DE" else "current",
                     "docStatus": doc_status, "subject": st.subject(), "content": []}
    if unique:
        res["masterIdentifier"] = dt.ei(unique[0], seg.seps, ctx)
    dtype = seg.value(2)
    if dtype:
        res["type"] = _v2("0270", dtype)
    created = ctx.ts(seg.value(4), "TXA-4")
    if created and created.instant is not None:
        res["date"] = created.fhir
    elif created:
        ctx.unmapped["TXA-4(date only: not an instant)"] += 1
    authors = [a for a in (dt.xcn_reference(r, seg.seps, ctx) for r in seg.reps(9) + seg.reps(5)) if a]
    if authors:
        res["author"] = authors
    auth = _xcn(seg, 10, st)
    if auth:
        res["authenticator"] = auth
    parent = seg.reps(13)
    relation = vocab.DOCUMENT_RELATION.get(st.trigger)
    if parent and relation:
        res["relatesTo"] = [{"code": relation, "target": {"identifier": dt.ei(parent[0], seg.seps, ctx)}}]
    if st.encounter is not None:
        res["context"] = {"encounter": [st.ref(st.encounter)]}
    st.document = st.add(drop_empty(res))
    st.document.setdefault("content", [])
    st.notable = None


def document_content(seg: Segment, st: State) -> None:
    """OBX in MDM -> DocumentReference.content (TX/FT/ST lines as text/plain; ED as its own media type)."""
    doc = st.document
    if doc is None:
        if seg.reps(5):
            raise QuarantineError("OBX with document content before any TXA (no DocumentReference to hold it)")
        st.ctx.unmapped["OBX(before TXA)"] += 1
        return
    vtype = seg.value(2).upper()
    if vtype in ("TX", "FT", "ST", "CE", "CWE"):
        text = "\n".join(dt.unescape_text(r, seg.seps) for r in seg.reps(5))
        contents = doc["content"]
        if contents and contents[-1]["attachment"].get("contentType") == "text/plain" and "_text" in contents[-1]:
            contents[-1]["_text"] += "\n" + text
        else:
            contents.append({"attachment": {"contentType": "text/plain"}, "_text": text})
    elif vtype in ("ED", "RP"):
        parts = seg.reps(5)[0].split(seg.seps.component) if seg.reps(5) else []
        data = dt.leaf(parts[4], seg.seps) if len(parts) > 4 else ""
        subtype = dt.leaf(parts[2], seg.seps) if len(parts) > 2 else ""
        typ = dt.leaf(parts[1], seg.seps) if len(parts) > 1 else ""
        ctype = vocab_media(typ, subtype)
        att: Resource = {"contentType": ctype}
        if vtype == "ED" and data:
            try:
                base64.b64decode(data, validate=True)
                att["data"] = data
            except ValueError:
                st.ctx.issue("invalid-base64", "OBX-5")
        elif vtype == "RP" and parts:
            att["url"] = dt.leaf(parts[0], seg.seps)
        doc["content"].append({"attachment": att})
    else:
        st.ctx.unmapped[f"OBX-5({vtype})"] += 1


_TM = re.compile(r"^([01][0-9]|2[0-3])([0-5][0-9])([0-5][0-9])?(\.[0-9]{1,4})?([+-][0-9]{4})?$")


def fhir_datetime(value: Any) -> str:
    """An aware datetime as a FHIR dateTime: 4-digit year, ``+hh:mm`` offset (isoformat can give neither)."""
    from ehrbridge.hl7.timefmt import fmt_offset

    text = f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    if value.microsecond:
        text += f".{value.microsecond:06d}"
    return text + fmt_offset(value.utcoffset())


def _complete_appointment(res: Resource, st: State) -> None:
    """app-2: start and end together. End = start + duration when the sender gave one; else neither
    (the times stay in the archived message and the gap is reported)."""
    from datetime import datetime, timedelta

    minutes = res.get("minutesDuration")
    if res.get("start") and isinstance(minutes, int) and len(res["start"]) > 10:
        try:
            start = datetime.fromisoformat(res["start"])
            end = start + timedelta(minutes=minutes)
        except (ValueError, OverflowError):  # past year 9999, or a form fromisoformat does not read
            end = None
        if end is not None:
            res["end"] = fhir_datetime(end)
            return
    res.pop("start", None)
    res.pop("end", None)
    st.ctx.issue("appointment-time-incomplete", "SCH-11")


def vocab_media(typ: str, subtype: str) -> str:
    t = typ.lower() or "application"
    s = subtype.lower() or "octet-stream"
    if t in ("text", "application", "image", "audio", "video", "multipart") and s.replace("-", "").replace(".", "") \
            .replace("+", "").isalnum():
        return f"{t}/{s}"
    return "application/octet-stream"


def finish_documents(st: State) -> None:
    """Last touches once every segment is read: empties out, report text, document content, appointments."""
    flush_order(st)
    for res in st.resources:
        res.pop("_obr", None)
        res.pop("_consumed", None)
        if res["resourceType"] == "Appointment":
            if st.patient is not None:
                # IG PID[Appointment]: the patient is a participant (SCH precedes PID in SIU, so added here).
                res["participant"].insert(0, {"actor": st.ref(st.patient), "status": "accepted"})
            if bool(res.get("start")) != bool(res.get("end")):
                _complete_appointment(res, st)
        for key in [k for k, v in res.items() if (v is None or (not v and type(v) in _CONTAINERS)) and k != "content"]:
            del res[key]
        text = res.pop("_text", None)
        if text is not None:
            res["presentedForm"] = [{"contentType": "text/plain",
                                     "data": base64.b64encode("\n".join(text).encode()).decode()}]
        if res["resourceType"] != "DocumentReference":
            continue
        for c in res.setdefault("content", []):
            text = c.pop("_text", None)
            if text is not None:
                c["attachment"]["data"] = base64.b64encode(text.encode()).decode()
        if not res["content"]:
            # MDM notifications without content (T01/T05/T09): the attachment names the document only.
            res["content"] = [{"attachment": {"contentType": "text/plain", "title": "content not transmitted"}}]


# ------------------------------------------------------------------ merge
def merge(seg: Segment, st: State) -> None:
    """MRG (A40): the survivor (the PID before it) replaces the prior patient (MRG-1)."""
    ctx = st.ctx
    if st.patient is None:
        raise QuarantineError("MRG without a preceding PID")
    reps = seg.reps(1)
    if not reps:
        raise QuarantineError("MRG-1 prior patient identifier list is empty")
    identifiers = [i for i in (dt.cx(r, seg.seps, ctx, "MRG-1") for r in reps) if i]
    retired_id = ctx.rid("Patient", dt.authority_of(reps[0], seg.seps, ctx).upper(), dt.leaf(reps[0], seg.seps))
    if retired_id == st.patient["id"]:
        raise QuarantineError("MRG-1 names the same patient as PID-3 (merge into itself)")
    retired: Resource = {"resourceType": "Patient", "id": retired_id, "identifier": identifiers, "active": False,
                         "link": [{"other": st.ref(st.patient), "type": "replaced-by"}]}
    names = [x for x in (dt.xpn(r, seg.seps) for r in seg.reps(7)) if x]
    if names:
        retired["name"] = names
    st.patient.setdefault("link", []).append({"other": {"reference": f"Patient/{retired_id}"}, "type": "replaces"})
    st.add(retired)


def merge_note(seg: Segment, st: State) -> None:
    """MRG in A06/A07 (change of class): prior visit number is informational; kept in the raw message."""
    st.ctx.unmapped["MRG(A06 prior visit)"] += 1


def skip(seg: Segment, st: State) -> None:
    st.ctx.unmapped[seg.name] += 1


ROLES: dict[str, Callable[[Segment, State], Any]] = {
    "patient": patient, "patient_extra": patient_extra, "contact": contact, "encounter": encounter,
    "encounter_extra": encounter_extra, "order": order, "order_detail": order_detail, "report": report,
    "result": result, "observation": observation, "order_observation": order_observation,
    "immunization_observation": immunization_observation, "note": note, "specimen": specimen, "timing": timing,
    "allergy": allergy, "condition": condition, "procedure": procedure, "immunization": immunization,
    "route": route, "medication": medication, "medication_order": medication_order, "appointment": appointment,
    "resource": resource, "document": document, "document_content": document_content, "merge": merge,
    "merge_note": merge_note, "skip": skip, "skip_rxo": skip,
}

# Fields each role maps; other non-empty fields are reported as unmapped (e.g. "PID-9").
MAPPED: dict[str, frozenset[int]] = {
    "PID": frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 14, 15, 16, 19, 20, 24, 25, 29, 30}),
    "PD1": frozenset({3, 4}), "NK1": frozenset({1, 2, 3, 4, 5, 6, 13}),
    "PV1": frozenset({1, 2, 3, 4, 7, 8, 9, 10, 14, 17, 19, 36, 44, 45}), "PV2": frozenset({3, 8, 9}),
    "ORC": frozenset({1, 2, 3, 4, 5, 9, 12, 21}), "OBR": frozenset({1, 2, 3, 4, 5, 7, 8, 16, 22, 25, 27, 31, 32}),
    "OBX": frozenset({1, 2, 3, 4, 5, 6, 7, 8, 11, 14, 15, 16, 17, 23, 25}), "NTE": frozenset({1, 3}),
    "SPM": frozenset({1, 2, 4, 17, 18}), "TQ1": frozenset({1, 7, 8, 9}), "AL1": frozenset({1, 2, 3, 4, 5, 6}),
    "DG1": frozenset({1, 3, 4, 5, 20}), "PR1": frozenset({1, 3, 5}),
    "RXA": frozenset({1, 2, 3, 5, 6, 7, 9, 10, 15, 16, 17, 18, 20, 21}), "RXR": frozenset({1, 2}),
    "RXE": frozenset({1, 2, 3, 5, 7, 10, 11, 12, 21}), "RXO": frozenset({1}),
    "SCH": frozenset({1, 2, 7, 8, 9, 10, 11, 25}), "AIS": frozenset({1, 3, 4}), "AIG": frozenset({1, 3}),
    "AIL": frozenset({1, 3}), "AIP": frozenset({1, 3}),
    "TXA": frozenset({1, 2, 4, 5, 9, 10, 12, 13, 17}), "MRG": frozenset({1, 7}),
    "MSH": frozenset({1, 2, 3, 4, 7, 9, 10, 11, 12, 18}), "EVN": frozenset({1, 2}),
}
# Roles that read fewer fields of their segment than the segment's main map: OBX as document content
# (MDM) keeps only the content; OBR as an order (no report) has no report times or status.
MAPPED_BY_ROLE: dict[str, frozenset[int]] = {
    "document_content": frozenset({1, 2, 5}),
    "order_detail": frozenset({1, 2, 3, 4, 5, 7, 16, 27, 31}),
}
