"""Choosing the bridge's event loop: auto picks uvloop when installed, an explicit name must exist."""

from __future__ import annotations

import asyncio

import pytest

from ehrbridge.mllp import loops


def test_auto_prefers_uvloop_and_falls_back_to_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loops, "uvloop_installed", lambda: True)
    assert loops.resolve("auto") == "uvloop"
    monkeypatch.setattr(loops, "uvloop_installed", lambda: False)
    assert loops.resolve("auto") == "asyncio"
    assert loops.loop_factory("auto") is asyncio.new_event_loop


def test_an_explicit_loop_must_be_installed_and_known(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loops, "uvloop_installed", lambda: False)
    with pytest.raises(loops.LoopUnavailable, match="uvloop is not installed"):
        loops.resolve("uvloop")
    with pytest.raises(ValueError, match="unknown event loop 'trio'"):
        loops.resolve("trio")


@pytest.mark.parametrize("name", ["asyncio", "uvloop"])
def test_run_uses_the_chosen_loop(name: str) -> None:
    if name == "uvloop" and not loops.uvloop_installed():
        pytest.skip("uvloop not installed")

    async def which() -> str:
        await asyncio.sleep(0)
        return loops.running_loop_name()

    assert loops.run(which(), name) == name


def test_the_bridge_image_installs_uvloop() -> None:
    """`auto` only means uvloop in production if the image installs the extra that brings it."""
    import tomllib
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    extras = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("uvloop") for dep in extras["bridge"])
    assert "'.[bridge]'" in (repo / "bridge" / "Dockerfile").read_text()
