"""`ehrbridge local up` starts moto on 127.0.0.1, creates the same resources CDK defines, and cleans up."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from ehrbridge import resources

pytestmark = pytest.mark.integration


def test_local_up_prints_endpoints_and_stops_cleanly() -> None:
    exe = str(Path(sys.executable).with_name("ehrbridge"))
    proc = subprocess.Popen([exe, "local", "up", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "AWS_ENDPOINT_URL": ""})
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        info = json.loads(line)
        assert info["endpoint"].startswith("http://127.0.0.1:")
        sqs = boto3.client("sqs", endpoint_url=info["endpoint"], region_name="us-east-1")
        urls = sqs.list_queues()["QueueUrls"]
        for spec in resources.QUEUES:
            assert any(u.endswith("/" + spec.physical_name()) for u in urls)
            assert any(u.endswith("/" + spec.dlq_physical_name()) for u in urls)
        attrs = sqs.get_queue_attributes(QueueUrl=info["queues"]["normalize"], AttributeNames=["All"])["Attributes"]
        assert json.loads(attrs["RedrivePolicy"])["maxReceiveCount"] == 5 and attrs["KmsMasterKeyId"]
        ddb = boto3.client("dynamodb", endpoint_url=info["endpoint"], region_name="us-east-1")
        assert set(info["tables"].values()) <= set(ddb.list_tables()["TableNames"])
        assert info["env"][resources.queue("identity").url_env] == info["queues"]["identity"]
        port = int(info["endpoint"].rsplit(":", 1)[1])
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_local_up_with_functions_delivers_bridge_traffic_to_the_lake(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from ehrbridge.aws.clients import reset_clients
    from ehrbridge.contracts.tenant import TenantConfig
    from ehrbridge.mllp.local import feed_files

    repo = Path(__file__).resolve().parents[3]
    exe = str(Path(sys.executable).with_name("ehrbridge"))
    proc = subprocess.Popen([exe, "local", "up", "--json", "--run-functions", "--visibility-timeout", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "AWS_ENDPOINT_URL": ""})
    try:
        info = json.loads(proc.stdout.readline() if proc.stdout else "")
        assert info["functions"] is True and info["tenants"] == ["demo-health"]
        for key, value in info["env"].items():
            monkeypatch.setenv(key, value)
        reset_clients()
        tenant = TenantConfig.from_yaml(repo / "events" / "tenants" / "demo-health.yaml")
        # The bridge (in this process) commits to the twin's hl7-inbound; the CLI's consumers take it from there.
        codes = feed_files([repo / "events" / "hl7" / "oru_r01_chem7.hl7"], tenant=tenant,
                           queue_url=info["queues"]["hl7-inbound"])
        assert codes in (["AA"], ["CA"])  # original or enhanced mode (the sample asks for an accept ACK)
        s3 = boto3.client("s3", endpoint_url=info["endpoint"], region_name="us-east-1")
        deadline = time.monotonic() + 90
        keys: list[str] = []
        while not keys and time.monotonic() < deadline:
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket=info["buckets"]["lake"]).get("Contents", [])]
            time.sleep(0.5)
        assert keys and all(key.startswith("lake/") for key in keys)
        assert Path(info["log_file"]).stat().st_size > 0  # the functions' logs, not the CLI's stdout
    finally:
        reset_clients()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
