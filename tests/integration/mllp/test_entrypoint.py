"""bridge/entrypoint.py: TLS material from Secrets Manager (moto) to private files, rotation detection."""

from __future__ import annotations

import importlib.util
import json
import stat
from pathlib import Path

import pytest

from ehrbridge.local.twin import local_client

pytestmark = pytest.mark.integration
ENTRYPOINT = Path(__file__).resolve().parents[3] / "bridge" / "entrypoint.py"


def load_entrypoint(tls_dir: Path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("EHRBRIDGE_MLLP_TLS_DIR", str(tls_dir))
    spec = importlib.util.spec_from_file_location("bridge_entrypoint", ENTRYPOINT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tls_material_is_fetched_and_written_privately(twin, pki, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    sm = local_client("secretsmanager", twin.endpoint)
    material = {"certificate": pki.server.cert.read_text(), "private_key": pki.server.key.read_text(),
                "client_ca": pki.ca.cert.read_text()}
    sm.create_secret(Name="ehrbridge/mllp/tls", SecretString=json.dumps(material))
    entry = load_entrypoint(tmp_path / "tls", monkeypatch)
    fetched = entry.fetch("ehrbridge/mllp/tls")
    paths = entry.write(fetched)
    assert paths["certificate"].read_text() == material["certificate"]
    assert paths["private_key"].read_text() == material["private_key"]
    assert paths["client_ca"].read_text() == material["client_ca"]
    for path in paths.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    rotated = {**material, "certificate": pki.client.cert.read_text()}
    assert entry.digest(rotated) != entry.digest(fetched)


def test_incomplete_secret_is_refused(twin, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    sm = local_client("secretsmanager", twin.endpoint)
    sm.create_secret(Name="ehrbridge/mllp/bad", SecretString=json.dumps({"certificate": "x"}))
    entry = load_entrypoint(tmp_path / "tls", monkeypatch)
    with pytest.raises(SystemExit, match="private_key"):
        entry.fetch("ehrbridge/mllp/bad")
