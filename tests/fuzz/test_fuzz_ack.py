"""Fuzz: the ACK builder. For any bytes a sender may frame, whatever header can be read (or recovered),
for every ACK code, with or without an error: ``build_ack`` never raises, the ACK decodes in the
character set it declares (always an ASCII-compatible one we support; plain ASCII when the sender's is
refused), python-hl7 parses it, MSA-1 is the code, and MSA-2 is the sender's MSH-10 whenever that is
readable (printable ASCII; trailing blanks are not significant in an ST value)."""

from __future__ import annotations

import hl7
from hypothesis import given
from hypothesis import strategies as st

from ehrbridge.hl7 import wire
from ehrbridge.mllp.ack import ERROR_TEXT, AckError, build_ack, fallback_header

from . import stats
from .strategies import TEXT, hl7_inputs

TARGET = "ack_builder"
_errors = st.none() | st.builds(AckError, st.sampled_from(sorted(ERROR_TEXT)),
                                st.sampled_from(TEXT) | st.text(max_size=30),
                                st.none() | st.tuples(st.sampled_from(["MSH", "PID", ""]), st.integers(0, 9),
                                                      st.integers(0, 30)))


def _declared_codec(payload: bytes, default: str) -> str:
    msh = payload.split(b"\r", 1)[0].decode("ascii", errors="replace")
    fields = msh.split(msh[3]) if len(msh) > 3 else []
    declared = fields[17].split("~")[0] if len(fields) > 17 else ""
    return wire.codec_for(declared, default)  # raises if the ACK declares something we would refuse


@given(hl7_inputs(), st.sampled_from(["AA", "AE", "AR", "CA", "CE", "CR"]), _errors,
       st.sampled_from(["ASCII", "8859/1", "UNICODE UTF-8"]))
def test_ack_builder_never_fails_and_is_always_readable(inputs: list[bytes], code: str, error: AckError | None,
                                                        default: str) -> None:
    for data in inputs:
        _one(data, code, error, default)


def _one(data: bytes, code: str, error: AckError | None, default: str) -> None:
    stats.count(TARGET, "inputs")
    try:
        try:
            header = wire.read_msh(data)
        except wire.WireError:
            header = fallback_header(data)
            stats.count(TARGET, "fallback_headers")
        ack = build_ack(header, code, error, default_charset=default)
        assert ack.code == code
        codec = _declared_codec(ack.payload, default)
        if error is not None or not wire.is_supported_charset(header.charset or default):
            # A refusal (or a sender charset we refuse) is answered in an ASCII-compatible charset we support.
            assert ack.payload.decode(codec).encode(codec) == ack.payload
        try:
            parsed = hl7.parse(ack.payload.decode(codec))
            msa = parsed.segment("MSA")
        except Exception:
            stats.count(TARGET, "ack_unparseable")
            raise
        assert str(msa[1]) == code
        # MSH-10 is ST: trailing blanks are not significant (python-hl7 drops them from the last field).
        control = header.control_id.rstrip()
        if control and control.isascii() and control.isprintable():
            stats.count(TARGET, "msa2_checked")
            assert str(msa[2]).rstrip() == control
    except AssertionError:
        raise
    except Exception:
        stats.count(TARGET, "uncaught_exceptions")
        raise
