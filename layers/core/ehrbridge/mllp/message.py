"""From raw frame bytes to what the bridge commits: routing to a tenant's source, checks, the envelope.

Raw bytes are never changed: they travel base64 in the envelope so the character set can be
decided (and re-decided) downstream. Decoding here is only a strict check that they *are* valid
in the declared charset, so a sender learns about a charset problem from its ACK, not days later.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pydantic import ValidationError

from ehrbridge.contracts.envelope import ContractError, Envelope, patient_key_for
from ehrbridge.contracts.tenant import MllpSource, TenantConfig
from ehrbridge.hl7.wire import MshHeader, UnsupportedCharset, WireError, decode_detailed, read_msh
from ehrbridge.mllp.ack import AckError


class Rejected(Exception):
    """The message is refused. ``reject`` True -> AR (structure/routing), False -> AE (content)."""

    def __init__(self, error: AckError, *, reject: bool) -> None:
        self.error = error
        self.reject = reject
        super().__init__(error.text)


@dataclass(frozen=True)
class Route:
    tenant: TenantConfig
    source: MllpSource


class SourceDirectory:
    """Who may send: tenants' MLLP sources, matched on MSH-3 (and MSH-4 when configured).

    With mutual TLS a source bound to a client-certificate fingerprint is only accepted on a
    connection that presented that certificate, and a bound certificate may only send as its sources.
    """

    def __init__(self, tenants: Iterable[TenantConfig]) -> None:
        self.tenants = {t.tenant_id: t for t in tenants}
        self._routes: list[Route] = [Route(t, s) for t in self.tenants.values() for s in t.mllp_sources]
        self.bound_fingerprints = {r.source.client_cert_fingerprint for r in self._routes
                                   if r.source.client_cert_fingerprint}
        self._cache: dict[tuple[str, str, str | None], Route | Rejected] = {}

    @property
    def only_tenant(self) -> TenantConfig | None:
        return next(iter(self.tenants.values())) if len(self.tenants) == 1 else None

    def tenant_for_fingerprint(self, fingerprint: str | None) -> TenantConfig | None:
        if not fingerprint:
            return None
        tenants = {r.tenant.tenant_id: r.tenant for r in self._routes
                   if r.source.client_cert_fingerprint == fingerprint}
        return next(iter(tenants.values())) if len(tenants) == 1 else None

    def resolve(self, header: MshHeader, fingerprint: str | None) -> Route:
        """The source for MSH-3/MSH-4 (+ certificate); cached, since a sender repeats the same header."""
        key = (header.field(3), header.field(4), fingerprint)
        cached = self._cache.get(key)
        if cached is None:
            try:
                cached = self._resolve(header, fingerprint)
            except Rejected as rej:
                cached = rej
            if len(self._cache) < 10_000:
                self._cache[key] = cached
        if isinstance(cached, Rejected):
            raise Rejected(cached.error, reject=cached.reject)
        return cached

    def _resolve(self, header: MshHeader, fingerprint: str | None) -> Route:
        app = header.component(3, 1).strip()
        facility = header.component(4, 1).strip()
        matches = [r for r in self._routes
                   if r.source.sending_application.split("^")[0].strip() == app
                   and (r.source.sending_facility is None
                        or r.source.sending_facility.split("^")[0].strip() == facility)]
        if fingerprint and fingerprint in self.bound_fingerprints:
            # A bound certificate speaks only for its own sources.
            matches = [r for r in matches if r.source.client_cert_fingerprint == fingerprint]
            if not matches:
                raise Rejected(AckError("103", "sending application not allowed for this client certificate",
                                        ("MSH", 1, 3)), reject=True)
        else:
            matches = [r for r in matches if r.source.client_cert_fingerprint is None]
        if not matches:
            raise Rejected(AckError("103", "sending application/facility not configured", ("MSH", 1, 3)),
                           reject=True)
        # Prefer the most specific match (facility configured) when several sources share MSH-3.
        matches.sort(key=lambda r: r.source.sending_facility is None)
        if len(matches) > 1 and matches[0].source.sending_facility == matches[1].source.sending_facility \
                and matches[0].tenant.tenant_id != matches[1].tenant.tenant_id:
            raise Rejected(AckError("103", "sending application is configured for more than one tenant",
                                    ("MSH", 1, 3)), reject=True)
        return matches[0]


def pid3(text: str, header: MshHeader) -> tuple[str, str] | None:
    """(identifier, assigning authority) from the first PID-3 repetition, or None when absent."""
    sep = header.field_separator
    enc = header.encoding_characters
    comp, rep = enc[0], enc[1] if len(enc) > 1 else "~"
    sub = enc[3] if len(enc) > 3 else "&"
    start = text.find("\rPID" + sep)
    if start < 0:
        start = text.find("\nPID" + sep)
    if start < 0:
        return None
    # Cut the PID line at its end without copying the rest of the message first.
    begin = start + 1
    cr = text.find("\r", begin)
    lf = text.find("\n", begin, cr if cr >= 0 else len(text))
    end = lf if lf >= 0 else cr
    line = text[begin:end] if end >= 0 else text[begin:]
    fields = line.split(sep, 4)  # PID-3 is all we need
    if len(fields) < 4 or not fields[3].strip():
        return None
    first = fields[3].split(rep)[0].split(comp)
    identifier = first[0].strip()
    authority = first[3].split(sub)[0].strip() if len(first) > 3 else ""
    return (identifier, authority) if identifier else None


_PATIENT_KEYS: dict[tuple[str, str, str], str] = {}


def patient_key(tenant_id: str, source_id: str, text: str, header: MshHeader) -> str:
    """Ordering key: the patient (PID-3) when known, else the source, so a sender's order holds."""
    found = pid3(text, header)
    if found is None:
        return f"src-{source_id}"
    identifier, authority = found
    cache_key = (tenant_id, authority or source_id, identifier)
    key = _PATIENT_KEYS.get(cache_key)
    if key is None:
        # Patients recur (results, updates): hash once. In memory only, never logged.
        if len(_PATIENT_KEYS) > 50_000:
            _PATIENT_KEYS.clear()
        key = _PATIENT_KEYS[cache_key] = patient_key_for(*cache_key)
    return key


