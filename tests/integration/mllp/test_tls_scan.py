"""A TLS scan of the running bridge (sslyze, with its own OpenSSL that still speaks SSL 2.0 - TLS 1.1):
TLS 1.2 and 1.3 only, and only forward-secret AEAD cipher suites (issue 15)."""

from __future__ import annotations

import asyncio
import re

import pytest

from .conftest import running, settings_for

pytestmark = pytest.mark.integration
sslyze = pytest.importorskip("sslyze")

# Key exchange that is ephemeral (TLS 1.2 names say it; TLS 1.3 suites are always (EC)DHE).
FORWARD_SECRET = re.compile(r"^TLS_(ECDHE|DHE)_|^TLS_(AES_\d+_GCM|CHACHA20_POLY1305|AES_128_CCM(_8)?)_SHA\d+$")
AEAD = re.compile(r"_(AES_\d+_GCM|AES_\d+_CCM(_8)?|CHACHA20_POLY1305)(_SHA\d+)?$")


def scan(port: int) -> dict[str, list[str]]:
    """Accepted cipher suites (IANA names) per protocol version."""
    from sslyze import ScanCommand, Scanner, ServerNetworkLocation, ServerScanRequest, ServerScanStatusEnum

    commands = {ScanCommand.SSL_2_0_CIPHER_SUITES, ScanCommand.SSL_3_0_CIPHER_SUITES,
                ScanCommand.TLS_1_0_CIPHER_SUITES, ScanCommand.TLS_1_1_CIPHER_SUITES,
                ScanCommand.TLS_1_2_CIPHER_SUITES, ScanCommand.TLS_1_3_CIPHER_SUITES}
    scanner = Scanner(per_server_concurrent_connections_limit=4)
    scanner.queue_scans([ServerScanRequest(server_location=ServerNetworkLocation(
        "localhost", port, ip_address="127.0.0.1"), scan_commands=commands)])
    [result] = list(scanner.get_results())
    assert result.scan_status == ServerScanStatusEnum.COMPLETED, result.connectivity_error_trace
    accepted: dict[str, list[str]] = {}
    for command in commands:
        attempt = getattr(result.scan_result, command.value)
        assert attempt.error_trace is None, (command, attempt.error_trace)
        accepted[command.value] = sorted(s.cipher_suite.name for s in attempt.result.accepted_cipher_suites)
    return accepted


def test_bridge_accepts_tls12_and_tls13_with_forward_secret_aead_suites_only(twin, pki, event_loop_impl) -> None:  # type: ignore[no-untyped-def]
    if event_loop_impl != "asyncio":
        pytest.skip("one scan is enough: both loops wrap the same ssl.SSLContext (tls.server_context)")

    async def main() -> dict[str, list[str]]:
        async with running(settings_for(pki), twin) as bridge:
            return await asyncio.get_running_loop().run_in_executor(None, scan, bridge.port)

    accepted = asyncio.run(main())
    for legacy in ("ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites",
                   "tls_1_1_cipher_suites"):
        assert accepted[legacy] == [], legacy
    assert accepted["tls_1_2_cipher_suites"] and accepted["tls_1_3_cipher_suites"]
    for version in ("tls_1_2_cipher_suites", "tls_1_3_cipher_suites"):
        for suite in accepted[version]:
            assert FORWARD_SECRET.search(suite), f"{version}: {suite} is not forward secret"
            assert AEAD.search(suite), f"{version}: {suite} is not AEAD"
    print({k: v for k, v in accepted.items() if v})


def test_the_suite_rules_refuse_what_they_should() -> None:
    for bad in ("TLS_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
                "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA", "TLS_RSA_WITH_AES_256_CBC_SHA"):
        assert not (FORWARD_SECRET.search(bad) and AEAD.search(bad)), bad
    for good in ("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                 "TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"):
        assert FORWARD_SECRET.search(good) and AEAD.search(good), good
