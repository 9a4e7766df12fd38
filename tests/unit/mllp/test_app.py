"""The bridge creates its AWS clients before it listens, not inside the first message's deadline."""

from __future__ import annotations

from pathlib import Path

import pytest

from ehrbridge.mllp import app


@pytest.mark.parametrize("targets,expected", [
    (app.AwsTargets(inbound_queue_url="q"), ["sqs"]),
    (app.AwsTargets(inbound_queue_url="q", state_table="t"), ["sqs", "dynamodb"]),
    (app.AwsTargets(inbound_queue_url="q", archive_bucket="a", quarantine_bucket="b", quarantine_queue_url="qq",
                    state_table="t"), ["sqs", "dynamodb", "s3"]),
])
def test_warm_clients_creates_each_client_the_targets_need(monkeypatch: pytest.MonkeyPatch,
                                                          targets: app.AwsTargets, expected: list[str]) -> None:
    created: list[str] = []
    monkeypatch.setattr(app, "client", created.append)
    assert app.warm_clients(targets) == expected
    assert created == expected


def test_build_bridge_warms_the_clients_first(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(app, "warm_clients", lambda targets: calls.append(targets.inbound_queue_url))
    monkeypatch.setattr(app, "MllpBridge", lambda *args, **kwargs: "bridge")
    settings = app.BridgeSettings(certfile=Path("cert.pem"), keyfile=Path("key.pem"))
    assert app.build_bridge(settings, [], app.AwsTargets(inbound_queue_url="q")) == "bridge"
    assert calls == ["q"]
