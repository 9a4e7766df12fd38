"""TLS settings and handshake-failure classification."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from ehrbridge.mllp.certs import make_test_pki
from ehrbridge.mllp.tls import cert_days_left, classify_handshake_error, fingerprint, server_context


def test_server_context_is_tls12_plus_and_mtls_when_asked(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path, days=10)
    plain = server_context(pki.server.cert, pki.server.key)
    assert plain.minimum_version == ssl.TLSVersion.TLSv1_2 and plain.verify_mode == ssl.CERT_NONE
    optional = server_context(pki.server.cert, pki.server.key, client_ca=pki.ca.cert)
    assert optional.verify_mode == ssl.CERT_OPTIONAL
    required = server_context(pki.server.cert, pki.server.key, client_ca=pki.ca.cert, require_client_cert=True)
    assert required.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ValueError):
        server_context(pki.server.cert, pki.server.key, require_client_cert=True)
    assert 9.9 < cert_days_left(pki.server.cert) <= 10
    assert len(pki.client.fingerprint) == 64 and fingerprint(None) is None


@pytest.mark.parametrize(("message", "reason"), [
    ("[SSL: UNSUPPORTED_PROTOCOL] unsupported protocol (_ssl.c:1000)", "protocol_version"),
    ("[SSL: TLSV1_ALERT_PROTOCOL_VERSION] tlsv1 alert protocol version", "protocol_version"),
    ("[SSL: WRONG_VERSION_NUMBER] wrong version number", "not_tls"),
    ("[SSL: HTTP_REQUEST] http request", "not_tls"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed", "client_certificate"),
    ("[SSL: PEER_DID_NOT_RETURN_A_CERTIFICATE] peer did not return a certificate", "client_certificate"),
    ("[SSL: NO_SHARED_CIPHER] no shared cipher", "no_shared_cipher"),
])
def test_handshake_errors_are_classified(message: str, reason: str) -> None:
    assert classify_handshake_error(ssl.SSLError(1, message)) == reason


def test_other_failures() -> None:
    assert classify_handshake_error(TimeoutError()) == "timeout"
    assert classify_handshake_error(ConnectionResetError()) == "closed"
    assert classify_handshake_error(OSError("weird")) == "other"
