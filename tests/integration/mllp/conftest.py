"""Real TLS sockets on 127.0.0.1 against the moto SQS/S3 of the `twin` fixture."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from ehrbridge.contracts.tenant import MllpSource, TenantConfig
from ehrbridge.mllp import loops
from ehrbridge.mllp.app import AwsTargets, build_bridge
from ehrbridge.mllp.certs import LocalPki, make_test_pki
from ehrbridge.mllp.server import BridgeSettings, MllpBridge
from tests import support
from tests.conftest import CORPUS

ORU = (b"MSH|^~\\&|DEMOLAB|LABFAC|EHRBRIDGE|HOSP|20240102030405||ORU^R01^ORU_R01|{cid}|P|2.5.1\r"
       b"PID|1||MRN{n}^^^MRN^MR||DOE^JANE||19800101|F\r"
       b"OBR|1||ORD{n}|718-7^Hemoglobin^LN\r"
       b"OBX|1|NM|718-7^Hemoglobin^LN||13.{n}|g/dL|12-16|N|||F\r")


def oru(n: int, cid: str | None = None) -> bytes:
    return ORU.replace(b"{cid}", (cid or f"CID{n}").encode()).replace(b"{n}", str(n).encode())


@pytest.fixture(autouse=True, params=["asyncio", "uvloop"])
def event_loop_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every bridge test runs on both event loops: asyncio's own and uvloop (the image's default).

    In-process tests call ``asyncio.run``: it runs on the chosen loop here; a ``bridge serve``
    subprocess gets it through ``EHRBRIDGE_MLLP_LOOP``.
    """
    name = str(request.param)
    if name == "uvloop" and not loops.uvloop_installed():
        pytest.skip("uvloop not installed")
    monkeypatch.setattr("asyncio.run", lambda main, **_: loops.run(main, name))
    monkeypatch.setenv("EHRBRIDGE_MLLP_LOOP", name)
    return name


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    """A second, unrelated CA: its client certificate must be refused."""
    return make_test_pki(tmp_path_factory.mktemp("pki-other"), ca_name="rogue CA", client_name="rogue")


def tenant(fingerprint: str | None = None) -> TenantConfig:
    return TenantConfig(tenant_id="demo-health", vendor="generic", mllp_sources=(
        MllpSource(source_id="demo-lab", sending_application="DEMOLAB", default_charset="ASCII",
                   client_cert_fingerprint=fingerprint),
        MllpSource(source_id="demo-latin", sending_application="LATINLAB", default_charset="8859/1"),
    ))


def settings_for(pki: LocalPki, **overrides: object) -> BridgeSettings:
    base: dict[str, object] = {"certfile": pki.server.cert, "keyfile": pki.server.key, "host": "127.0.0.1",
                               "port": 0, "health_host": "127.0.0.1", "health_port": 0, "drain_timeout_s": 10,
                               "metrics_interval_s": 3600, "ack_timeout_s": 3}
    base.update(overrides)
    return BridgeSettings(**base)  # type: ignore[arg-type]


def targets(twin) -> AwsTargets:  # type: ignore[no-untyped-def]
    return AwsTargets(inbound_queue_url=twin.queues["hl7-inbound"], archive_bucket=twin.buckets["archive"],
                      quarantine_bucket=twin.buckets["quarantine"],
                      quarantine_queue_url=twin.queues["quarantine"], state_table=twin.tables["state"])


@contextlib.asynccontextmanager
async def running(settings: BridgeSettings, twin, tenants: list[TenantConfig] | None = None,  # type: ignore[no-untyped-def]
                  ) -> AsyncIterator[MllpBridge]:
    bridge = build_bridge(settings, tenants or [tenant()], targets(twin))
    await bridge.start()
    try:
        yield bridge
    finally:
        await bridge.drain()
        bridge.committer.sink.close()  # type: ignore[attr-defined]


def drain_queue(twin, name: str = "hl7-inbound") -> list[dict]:  # type: ignore[no-untyped-def]
    return support.drain_queue(twin, name)


def sample(path: str) -> bytes:
    return (CORPUS / path).read_bytes()
