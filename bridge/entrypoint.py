"""Container entry point of the MLLP/TLS bridge.

1. Fetch the TLS material from Secrets Manager (``EHRBRIDGE_MLLP_TLS_SECRET_ID``: a JSON secret with
   ``certificate`` (PEM chain), ``private_key`` (PEM) and optionally ``client_ca`` (PEM bundle for
   mutual TLS)) and write it to a private tmpfs directory, mode 0600. Nothing secret goes to the
   environment or the logs.
2. Run ``ehrbridge bridge serve`` as a child, forwarding SIGTERM/SIGINT (the bridge drains).
3. Every ``EHRBRIDGE_MLLP_TLS_REFRESH_S`` seconds re-read the secret; when it changed (rotation),
   rewrite the files and send SIGHUP: the bridge loads the new certificate for new connections
   without dropping the ones it has.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

SECRET_ENV = "EHRBRIDGE_MLLP_TLS_SECRET_ID"  # noqa: S105 - the name of a variable holding a secret id
TLS_DIR = Path(os.environ.get("EHRBRIDGE_MLLP_TLS_DIR", "/run/ehrbridge-tls"))


def log(message: str, **fields: object) -> None:
    print(json.dumps({"level": "INFO", "service": "ehrbridge-bridge", "message": message, **fields}), flush=True)


def fetch(secret_id: str) -> dict[str, str]:
    import boto3

    value = boto3.client("secretsmanager").get_secret_value(SecretId=secret_id)["SecretString"]
    data = json.loads(value)
    if not data.get("certificate") or not data.get("private_key"):
        raise SystemExit("TLS secret must hold 'certificate' and 'private_key' (PEM)")
    return data


def write(material: dict[str, str]) -> dict[str, Path]:
    TLS_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths = {"certificate": TLS_DIR / "server.crt", "private_key": TLS_DIR / "server.key"}
    if material.get("client_ca"):
        paths["client_ca"] = TLS_DIR / "client-ca.pem"
    for name, path in paths.items():
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(material[name])
        tmp.replace(path)  # atomic: the bridge never reads a half-written key
    return paths


def digest(material: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def main() -> int:
    secret_id = os.environ.get(SECRET_ENV)
    env = dict(os.environ)
    current = ""
    if secret_id:
        material = fetch(secret_id)
        paths = write(material)
        current = digest(material)
        env["EHRBRIDGE_MLLP_CERT_FILE"] = str(paths["certificate"])
        env["EHRBRIDGE_MLLP_KEY_FILE"] = str(paths["private_key"])
        if "client_ca" in paths:
            env["EHRBRIDGE_MLLP_CLIENT_CA_FILE"] = str(paths["client_ca"])
        log("tls material loaded", status="mtls" if "client_ca" in paths else "tls")
    child = subprocess.Popen(["ehrbridge", "bridge", "serve", *sys.argv[1:]], env=env)

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)

    stop = threading.Event()
    if secret_id:
        refresh = float(os.environ.get("EHRBRIDGE_MLLP_TLS_REFRESH_S", "3600"))

        def watch() -> None:
            nonlocal current
            while not stop.wait(refresh):
                try:
                    material = fetch(secret_id)
                except Exception as err:  # keep serving with the current certificate
                    log("tls refresh failed", error_type=type(err).__name__)
                    continue
                if digest(material) != current:
                    write(material)
                    current = digest(material)
                    child.send_signal(signal.SIGHUP)
                    log("tls material rotated")

        threading.Thread(target=watch, daemon=True).start()
    code = child.wait()
    stop.set()
    return code


if __name__ == "__main__":
    sys.exit(main())
