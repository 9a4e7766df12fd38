"""HL7 v2 message -> canonical FHIR R4 transaction Bundle (or a quarantine with reasons).

Flow: clean + parse (``hl7.message``) -> structure from MSH-9 (table 0354, ``structures``) ->
each segment through the segment map its structure names (``segments``) -> Provenance ->
transaction Bundle with deterministic ids -> fast structural check (``validate``).
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from ehrbridge.contracts.envelope import patient_key_for
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.hl7 import wire
from ehrbridge.hl7.message import Message, ParseError, parse
from ehrbridge.hl7.timefmt import fmt_offset, zone
from ehrbridge.normalize import segments as seg_maps
from ehrbridge.normalize import structures, validate
from ehrbridge.normalize.context import (
    EXT_SOURCE_EVENT_TIME,
    EXT_UNMAPPED,
    Ctx,
    QuarantineError,
)

EXT_SOURCE_MESSAGE = "https://ehrbridge.dev/fhir/StructureDefinition/source-message-id"
# Resource order in the bundle: referenced resources first (readability; a transaction resolves any order).
_ORDER = {"Patient": 0, "Encounter": 1, "ServiceRequest": 2, "Specimen": 3, "Observation": 4,
          "DiagnosticReport": 5, "Provenance": 99}


@dataclass
class NormalizeResult:
    status: str  # "ok" | "quarantined"
    kind: str = "UNKNOWN"
    control_id: str = ""
    bundle: dict[str, Any] | None = None
    bundle_json: str = ""  # the bundle as compact JSON (what the stage sends on; its size is a limit)
    reasons: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    repairs: list[dict[str, str]] = field(default_factory=list)
    issues: list[dict[str, str]] = field(default_factory=list)
    unmapped_systems: list[str] = field(default_factory=list)
    zone_applied: int = 0
    zone_gaps: int = 0
    fields_mapped: int = 0  # non-empty fields a segment map read (the unmapped ones are in ``unmapped``)
    patient_key: str | None = None
    structure: str = ""
    segments: dict[str, int] = field(default_factory=dict)
    source_event_time: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def summary(self) -> dict[str, Any]:
        """PHI-free facts (for logs and metrics)."""
        return {"status": self.status, "kind": self.kind, "reasons": self.reasons, "unmapped": len(self.unmapped),
                "repairs": len(self.repairs), "issues": len(self.issues)}


def zone_for(tenant: TenantConfig, source_id: str | None, sending_application: str = "") -> str:
    """Sender's zone: the MLLP source's own zone, else the tenant's (never the server's)."""
    for src in tenant.mllp_sources:
        matches = src.source_id == source_id if source_id else bool(
            sending_application and src.sending_application == sending_application)
        if matches and src.timezone:
            return src.timezone
    return tenant.timezone


def default_charset_for(tenant: TenantConfig, source_id: str | None) -> str:
    for src in tenant.mllp_sources:
        if source_id and src.source_id == source_id:
            return src.default_charset
    return "ASCII"


def normalize_hl7(data: bytes, tenant: TenantConfig, *, source_id: str | None = None,
                  message_id: str = "") -> NormalizeResult:
    """Normalize one HL7 v2 message (bytes as received). Never raises for bad input: quarantines."""
    if not data.strip():
        return NormalizeResult("quarantined", kind="EMPTY", reasons=["empty input"])
    too_many = _too_many_segments(data, tenant.limits.max_segments)
    if too_many:
        kind, control_id = _header_facts(data)
        return NormalizeResult("quarantined", kind=kind, control_id=control_id, reasons=[too_many])
    try:
        msg = parse(data, default_charset_for(tenant, source_id))
    except ParseError as err:
        kind, control_id = _header_facts(data)
        return NormalizeResult("quarantined", kind=kind, control_id=control_id,
                               reasons=[f"unparseable HL7: {err.reason}"])
    kind, control_id = msg.kind, msg.control_id
    try:
        return _map(msg, tenant, source_id, message_id)
    except QuarantineError as err:
        return NormalizeResult("quarantined", kind=kind, control_id=control_id, reasons=err.reasons)
    except Exception as err:  # the last guard: a message must never crash the batch
        # A bug or a shape we did not foresee: quarantine with the error type (no values: PHI).
        return NormalizeResult("quarantined", kind=kind, control_id=control_id,
                               reasons=[f"mapping failed: {type(err).__name__} (please report)"])


def _too_many_segments(data: bytes, limit: int) -> str:
    """The segment bound, checked on the bytes before parsing builds anything (a 16 MB message of 70,000
    segments would otherwise be fully parsed first). Line ends bound the count from above; only past the
    limit are segments counted exactly."""
    if data.count(b"\r") + data.count(b"\n") < limit:
        return ""
    if b"\n" not in data and b"\r\r" not in data:  # the norm: one CR per segment, no blank lines
        count = data.count(b"\r") + (not data.endswith(b"\r"))
    else:
        count = len(wire.split_segments(data))
    return f"limit exceeded: {count} segments (max_segments {limit})" if count > limit else ""


def _header_facts(data: bytes) -> tuple[str, str]:
    """(kind, MSH-10) of a message that could not be parsed, when its MSH can still be read (for the report)."""
    try:
        header = wire.read_msh(data[:65536])  # the MSH is at the start: never split a whole large message
    except wire.WireError:
        return "UNKNOWN", ""
    return wire.printable(header.kind, 40), wire.printable(header.control_id, 64)


def _map(msg: Message, tenant: TenantConfig, source_id: str | None, message_id: str) -> NormalizeResult:
    kind = msg.kind
    if not msg.control_id:
        raise QuarantineError("MSH-10 message control id is empty")
    structure_name, reason = structures.resolve(kind, msg.structure)
    if structure_name is None:
        raise QuarantineError(reason)
    structure = structures.STRUCTURES[structure_name]
    msh = msg.msh
    sender, facility = msh.value(3, 1) or msh.value(3, 2), msh.value(4, 1) or msh.value(4, 2)
    ctx = Ctx(tenant=tenant, zone_name=zone_for(tenant, source_id, sender), facility=facility, sender=sender)
    check_limits(msg, tenant)
    counts: dict[str, int] = {}
    for s in msg.segments:
        counts[s.name] = counts.get(s.name, 0) + 1
    missing = [name for name in dict.fromkeys(structure.required)
               if counts.get(name, 0) < structure.required.count(name)]
    if missing:
        raise QuarantineError(f"{kind} ({structure_name}) without required segment(s): {', '.join(missing)}")
    evn = msg.first("EVN")
    event_ts = ctx.ts(evn.value(2), "EVN-2") if evn is not None and evn.value(2) else None
    msg_ts = ctx.ts(msh.value(7), "MSH-7")
    event_ts = event_ts or msg_ts
    if event_ts is None:
        raise QuarantineError("MSH-7 message date/time is empty or invalid (needed to order versions)")
    event_time = _instant(event_ts.fhir, ctx.zone_name)
    st = seg_maps.State(ctx, msg.trigger, event_time)
    roles = structure.roles
    zsegments: list[str] = []
    for s in msg.segments:
        role = roles.get(s.name)
        if role is None:
            ctx.unmapped[s.name] += 1
            if s.name.startswith("Z"):
                zsegments.append(s.er7())
            continue
        if role in ("header", "event"):
            _unmapped_fields(s, ctx, role)
            continue
        seg_maps.ROLES[role](s, st)
        if role not in ("skip", "skip_rxo", "merge_note"):
            _unmapped_fields(s, ctx, role)
    if st.patient is None:
        raise QuarantineError(f"{kind}: no patient could be identified (PID missing or empty)")
    seg_maps.finish_documents(st)
    resources = st.resources
    meta = {"lastUpdated": event_time}
    source_time = {"url": EXT_SOURCE_EVENT_TIME, "valueInstant": event_time}
    for res in resources:
        _stamp(res, meta, source_time)
    resources.sort(key=lambda r: _ORDER.get(r["resourceType"], 10))
    provenance = _provenance(msg, ctx, st, event_ts.fhir, event_time, message_id, zsegments)
    resources.append(provenance)
    limits = tenant.limits
    if len(resources) > limits.max_resources_per_bundle:
        raise QuarantineError(f"limit exceeded: {len(resources)} resources in the bundle "
                              f"(max_resources_per_bundle {limits.max_resources_per_bundle})")
    bundle = _bundle(ctx, resources, msg, event_time)
    problems = validate.check_bundle(bundle)
    if problems:
        raise QuarantineError(*[f"invalid FHIR: {p}" for p in problems[:5]])
    bundle_json = _to_json(bundle)
    if _ODD_BLANKS_JSON.search(bundle_json):  # rare: one regex scan of the JSON decides
        bundle = _plain_blanks(bundle)
        bundle_json = _to_json(bundle)
        ctx.repair("whitespace", "message", "Unicode blanks in text replaced by spaces")
    if len(bundle_json) > limits.max_output_bytes:  # ASCII JSON: characters = bytes
        raise QuarantineError(f"limit exceeded: bundle of {len(bundle_json)} bytes "
                              f"(max_output_bytes {limits.max_output_bytes})")
    authority, value = st.patient_key or ("", "")
    return NormalizeResult(
        "ok", kind=kind, control_id=msg.control_id, bundle=bundle, bundle_json=bundle_json,
        unmapped=_unmapped_list(ctx),
        repairs=ctx.repairs + [{"kind": "wire", "where": "message", "detail": c} for c in msg.cleanups],
        issues=ctx.issues, unmapped_systems=sorted(ctx.unmapped_systems), zone_applied=ctx.zone_applied,
        zone_gaps=ctx.zone_gaps, fields_mapped=ctx.fields_mapped,
        patient_key=patient_key_for(tenant.tenant_id, authority, value),
        structure=structure_name, segments=counts, source_event_time=event_time)


# The standard library's compact encoder, without circular-reference bookkeeping (a fifth of its time): the
# bundle is a tree the engine just built and the check walked; a cycle could only come from a bug and would
# end in RecursionError, which the last guard in normalize_hl7 quarantines.
_stdlib_json = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def _to_json(bundle: dict[str, Any]) -> str:
    """Compact ASCII JSON of a bundle (what the stage sends on; its length is the output-size limit): the
    standard library's ``json.dumps(bundle, separators=(",", ":"))`` text, written ~10x faster.

    orjson writes it (the standard library's encoder was a fifth of a message's time). orjson leaves
    non-ASCII characters and DEL as they are; they are then escaped as the standard library does (``\\u00e9``,
    surrogate pairs above U+FFFF; a JSON text holds them only inside strings), so one character is one byte
    and the odd-blank scan reads the escapes. The one difference left is how a float's negative exponent is
    written (``1e-7`` for ``1e-07``, the same number). What orjson refuses (an integer beyond 64 bits, a lone
    surrogate, nesting past its limit) is written by the standard library."""
    try:
        out = orjson.dumps(bundle)
    except orjson.JSONEncodeError:
        return _stdlib_json(bundle)
    # Non-ASCII is escaped in C: the error handler only sees the runs of non-ASCII characters.
    text = out.decode("ascii") if out.isascii() else out.decode("utf-8").encode("ascii", _JSON_ESCAPE).decode("ascii")
    return text.replace("\x7f", "\\u007f") if "\x7f" in text else text


def _json_u_escapes(err: UnicodeError) -> tuple[str, int]:
    """Codec error handler: characters ASCII cannot hold as JSON ``\\uXXXX`` escapes (the standard library's)."""
    if not isinstance(err, UnicodeEncodeError):
        raise err
    out = []
    for ch in err.object[err.start:err.end]:
        code = ord(ch)
        if code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            code -= 0x10000
            out.append(f"\\u{0xD800 | (code >> 10):04x}\\u{0xDC00 | (code & 0x3FF):04x}")
    return "".join(out), err.end


_JSON_ESCAPE = "ehrbridge.json-u-escapes"
codecs.register_error(_JSON_ESCAPE, _json_u_escapes)


# FHIR ``string`` is ``[ \r\n\t\S]+``: a Unicode blank other than those four (no-break space, line/paragraph
# separator, VT, ideographic space ...) makes the R4B models refuse the whole bundle; a form feed passes them,
# but no XML FHIR can carry it (XML 1.0 forbids the character), so it goes too. In the compact JSON
# (ASCII-escaped) they appear as these escapes; a match only costs a walk that replaces them by a space.
# JSON writes a form feed as the two characters backslash + f; an escape is real only when no backslash
# escapes its own backslash (JSON backslash backslash f is the text "backslash f", not a form feed).
_ODD_BLANKS_JSON = re.compile(r"(?<!\\)(?:\\\\)*\\(?:f|u(?:000[bc]|0085|00a0|1680|200[0-9a]|202[89f]|205f|3000))")
_ODD_BLANKS = re.compile("[\x0b\x0c\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")


def _plain_blanks(node: Any) -> Any:
    if isinstance(node, str):
        return _ODD_BLANKS.sub(" ", node)
    if isinstance(node, dict):
        return {k: _plain_blanks(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain_blanks(v) for v in node]
    return node


def check_limits(msg: Message, tenant: TenantConfig) -> None:
    """Segments and repetitions within the tenant's bounds, checked before any mapping builds anything."""
    limits = tenant.limits
    if len(msg.segments) > limits.max_segments:
        raise QuarantineError(f"limit exceeded: {len(msg.segments)} segments (max_segments {limits.max_segments})")
    rep = msg.seps.repetition
    if not rep:
        return
    per_field, total = limits.max_repetitions_per_field, 0
    for s in msg.segments:
        fields = s.fields
        for n in range(3 if s.name == "MSH" else 1, len(fields)):
            value = fields[n]
            if rep in value:
                count = value.count(rep) + 1
                total += count
                if count > per_field:
                    raise QuarantineError(f"limit exceeded: {s.name}-{n} has {count} repetitions "
                                          f"(max_repetitions_per_field {per_field})")
    if total > limits.max_repetitions_per_message:
        raise QuarantineError(f"limit exceeded: {total} repetitions in the message "
                              f"(max_repetitions_per_message {limits.max_repetitions_per_message})")


def _instant(fhir_dt: str, zone_name: str = "UTC") -> str:
    """A FHIR instant from a dateTime of any precision: a date (or year/month) starts at local midnight
    in the sender's zone, so version comparison never depends on the server either."""
    if len(fhir_dt) > 10:
        return fhir_dt
    year, month, day = [*fhir_dt.split("-"), "01", "01"][:3]
    try:
        local = datetime(int(year), int(month), int(day), tzinfo=zone(zone_name))
        offset = local.utcoffset()
    except (ValueError, OverflowError):
        raise QuarantineError("date out of range for an instant (year 0001-9999)") from None
    # Formatted here, not by isoformat: a zone's local mean time before ~1900 has seconds in its offset.
    return f"{local.year:04d}-{local.month:02d}-{local.day:02d}T00:00:00{fmt_offset(offset or timedelta(0))}"


def _unmapped_fields(s: Any, ctx: Ctx, role: str) -> None:
    mapped = seg_maps.MAPPED_BY_ROLE.get(role) or seg_maps.MAPPED.get(s.name)
    if mapped is None:
        return
    fields = s.fields
    for n in range(1, len(fields)):
        if fields[n] and fields[n] != '""':
            if n in mapped:
                ctx.fields_mapped += 1
            else:
                ctx.unmapped[f"{s.name}-{n}"] += 1


def _unmapped_list(ctx: Ctx) -> list[str]:
    return [f"{name} x{count}" if count > 1 else name for name, count in sorted(ctx.unmapped.items())]


def _stamp(res: dict[str, Any], meta: dict[str, str], source_time: dict[str, str]) -> None:
    """meta.lastUpdated + extension = the source event time, so writers can refuse older versions.
    The two objects are shared by every resource of the bundle (identical content, checked once)."""
    res["meta"] = meta
    res.setdefault("extension", []).append(source_time)


def _provenance(msg: Message, ctx: Ctx, st: seg_maps.State, recorded: str, event_time: str, message_id: str,
                zsegments: list[str]) -> dict[str, Any]:
    msh = msg.msh
    ident = {"system": f"urn:ehrbridge:{ctx.tenant_id}:hl7v2:{_safe(ctx.sender or 'sender')}:"
                       f"{_safe(ctx.facility or 'facility')}", "value": msg.control_id}
    entity: dict[str, Any] = {"role": "source", "what": {"identifier": ident,
                                                          "display": f"HL7 v2 {msg.kind} {msg.version}".strip()}}
    ext = [{"url": EXT_UNMAPPED, "valueString": z} for z in zsegments]
    if message_id:
        ext.append({"url": EXT_SOURCE_MESSAGE, "valueString": message_id})
    if ext:
        entity["extension"] = ext
    prov = {
        "resourceType": "Provenance",
        "id": ctx.rid("Provenance", ident["system"], msg.control_id, msh.value(7)),
        "meta": {"lastUpdated": event_time},
        "target": [st.ref(r) for r in st.resources],
        "recorded": _instant(recorded, ctx.zone_name),
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0003", "code": msg.trigger}]}
        if msg.trigger else None,
        "agent": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                        "code": "author"}]},
                   "who": {"display": " ".join(x for x in (ctx.sender, ctx.facility) if x) or "unknown sender"}}],
        "entity": [entity],
    }
    return {k: v for k, v in prov.items() if v is not None}


def _safe(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _bundle(ctx: Ctx, resources: list[dict[str, Any]], msg: Message, event_time: str) -> dict[str, Any]:
    entries = []
    for res in resources:
        url = f"{res['resourceType']}/{res['id']}"
        entries.append({"fullUrl": url, "resource": res, "request": {"method": "PUT", "url": url}})
    return {"resourceType": "Bundle", "id": ctx.rid("Bundle", ctx.sender, ctx.facility, msg.control_id,
                                                     msg.msh.value(7)),
            "meta": {"lastUpdated": event_time}, "type": "transaction", "timestamp": event_time, "entry": entries}
