"""`ehrbridge local up` starts moto on 127.0.0.1, creates the same resources CDK defines, and cleans up."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
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
