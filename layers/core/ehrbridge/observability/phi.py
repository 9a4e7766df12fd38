"""A logging safety net that keeps PHI out of log lines.

The first defence is discipline: code logs ids, counts, codes and reasons only. This filter
is the second: it drops any extra field that is not on an allowlist of PHI-free keys, and
scrubs message and exception text of things that look like patient data (HL7 segments,
FHIR JSON, SSNs, dates, phone numbers, e-mail addresses, pydantic's echoed input values).
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "[redacted]"

# Extra keys that are PHI-free by construction (ids, codes, counts, reasons).
ALLOWED_EXTRA_KEYS = frozenset({
    "tenant_id", "tenant", "message_id", "correlation_id", "source", "source_id", "kind", "stage",
    "reason", "reasons", "code", "codes", "status", "status_code", "count", "counts", "resource_type",
    "endpoint", "message_type", "error_type", "ack_code", "attempt", "attempts", "queue", "queue_name",
    "duration_ms", "batch_size", "failed", "processed", "group_id", "patient_key", "enterprise_id",
    "decision", "grade", "score", "bucket", "key_prefix", "workflow", "scopes", "granted_scopes",
    "denied", "expires_in", "retry_after", "http_method", "phase", "connection_id", "peer",
    "tls_version", "cipher", "message_control_id", "version", "charset", "segments", "unmapped",
    "repairs", "model_version", "elapsed_s", "port", "host", "event", "function", "outcome",
    "resource_count", "job", "delay_s", "bytes", "event_loop",
    # Powertools' own record attributes.
    "xray_trace_id", "cold_start", "function_name", "function_memory_size", "function_arn",
    "function_request_id", "sampling_rate",
})

# Attributes every LogRecord has; they are not "extras".
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {
    "message", "asctime", "taskName",
}

_SCRUBBERS: list[tuple[re.Pattern[str], str]] = [
    # pydantic echoes offending input: "input_value='Jane', input_type=str"
    (re.compile(r"input_value=.*?(?=, input_type=|\]|$)", re.S), "input_value=" + REDACTED),
    # HL7 v2 segments (header + field separator), up to the segment end.
    (re.compile(r"\b(?:MSH|PID|PD1|NK1|PV1|PV2|MRG|OBR|OBX|NTE|ORC|GT1|IN1|IN2|DG1|AL1|ZPI|Z[A-Z0-9]{2}|"
                r"EVN|SCH|AIS|AIP|RXA|RXE|RXR|TXA|SPM|FHS|BHS)[|^~\\&].*?(?=[\r\n]|$)"), "[hl7 redacted]"),
    # FHIR/JSON fragments naming demographic fields.
    (re.compile(r'"(?:name|family|given|birthDate|address|line|city|postalCode|telecom|text|value|'
                r'display|ssn|mrn)"\s*:\s*(?:"[^"]*"|\[[^\]]*\]|\{[^}]*\})', re.I), '"[field]": "' + REDACTED + '"'),
    (re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), REDACTED),  # SSN
    (re.compile(r"\b(?:19|20)\d{2}-?(?:0[1-9]|1[0-2])-?(?:0[1-9]|[12]\d|3[01])\b"), REDACTED),  # dates
    (re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"), REDACTED),  # e-mail
    (re.compile(r"\(?\b\d{3}\)?[ .-]?\d{3}[ .-]\d{4}\b"), REDACTED),  # phone
]


def scrub(text: str) -> str:
    for pattern, replacement in _SCRUBBERS:
        text = pattern.sub(replacement, text)
    return text


class RedactedError(Exception):
    """Stands in for an exception whose text was scrubbed before logging."""


class PhiRedactionFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            text = record.msg % record.args if record.args else record.msg
            record.msg, record.args = scrub(text), ()
        elif isinstance(record.msg, dict):
            record.msg = {k: (_scrub_value(v) if k in ALLOWED_EXTRA_KEYS else REDACTED)
                          for k, v in record.msg.items()}
        else:
            record.msg, record.args = scrub(str(record.msg)), ()
        for key in list(vars(record)):
            if key in _STANDARD_ATTRS:
                continue
            record.__dict__[key] = _scrub_value(record.__dict__[key]) if key in ALLOWED_EXTRA_KEYS else REDACTED
        if record.exc_info and record.exc_info[1] is not None:
            exc_type, exc, tb = record.exc_info
            record.exc_info = (RedactedError, RedactedError(f"{exc_type.__name__}: {scrub(str(exc))}"), tb)
            record.exc_text = None
        return True


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_scrub_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _scrub_value(v) for k, v in value.items()}
    return scrub(str(value))