class Inspected(NamedTuple):  # one per message: a tuple is cheaper to make than a frozen dataclass
    header: MshHeader
    route: Route
    text: str
    charset: str  # the MSH-18 value or the source's default, as configured/sent
    sha256: str


_BLANK = b"\r\n \t\x00"


def _has_body(raw: bytes) -> bool:
    """True when some segment follows MSH (cheaper than splitting the whole message).

    Looks at a short window after the MSH segment first: the next segment normally starts right there,
    and slicing the whole rest of a large message just to find one byte would copy all of it.
    """
    cut = _segment_end(raw, raw.find(b"MSH"))
    if cut < 0:
        return False
    return bool(raw[cut:cut + 64].strip(_BLANK)) or bool(raw[cut + 64:].strip(_BLANK))


def _segment_end(raw: bytes, pos: int) -> int:
    """Index of the first CR or LF at or after ``pos`` (-1: none). The LF search stops at the first CR, so
    a CR-only message (the norm) is not scanned to its end a second time looking for an LF."""
    cr = raw.find(b"\r", pos)
    lf = raw.find(b"\n", pos, cr if cr >= 0 else len(raw))
    return lf if lf >= 0 else cr


def msh_head(raw: bytes) -> bytes:
    """The bytes up to the end of the MSH segment: all ``read_msh`` needs, without splitting a 2 MB message."""
    pos = raw.find(b"MSH")
    if pos < 0:
        return raw
    end = _segment_end(raw, pos)
    return raw[:end] if end >= 0 else raw


# MSH segment with MSH-7 and MSH-10 cut out -> the header read_msh made of the first message with it.
_HEADERS: dict[bytes, MshHeader] = {}
_EMPTY_CONTROL_ID = "MSH-10 message control id is empty"


