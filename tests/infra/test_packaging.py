"""Issue 15 item 1: the layer is built for the Lambda python3.14 runtime (Amazon Linux 2023, arm64).

The bundled synth builds it exactly as ``make synth`` does (pip --platform, no Docker) and every
compiled file must be aarch64 for CPython 3.14; the unit tests show the checks catch the wrong thing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ehrbridge_infra import packaging
from tests.infra.conftest import Synth

pytestmark = [pytest.mark.infra, pytest.mark.xdist_group("infra")]

# Dependencies with compiled code that the layer needs (each publishes aarch64 manylinux wheels).
COMPILED = ("pydantic_core", "rapidfuzz", "cryptography", "jellyfish", "pyyaml", "cffi", "wrapt", "orjson")


def _elf(path: Path, machine: int, bits64: bool = True) -> None:
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    header[4] = 2 if bits64 else 1
    header[5] = 1
    header[18:20] = machine.to_bytes(2, "little")
    path.write_bytes(bytes(header))


def _wheel(root: Path, dist: str, *tags: str) -> None:
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nRoot-Is-Purelib: false\n" +
                                "".join(f"Tag: {t}\n" for t in tags))


def test_pip_is_asked_for_every_glibc_tag_the_al2023_runtime_runs() -> None:
    command = packaging.pip_command(Path("/tmp/x"), ["rapidfuzz>=3,<4"])
    platforms = [command[i + 1] for i, arg in enumerate(command) if arg == "--platform"]
    # rapidfuzz's cp314 aarch64 wheel is manylinux_2_26/2_28 only; others are 2_17/2014 only.
    for tag in ("manylinux_2_28_aarch64", "manylinux_2_26_aarch64", "manylinux_2_34_aarch64",
                "manylinux_2_17_aarch64", "manylinux2014_aarch64"):
        assert tag in platforms
    assert not any("x86_64" in p or "musllinux" in p or "manylinux_2_35" in p for p in platforms)
    assert command[command.index("--python-version") + 1] == "3.14"
    assert "--only-binary=:all:" in command and "--no-compile" in command


def test_verify_target_refuses_foreign_binaries_and_wheels(tmp_path: Path) -> None:
    _elf(tmp_path / "good.cpython-314-aarch64-linux-gnu.so", 183)
    _elf(tmp_path / "x86.cpython-314-aarch64-linux-gnu.so", 62)
    _elf(tmp_path / "old.cpython-311-aarch64-linux-gnu.so", 183)
    (tmp_path / "fake.so").write_text("not elf")
    _wheel(tmp_path, "okpkg", "cp314-cp314-manylinux_2_28_aarch64")
    _wheel(tmp_path, "abi3pkg", "cp311-abi3-manylinux_2_34_aarch64")
    _wheel(tmp_path, "intel", "cp314-cp314-manylinux_2_17_x86_64")
    _wheel(tmp_path, "newglibc", "cp314-cp314-manylinux_2_39_aarch64")
    problems = "\n".join(packaging.verify_target(tmp_path, requirements=["okpkg>=1", "missing>=2"]).problems)
    assert "x86.cpython" in problems and "old.cpython-311" in problems and "fake.so" in problems
    assert "intel" in problems and "newglibc" in problems and "missing>=2" in problems
    assert "good.cpython" not in problems and "okpkg" not in problems.replace("okpkg>=1", "")
    assert "abi3pkg" not in problems


def test_byte_code_needs_an_interpreter_of_the_runtime_version(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "m.py").write_text("X = 1\n")
    monkeypatch.setenv(packaging.RUNTIME_PYTHON_ENV, "/nonexistent/python")
    python = packaging.find_runtime_python("3.0")  # no interpreter is 3.0
    assert python is None
    monkeypatch.setenv(packaging.REQUIRE_PYC_ENV, "1")
    with pytest.raises(packaging.PackagingError):
        packaging.compile_bytecode(tmp_path, "3.0")
    monkeypatch.delenv(packaging.REQUIRE_PYC_ENV)
    assert packaging.compile_bytecode(tmp_path, "3.0") is False
    assert not list(tmp_path.rglob("*.pyc"))  # never byte-code of another version


def test_byte_code_is_written_by_an_interpreter_of_the_target_version(tmp_path: Path) -> None:
    """The compile path itself, with this interpreter standing in for the runtime's version."""
    import sys

    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("X = 1\n")
    assert packaging.compile_bytecode(tmp_path, version) is True
    [pyc] = list(tmp_path.rglob("*.pyc"))
    assert pyc.name == f"m.cpython-{version.replace('.', '')}.pyc"
    # unchecked-hash: flags word 0b01 (hash-based, do not check the source)
    assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 0b01


def _asset_dir(synth: Synth, s3_key: object) -> Path:
    """The bundled directory behind an S3 key of the template (``<hash>.zip`` -> ``asset.<hash>``)."""
    assert isinstance(s3_key, str), s3_key
    source = synth.assets()[s3_key.removesuffix(".zip")]["source"]["path"]
    path = (synth.template_path.parent / source).resolve()
    assert path.is_dir(), path
    return path


def _layer_dir(synth: Synth) -> Path:
    [layer] = synth.resources("AWS::Lambda::LayerVersion").values()
    return _asset_dir(synth, layer["Properties"]["Content"]["S3Key"])


@pytest.mark.timeout(900)
def test_the_deployed_layer_carries_aarch64_cp314_binaries_only(synth_deployed: Synth) -> None:
    root = _layer_dir(synth_deployed) / "python"
    assert (root / "ehrbridge" / "resources.py").is_file()
    report = packaging.verify_target(root, requirements=packaging.layer_requirements())
    assert report.problems == []
    landed = {name.split("-")[0].lower() for name in report.compiled_wheels}
    assert set(COMPILED) <= landed, landed
    assert any(p.startswith("rapidfuzz/") and "cpython-314-aarch64" in p for p in report.shared_objects)
    assert len(report.shared_objects) >= len(COMPILED)
    # Provided by the runtime, so not shipped; no byte-code of the build machine's interpreter.
    assert not (root / "botocore").exists() and not (root / "boto3").exists()
    foreign = [p for p in root.rglob("*.pyc") if ".cpython-314." not in p.name]
    assert foreign == []
    # Byte-code only when a python3.14 was there to write it, and then for every module.
    if packaging.find_runtime_python() is not None:
        assert (root / "ehrbridge" / "__pycache__" / "resources.cpython-314.pyc").is_file()


@pytest.mark.timeout(900)
def test_functions_are_bundled_copies_without_foreign_byte_code(synth_deployed: Synth) -> None:
    functions = [f for f in synth_deployed.resources("AWS::Lambda::Function").values()
                 if f["Properties"].get("Handler") == "handler.lambda_handler"]
    assert len(functions) >= 4
    for function in functions:
        code = _asset_dir(synth_deployed, function["Properties"]["Code"]["S3Key"])
        assert (code / "handler.py").is_file()
        assert [p for p in code.rglob("*.pyc") if ".cpython-314." not in p.name] == []
        assert function["Properties"]["Architectures"] == ["arm64"]
        assert function["Properties"]["Runtime"] == "python3.14"
    layer = next(iter(synth_deployed.resources("AWS::Lambda::LayerVersion").values()))["Properties"]
    assert layer["CompatibleArchitectures"] == ["arm64"] and layer["CompatibleRuntimes"] == ["python3.14"]
    assert json.dumps(synth_deployed.template).count("cdk-hnb659fds-assets-123456789012-us-east-1") > 0
