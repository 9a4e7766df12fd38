"""Lambda packaging without Docker: the layer from wheels for the target runtime, functions as copies,
both with byte-code compiled by an interpreter of the runtime's version when one is on this machine.

The Lambda ``python3.14`` runtime is Amazon Linux 2023 (glibc 2.34) on arm64, so every wheel tag from
``manylinux_2_34_aarch64`` down to ``manylinux2014_aarch64`` (glibc 2.17) runs there. pip takes several
``--platform`` flags and picks the best wheel among them; naming only ``manylinux2014`` misses packages
that publish a new CPython's wheel only as ``manylinux_2_28`` (rapidfuzz for cp314).

After installing, :func:`verify_target` reads every shared object's ELF header and every wheel's tags:
a build with one x86_64 or wrong-ABI binary fails instead of deploying a layer that cannot import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import jsii
from aws_cdk import DockerImage, ILocalBundling

from ehrbridge_infra.constants import LAMBDA_PYTHON_VERSION, LAYER_SOURCE, REPO_ROOT

# AL2023's glibc is 2.34: every manylinux tag from 2.17 up to it runs on the python3.14 runtime. pip does
# not widen a --platform to older glibc tags, so each is named (newest first; rapidfuzz's cp314 wheel is
# tagged manylinux_2_26/2_28 only, others 2_17/2014 only).
LAMBDA_GLIBC_MINOR = 34
LAMBDA_PLATFORMS = (*(f"manylinux_2_{minor}_aarch64" for minor in range(LAMBDA_GLIBC_MINOR, 16, -1)),
                    "manylinux2014_aarch64")
# Provided by the Lambda runtime; keeping them (and what only they pull in) out keeps the layer small.
EXCLUDED_FROM_LAYER = ("boto3", "botocore", "s3transfer", "jmespath", "urllib3", "python-dateutil", "six")
_EXCLUDED_IMPORT_NAMES = ("boto3", "botocore", "s3transfer", "jmespath", "urllib3", "dateutil", "six.py")
# FHIR model packages the code never imports (only R4B): trimming them cuts the layer by ~18 MB.
_FHIR_KEEP = {"R4B", "core", "__pycache__"}
ELF_MACHINE_AARCH64 = 183
REQUIRE_PYC_ENV = "EHRBRIDGE_REQUIRE_PYC"  # "1": fail the build when no runtime-version interpreter exists
RUNTIME_PYTHON_ENV = "EHRBRIDGE_RUNTIME_PYTHON"  # path of a python3.14 to compile byte-code with


class PackagingError(RuntimeError):
    pass


def layer_requirements() -> list[str]:
    """The project's runtime dependencies, less what the Lambda runtime provides."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return [r for r in project["dependencies"] if _dist_name(r) not in EXCLUDED_FROM_LAYER]


def _dist_name(requirement: str) -> str:
    for stop in "[<>=!~; ":
        requirement = requirement.split(stop)[0]
    return requirement.strip().lower()


def pip_command(target: Path, requirements: list[str], python_version: str = LAMBDA_PYTHON_VERSION) -> list[str]:
    platforms = [arg for platform in LAMBDA_PLATFORMS for arg in ("--platform", platform)]
    # --no-compile: pip would write byte-code for *this* interpreter, which the runtime ignores.
    return [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check",
            "--target", str(target), *platforms, "--only-binary=:all:", "--implementation", "cp",
            "--python-version", python_version, *requirements]


@dataclass
class TargetReport:
    shared_objects: list[str] = field(default_factory=list)
    compiled_wheels: dict[str, list[str]] = field(default_factory=dict)  # dist-info -> tags
    problems: list[str] = field(default_factory=list)


def _elf_machine(path: Path) -> tuple[int, int] | None:
    """(EI_CLASS, e_machine) of an ELF file, or None when it is not ELF."""
    with path.open("rb") as handle:
        head = handle.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    byteorder = "little" if head[5] == 1 else "big"
    return head[4], int.from_bytes(head[18:20], byteorder)


def verify_target(root: Path, python_version: str = LAMBDA_PYTHON_VERSION,
                  requirements: list[str] | None = None) -> TargetReport:
    """Every binary in ``root`` is 64-bit aarch64 ELF, every extension module is for this CPython (or abi3),
    and every non-pure wheel was installed from an aarch64 manylinux wheel for it."""
    report = TargetReport()
    cp = "cp" + python_version.replace(".", "")
    abi_tag = f"cpython-{python_version.replace('.', '')}-aarch64-linux-gnu"
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = str(path.relative_to(root))
        is_extension = path.suffix == ".so" or ".so." in path.name
        header = _elf_machine(path) if is_extension or os.access(path, os.X_OK) else None
        if header is None:
            if is_extension:
                report.problems.append(f"{relative}: not an ELF file")
            continue
        report.shared_objects.append(relative)
        if header != (2, ELF_MACHINE_AARCH64):
            report.problems.append(f"{relative}: ELF class/machine {header}, expected 64-bit aarch64")
        if path.suffix == ".so" and ".cpython-" in path.name and abi_tag not in path.name:
            report.problems.append(f"{relative}: extension for another interpreter (expected {abi_tag})")
    installed = {info.name.split("-")[0].lower().replace("_", "-").replace(".", "-")
                 for info in root.glob("*.dist-info")}
    for requirement in requirements or ():
        name = _dist_name(requirement).replace("_", "-").replace(".", "-")
        if name not in installed:
            report.problems.append(f"{requirement}: not installed in the layer")
    for wheel in sorted(root.glob("*.dist-info/WHEEL")):
        lines = wheel.read_text().splitlines()
        if "Root-Is-Purelib: true" in lines:
            continue
        tags = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Tag:")]
        report.compiled_wheels[wheel.parent.name] = tags
        fits = [t for t in tags if _tag_fits(t, cp)]
        if not fits:
            report.problems.append(f"{wheel.parent.name}: wheel tags {tags} do not fit {cp} on {LAMBDA_PLATFORMS}")
    return report


