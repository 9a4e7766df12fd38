"""TLS for the bridge: TLS 1.2+ only, optional mutual TLS, client certificate fingerprints."""

from __future__ import annotations

import hashlib
import ssl
from datetime import UTC, datetime
from pathlib import Path

# Forward-secret AEAD suites only for TLS 1.2 (TLS 1.3 suites are fixed by OpenSSL and all good).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_context(certfile: str | Path, keyfile: str | Path, *, client_ca: str | Path | None = None,
                   require_client_cert: bool = False) -> ssl.SSLContext:
    """A server context that refuses TLS < 1.2; with ``client_ca`` it verifies client certificates."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(str(certfile), str(keyfile))
    if client_ca:
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise ValueError("require_client_cert needs a client CA bundle")
    return ctx


def client_context(cafile: str | Path | None = None, *, certfile: str | Path | None = None,
                   keyfile: str | Path | None = None, server_hostname_check: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cafile:
        ctx.load_verify_locations(cafile=str(cafile))
    else:
        ctx.load_default_certs()
    ctx.check_hostname = server_hostname_check
    if certfile:
        ctx.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
    return ctx


def fingerprint(der: bytes | None) -> str | None:
    """SHA-256 of the DER certificate, lower-case hex (the form MllpSource.client_cert_fingerprint uses)."""
    return hashlib.sha256(der).hexdigest() if der else None


def classify_handshake_error(err: BaseException) -> str:
    """A short, PHI-free reason for a failed handshake (a metric dimension)."""
    text = f"{getattr(err, 'reason', '') or ''} {err}".upper()
    if "UNSUPPORTED_PROTOCOL" in text or "PROTOCOL_VERSION" in text or "NO_PROTOCOLS_AVAILABLE" in text \
            or "VERSION_TOO_LOW" in text:
        return "protocol_version"
    if "HTTP_REQUEST" in text or "WRONG_VERSION_NUMBER" in text or "RECORD_LAYER" in text:
        return "not_tls"
    if "CERTIFICATE" in text or "PEER_DID_NOT_RETURN" in text or "UNKNOWN_CA" in text:
        return "client_certificate"
    if "NO_SHARED_CIPHER" in text or "HANDSHAKE_FAILURE" in text:
        return "no_shared_cipher"
    if isinstance(err, TimeoutError) or "TAKING LONGER" in text:
        return "timeout"
    if isinstance(err, ConnectionError | EOFError) or "EOF" in text:
        return "closed"
    return "other"


def cert_days_left(certfile: str | Path) -> float:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(Path(certfile).read_bytes())
    return (cert.not_valid_after_utc - datetime.now(UTC)).total_seconds() / 86400