def read_header(raw: bytes) -> MshHeader:
    """``read_msh(msh_head(raw))``, same result and same errors, without re-parsing a feed's constant MSH.

    A feed repeats its MSH except MSH-7 (time) and MSH-10 (control id), and neither takes part in
    ``read_msh``'s checks except "MSH-10 not empty". So the first message of each distinct remainder is
    read (and checked) in full; later ones reuse that header with their own MSH-7/MSH-10. Only messages
    that start with ``MSH`` take this path (batch headers, BOMs, leading junk go through ``read_msh``).
    """
    if raw[:3] != b"MSH" or len(raw) < 8:
        return read_msh(msh_head(raw))
    end = _segment_end(raw, 3)
    segment = raw[:end] if end >= 0 else raw
    if len(segment) < 8:  # "MSH" then a segment end: read_msh names the problem
        return read_msh(segment)
    separator = segment[3:4]
    parts = segment.split(separator)
    if len(parts) < 10:
        return read_msh(segment)
    # Joined by the separator itself, which no part contains: two different remainders never share a key.
    key = separator.join((*parts[:6], *parts[7:9], *parts[10:]))
    template = _HEADERS.get(key)
    if template is None:
        header = read_msh(segment)  # raises WireError for a bad header: nothing cached
        if len(_HEADERS) >= 4096:
            _HEADERS.clear()
        _HEADERS[key] = header
        return header
    # Per byte, latin-1 decodes ASCII exactly as read_msh's ASCII-then-latin-1 decode does.
    control_id = parts[9].decode("latin-1")
    if not control_id:
        raise WireError(_EMPTY_CONTROL_ID, "101")
    stamp = parts[6].decode("latin-1")
    fields = template.fields
    # A frozen dataclass copy with two fields changed, without dataclasses.replace's re-validation cost.
    header = object.__new__(MshHeader)
    header.__dict__.update(template.__dict__, message_datetime=stamp, control_id=control_id,
                           fields=(*fields[:6], stamp, *fields[7:9], control_id, *fields[10:]))
    return header


def starts_batch(raw: bytes) -> bool:
    return raw.lstrip(b"\x00 \t\r\n\xef\xbb\xbf")[:3] in (b"FHS", b"BHS")


def inspect(raw: bytes, header: MshHeader, route: Route) -> Inspected:
    """Strict checks that decide AA vs AE before anything is committed."""
    charset = header.charset or route.source.default_charset
    try:
        text, _codec = decode_detailed(raw, header.charset, route.source.default_charset)
    except UnsupportedCharset as err:  # not a table 0211 character set: refused (AR), never resent as is
        raise Rejected(AckError(err.code, err.reason, ("MSH", 1, 18)), reject=True) from None
    except WireError as err:  # bytes invalid in a known charset: a content error (AE 102, not retryable)
        raise Rejected(AckError("102", err.reason, ("MSH", 1, 18)), reject=False) from None
    if not _has_body(raw) and not message_kind(header).startswith("ACK"):
        raise Rejected(AckError("100", "message has no segment after MSH", ("MSH", 1, 0)), reject=True)
    return Inspected(header, route, text, charset, hashlib.sha256(raw).hexdigest())


_KINDS: dict[tuple[str, str], str] = {}


def message_kind(header: MshHeader) -> str:
    """``header.kind``, cached per MSH-9 value (a feed sends a handful of message types)."""
    key = (header.message_type, header.encoding_characters)
    kind = _KINDS.get(key)
    if kind is None:
        if len(_KINDS) >= 4096:
            _KINDS.clear()
        kind = _KINDS[key] = header.kind
    return kind


_JSON_CACHE: dict[str, str] = {}


def _js(value: str) -> str:
    """JSON string literal, cached: kinds, charsets, versions and source ids repeat endlessly."""
    out = _JSON_CACHE.get(value)
    if out is None:
        out = json.dumps(value, ensure_ascii=False)
        if len(_JSON_CACHE) < 10_000:
            _JSON_CACHE[value] = out
    return out


_received_second: list[object] = [-1, ""]