def _tag_fits(tag: str, cp: str) -> bool:
    """``cp314-cp314-<platform>`` or a stable-ABI ``cpXY-abi3-<platform>`` with XY <= the runtime's."""
    interpreter, abi, platform = ([*tag.split("-"), "", "", ""])[:3]
    if platform not in LAMBDA_PLATFORMS or not interpreter.startswith("cp"):
        return False
    if abi == "abi3":
        return int(interpreter[2:] or 0) <= int(cp[2:])
    return interpreter == cp and abi == cp


def find_runtime_python(python_version: str = LAMBDA_PYTHON_VERSION) -> str | None:
    """An interpreter of exactly the runtime's version: byte-code is only valid for the version that wrote it."""
    candidates = [os.environ.get(RUNTIME_PYTHON_ENV), shutil.which(f"python{python_version}")]
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == python_version:
        candidates.insert(0, sys.executable)
    for candidate in candidates:
        if not candidate:
            continue
        try:
            probe = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                   capture_output=True, text=True, check=False, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0 and probe.stdout.strip() == python_version:
            return candidate
    return None


def compile_bytecode(root: Path, python_version: str = LAMBDA_PYTHON_VERSION) -> bool:
    """Write ``__pycache__/*.cpython-314.pyc`` next to the sources (unchecked-hash: valid whatever the
    zip does to mtimes). Lambda's /opt and /var/task are read-only, so without these every cold start
    compiles every imported module again. Returns whether byte-code was written."""
    python = find_runtime_python(python_version)
    if python is None:
        message = (f"no python{python_version} interpreter here: packaging sources without byte-code "
                   f"(set {RUNTIME_PYTHON_ENV} to one; {REQUIRE_PYC_ENV}=1 makes this an error)")
        if os.environ.get(REQUIRE_PYC_ENV) == "1":
            raise PackagingError(message)
        print(f"ehrbridge packaging: {message}", file=sys.stderr)
        return False
    subprocess.run([python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
                    str(root)], check=True)
    return True


def build_layer(output_dir: Path, python_version: str = LAMBDA_PYTHON_VERSION) -> TargetReport:
    """The layer as Lambda mounts it: ``python/`` with the dependencies for the target and our package."""
    target = output_dir / "python"
    requirements = layer_requirements()
    subprocess.run(pip_command(target, requirements, python_version), check=True)
    # Transitive dependencies the runtime provides anyway (botocore alone is ~25 MB), and console scripts.
    for name in (*_EXCLUDED_IMPORT_NAMES, "bin"):
        path = target / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for info in target.glob("*.dist-info"):
        if info.name.split("-")[0].lower().replace("_", "-") in EXCLUDED_FROM_LAYER:
            shutil.rmtree(info)
    shutil.copytree(LAYER_SOURCE / "ehrbridge", target / "ehrbridge",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
    models = target / "fhir" / "resources"
    for child in models.iterdir() if models.exists() else []:
        if child.is_dir() and child.name not in _FHIR_KEEP:
            shutil.rmtree(child)
    report = verify_target(target, python_version, requirements)
    if report.problems:
        raise PackagingError("the layer does not fit the Lambda runtime:\n" + "\n".join(report.problems))
    compile_bytecode(target, python_version)
    return report


@jsii.implements(ILocalBundling)
class PipLayerBundler:
    """CDK local bundling for the layer (no Docker)."""

    def __init__(self, python_version: str = LAMBDA_PYTHON_VERSION) -> None:
        self.python_version = python_version

    def try_bundle(self, output_dir: str, *, image: DockerImage, **_kwargs: object) -> bool:
        build_layer(Path(output_dir), self.python_version)
        return True


@jsii.implements(ILocalBundling)
class FunctionBundler:
    """CDK local bundling for one function directory: a clean copy plus its byte-code."""

    def __init__(self, source: Path, python_version: str = LAMBDA_PYTHON_VERSION) -> None:
        self.source = source
        self.python_version = python_version

    def try_bundle(self, output_dir: str, *, image: DockerImage, **_kwargs: object) -> bool:
        shutil.copytree(self.source, output_dir, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                        dirs_exist_ok=True)
        compile_bytecode(Path(output_dir), self.python_version)
        return True


__all__ = ["LAMBDA_PLATFORMS", "FunctionBundler", "PackagingError", "PipLayerBundler", "build_layer",
           "compile_bytecode", "find_runtime_python", "layer_requirements", "pip_command", "verify_target"]
