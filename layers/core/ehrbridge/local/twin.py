"""The local twin of the AWS pipeline: moto in server mode on 127.0.0.1, provisioned from
ehrbridge.resources (the same definitions the CDK app deploys).
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import boto3

from ehrbridge import resources
from ehrbridge.aws.clients import reset_clients

STATS_PATH = "/_twin/stats"  # served by ehrbridge.local.emulator.TwinDispatcher
LOCAL_REGION = "us-east-1"
LOCAL_ACCOUNT = "123456789012"  # moto's default account id
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_SESSION_TOKEN": "testing"}


class MotoServer:
    """The twin's emulator: moto in server mode, bound to loopback only, hardened for concurrent
    traffic (``ehrbridge.local.emulator``: one lock per service, SQS without its per-message
    slow paths, FIFO deduplication over SQS's 5-minute window).

    By default a thread of this process (fast, used by the demo); with ``separate_process=True`` its
    own process (``python -m ehrbridge.local.emulator``), so tests exercise the same HTTP boundary a
    subprocess (the bridge, the CLI) sees and the emulator gets a core of its own. ``stock=True``
    runs moto exactly as shipped (the load benchmark's baseline).
    """

    def __init__(self, port: int = 0, *, separate_process: bool = False, stock: bool = False) -> None:
        self.port = port
        self.separate_process = separate_process
        self.stock = stock
        self.endpoint = ""
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> MotoServer:
        if self.separate_process:
            self._start_process()
            return self
        if self.stock:
            from moto.server import ThreadedMotoServer

            # The dev server logs every request line to stderr; keep local runs readable.
            logging.getLogger("werkzeug").setLevel(logging.ERROR)
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self._server.start()
            host, port = self._server.get_host_and_port()
        else:
            from ehrbridge.local.emulator import make_server

            self._server = make_server("127.0.0.1", self.port)
            self._thread = threading.Thread(target=self._server.serve_forever, name="ehrbridge-twin", daemon=True)
            self._thread.start()
            host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        return self

    def _start_process(self, attempts: int = 3) -> None:
        if not self.stock:
            self._start_emulator_process()
            return
        for _ in range(attempts):
            port = self.port or _free_port()
            self._process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self._process.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        self.endpoint = f"http://127.0.0.1:{port}"
                        return
                except OSError:
                    time.sleep(0.1)
            self._stop_process()  # port taken between probe and bind, or slow start: try another
        raise RuntimeError("moto server process did not start")

    def _start_emulator_process(self, timeout_s: float = 60.0) -> None:
        # The child binds (port 0: the kernel picks) and then reports its port: no probe-then-bind race.
        self._process = subprocess.Popen(
            [sys.executable, "-m", "ehrbridge.local.emulator", "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], timeout_s)
        line = self._process.stdout.readline().decode("ascii", "replace").split() if ready else []
        self._process.stdout.close()
        if len(line) != 2 or line[0] != "ready":
            self._stop_process()
            raise RuntimeError("the twin's emulator process did not start")
        self.endpoint = f"http://127.0.0.1:{int(line[1])}"

    def stats(self) -> dict[str, Any]:
        """The emulator's request, 5xx and exception counts (hardened emulator only)."""
        with urllib.request.urlopen(f"{self.endpoint}{STATS_PATH}", timeout=10) as response:  # noqa: S310
            return dict(json.loads(response.read()))

    def _stop_process(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._process = None

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - our own loopback moto endpoint
            pass

    def stop(self) -> None:
        if self._server is not None:
            if self.stock:
                self._server.stop()
            else:
                self._server.shutdown()
                self._server.server_close()
                if self._thread is not None:
                    self._thread.join(timeout=10)
                    self._thread = None
            self._server = None
        self._stop_process()

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class TwinResources:
    """What provisioning created; ``env`` is what a function needs to find it."""

    endpoint: str
    prefix: str
    kms_key_id: str
    queues: dict[str, str] = field(default_factory=dict)  # name -> url
    dlqs: dict[str, str] = field(default_factory=dict)
    queue_arns: dict[str, str] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)
    buckets: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": LOCAL_REGION,
               "AWS_REGION": LOCAL_REGION, **LOCAL_CREDENTIALS}
        for name, url in self.queues.items():
            env[resources.queue(name).url_env] = url
        for name, url in self.dlqs.items():
            env[resources.queue(name).dlq_url_env] = url
        for name, physical in self.tables.items():
            env[resources.table(name).name_env] = physical
        for name, physical in self.buckets.items():
            env[resources.bucket(name).name_env] = physical
        return env

    def to_json(self) -> str:
        return json.dumps({"endpoint": self.endpoint, "region": LOCAL_REGION, "prefix": self.prefix,
                           "kms_key_id": self.kms_key_id, "queues": self.queues, "dlqs": self.dlqs,
                           "tables": self.tables, "buckets": self.buckets}, sort_keys=True)


def local_client(service: str, endpoint: str) -> Any:
    # moto accepts any credentials; these fixed dummies keep local runs away from real ones.
    return boto3.client(service, endpoint_url=endpoint, region_name=LOCAL_REGION,  # type: ignore[call-overload]
                        **{k.lower(): v for k, v in LOCAL_CREDENTIALS.items()})


def provision(endpoint: str, *, prefix: str = resources.DEFAULT_PREFIX,
              visibility_timeout_s: int | None = None) -> TwinResources:
    """Create every queue, DLQ, table, bucket and the KMS key from ehrbridge.resources.

    ``visibility_timeout_s`` shortens the deployed visibility timeout so a local run does not
    wait minutes for a failed message to come back; everything else is as deployed.
    """
    kms = local_client("kms", endpoint)
    key_id = kms.create_key(Description="ehrbridge data key", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName=resources.KMS_KEY_ALIAS, TargetKeyId=key_id)
    out = TwinResources(endpoint=endpoint, prefix=prefix, kms_key_id=key_id)

    sqs = local_client("sqs", endpoint)
    for spec in resources.QUEUES:
        common = {"KmsMasterKeyId": key_id, "MessageRetentionPeriod": str(spec.retention_days * 86400)}
        if spec.fifo:
            common["FifoQueue"] = "true"
        dlq_url = sqs.create_queue(QueueName=spec.dlq_physical_name(prefix), Attributes=common)["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        attrs = {**common,
                 "VisibilityTimeout": str(visibility_timeout_s if visibility_timeout_s is not None
                                          else spec.visibility_timeout_s),
                 "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                              "maxReceiveCount": spec.max_receive_count})}
        url = sqs.create_queue(QueueName=spec.physical_name(prefix), Attributes=attrs)["QueueUrl"]
        out.queues[spec.name] = url
        out.dlqs[spec.name] = dlq_url
        out.queue_arns[spec.name] = sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    ddb = local_client("dynamodb", endpoint)
    for spec in resources.TABLES:
        attr_names = {spec.partition_key} | ({spec.sort_key} if spec.sort_key else set())
        key_schema = [{"AttributeName": spec.partition_key, "KeyType": "HASH"}]
        if spec.sort_key:
            key_schema.append({"AttributeName": spec.sort_key, "KeyType": "RANGE"})
        gsis = []
        for index in spec.indexes:
            schema = [{"AttributeName": index.partition_key, "KeyType": "HASH"}]
            attr_names.add(index.partition_key)
            if index.sort_key:
                schema.append({"AttributeName": index.sort_key, "KeyType": "RANGE"})
                attr_names.add(index.sort_key)
            gsis.append({"IndexName": index.name, "KeySchema": schema, "Projection": {"ProjectionType": "ALL"}})
        kwargs: dict[str, Any] = {
            "TableName": spec.physical_name(prefix), "KeySchema": key_schema, "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": [{"AttributeName": a, "AttributeType": "S"} for a in sorted(attr_names)],
            "SSESpecification": {"Enabled": True, "SSEType": "KMS", "KMSMasterKeyId": key_id},
        }
        if gsis:
            kwargs["GlobalSecondaryIndexes"] = gsis
        ddb.create_table(**kwargs)
        if spec.ttl_attribute:
            ddb.update_time_to_live(TableName=spec.physical_name(prefix),
                                    TimeToLiveSpecification={"Enabled": True, "AttributeName": spec.ttl_attribute})
        out.tables[spec.name] = spec.physical_name(prefix)

    s3 = local_client("s3", endpoint)
    for spec in resources.BUCKETS:
        name = spec.physical_name(prefix, LOCAL_ACCOUNT)
        s3.create_bucket(Bucket=name)
        s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": [
            {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_id}}]})
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        out.buckets[spec.name] = name
    return out


def activate(twin: TwinResources) -> None:
    """Point this process (handlers, Powertools, adapters) at the twin."""
    os.environ.update(twin.env)
    # Local runs are not X-Ray traced and idempotency must still run against moto's DynamoDB.
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "1")
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "ehrbridge")
    reset_clients()