def _received_at() -> str:
    """ISO-8601 UTC time with microseconds (as ``datetime.isoformat``); the date-time part is formatted
    once per second, since thousands of envelopes a second share it."""
    now = time.time()
    second = int(now)
    if _received_second[0] != second:
        _received_second[:] = [second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")]
    return f"{_received_second[1]}.{int((now - second) * 1_000_000):06d}Z"


def _json_str(value: str) -> str:
    """JSON string literal of a per-message value (MSH-10): plain printable ASCII needs no escaping."""
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json.dumps(value)


def envelope_json(raw: bytes, item: Inspected, message_id: str, *, batch: bool = False,
                  collision: bool = False, kind: str | None = None) -> tuple[str, str]:
    """(JSON, FIFO group id) of the same envelope ``build_envelope`` makes, without the model round trip.

    The bridge's hot path: every field is valid by construction (tenant and source from validated
    config, hex ids, kind from a parsed MSH, a patient key of [A-Za-z0-9-]); strings that come from
    the message are JSON-escaped; a unit test checks the result validates to the same Envelope.
    """
    header, source, tenant = item.header, item.route.source, item.route.tenant
    key = patient_key(tenant.tenant_id, source.source_id, item.text, header)
    attributes = (f'"source_id":{_js(source.source_id)},"msh10":{_json_str(header.control_id[:64])},'
                  f'"charset":{_js(item.charset)},"version":{_js(header.version[:16])}')
    if source.timezone:
        attributes += f',"timezone":{_js(source.timezone)}'
    if batch:
        attributes += ',"batch":"true"'
    if collision:
        attributes += ',"msh10_collision":"true"'
    received = _received_at()
    # The base64 alphabet needs no JSON escaping.
    body = base64.b64encode(raw).decode("ascii")
    kind_json = _js((kind or message_kind(header))[:64] or "UNKNOWN")
    text = (f'{{"schema_version":1,"tenant_id":"{tenant.tenant_id}","message_id":"{message_id}",'
            f'"correlation_id":"{message_id}","source":"hl7v2","kind":{kind_json},'
            f'"received_at":"{received}","patient_key":"{key}","body_encoding":"base64",'
            f'"attributes":{{{attributes}}},"body":"{body}"}}')
    return text, f"{tenant.tenant_id}:{key}"[:128]


_ID_PREFIXES: dict[tuple[str, str], Any] = {}


def message_id_for(tenant_id: str, source_id: str, control_id: str, sha256: str) -> str:
    """The envelope's stable id (same derivation as new_envelope's natural key); also the resend key.

    ``stable_id(tenant_id, "hl7v2", source_id, control_id, sha256)``, with the hash state of the
    per-source prefix computed once and copied (a unit test checks both agree).
    """
    prefix = _ID_PREFIXES.get((tenant_id, source_id))
    if prefix is None:
        prefix = hashlib.sha256()
        for part in (tenant_id, "hl7v2", source_id):
            data = part.encode("utf-8")
            prefix.update(len(data).to_bytes(8, "big"))
            prefix.update(data)
        if len(_ID_PREFIXES) >= 4096:
            _ID_PREFIXES.clear()
        _ID_PREFIXES[(tenant_id, source_id)] = prefix
    h = prefix.copy()
    for part in (control_id, sha256):
        data = part.encode("utf-8")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:40]


def build_envelope(raw: bytes, item: Inspected, *, batch: bool = False, collision: bool = False,
                   message_id: str | None = None) -> Envelope:
    header, source, tenant = item.header, item.route.source, item.route.tenant
    attributes = {"source_id": source.source_id, "msh10": header.control_id[:64], "charset": item.charset,
                  "version": header.version[:16]}
    if source.timezone:
        attributes["timezone"] = source.timezone
    if batch:
        attributes["batch"] = "true"
    if collision:
        attributes["msh10_collision"] = "true"
    message_id = message_id or message_id_for(tenant.tenant_id, source.source_id, header.control_id, item.sha256)
    try:
        return Envelope(tenant_id=tenant.tenant_id, message_id=message_id, correlation_id=message_id,
                        source="hl7v2", kind=header.kind[:64], received_at=datetime.now(UTC),
                        patient_key=patient_key(tenant.tenant_id, source.source_id, item.text, header),
                        body=base64.b64encode(raw).decode("ascii"), body_encoding="base64", attributes=attributes)
    except ValidationError as err:
        raise ContractError.from_validation_error("envelope", err) from None
