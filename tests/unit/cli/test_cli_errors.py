"""Bad input to the CLI gets a one-line error naming the problem and exit 2, never a stack trace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).with_name("ehrbridge"))
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)


def test_invalid_tenant_config_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "t.yaml"
    bad.write_text("tenant_id: NOT VALID!\nvendor: meditech\n")
    result = _run("local", "demo", "--tenant", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "tenant_id" in result.stderr and "vendor" in result.stderr


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = _run("local", "demo", "--tenant", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "missing.yaml" in result.stderr


def test_help_everywhere() -> None:
    for args in (["--help"], ["local", "--help"], ["local", "up", "--help"], ["local", "demo", "--help"]):
        result = _run(*args)
        assert result.returncode == 0 and "Usage" in result.stdout, args
