"""Throwaway certificates (ECDSA P-256) for the local demo, the tests and the benchmark.

Production certificates come from Secrets Manager (see bridge/entrypoint.py); nothing here is
used in a deployment.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path

    @property
    def fingerprint(self) -> str:
        from ehrbridge.mllp.tls import fingerprint

        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        return fingerprint(cert.public_bytes(serialization.Encoding.DER)) or ""


@dataclass(frozen=True)
class LocalPki:
    ca: CertPair
    server: CertPair
    client: CertPair


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> CertPair:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return CertPair(cert_path, key_path)


def _issue(subject: str, issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey, *, server: bool,
           days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def make_ca(directory: Path, name: str = "ehrbridge local CA", days: int = 2) -> tuple[CertPair, x509.Certificate,
                                                                                         ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    stem = name.replace(" ", "-")
    return _write(directory, stem, cert, key), cert, key


def make_test_pki(directory: Path, *, days: int = 2, ca_name: str = "ehrbridge local CA",
                  client_name: str = "demo-lab") -> LocalPki:
    """A CA, a server certificate for localhost/127.0.0.1 and one client certificate, written as PEM."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_pair, ca_cert, ca_key = make_ca(directory, ca_name, days)
    server_cert, server_key = _issue("localhost", ca_cert.subject, ca_key, server=True, days=days)
    client_cert, client_key = _issue(client_name, ca_cert.subject, ca_key, server=False, days=days)
    return LocalPki(ca=ca_pair, server=_write(directory, "server", server_cert, server_key),
                   client=_write(directory, f"client-{client_name}", client_cert, client_key))
