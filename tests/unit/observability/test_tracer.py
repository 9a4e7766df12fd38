from __future__ import annotations

import subprocess
import sys

import pytest

from ehrbridge.observability import LazyTracer


def test_tracer_is_a_passthrough_unless_the_xray_sdk_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EHRBRIDGE_XRAY_SDK", raising=False)
    tracer = LazyTracer("t")

    @tracer.capture_lambda_handler(capture_response=False)
    def handler(event: dict, context: object) -> dict:
        return {"echo": event["x"]}

    assert handler({"x": 1}, None) == {"echo": 1}
    assert tracer.real() is None


def test_tracer_wraps_with_powertools_when_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EHRBRIDGE_XRAY_SDK", "1")
    monkeypatch.delenv("POWERTOOLS_TRACE_DISABLED", raising=False)
    tracer = LazyTracer("t")

    @tracer.capture_lambda_handler()
    def handler(event: dict, context: object) -> str:
        return "ok"

    assert handler({}, None) == "ok"
    from aws_lambda_powertools import Tracer

    assert isinstance(tracer.real(), Tracer)


def test_importing_observability_does_not_load_the_xray_sdk() -> None:
    code = "import sys, ehrbridge.observability; print('aws_xray_sdk' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
