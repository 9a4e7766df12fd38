"""Delivers queue messages to the real handler functions the way Lambda's SQS event source mapping does.

What it reproduces: batches of up to ``batch_size`` records in Lambda's record shape, the handler
called with a Lambda-like context, ``batchItemFailures`` honoured (only successes are deleted),
a raised exception fails the whole batch, failed messages come back after the visibility
timeout, and after ``maxReceiveCount`` receives SQS (moto) moves them to the DLQ. FIFO group
ordering is SQS's own: a group stays blocked while its head is in flight.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ehrbridge.observability import logger

Handler = Callable[[dict[str, Any], Any], Any]


@dataclass
class LocalLambdaContext:
    function_name: str
    timeout_s: int = 30
    memory_limit_in_mb: int = 1024
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/local"
    log_stream_name: str = "local"
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_s

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_handler(path: str | Path, name: str = "lambda_handler") -> Handler:
    """Import functions/<fn>/handler.py by path, as Lambda would from the function's code asset."""
    path = Path(path).resolve()
    module_name = f"ehrbridge_fn_{path.parent.name}"
    module: ModuleType | None = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load handler {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return getattr(module, name)


def to_lambda_record(message: dict[str, Any], queue_arn: str, region: str = "us-east-1") -> dict[str, Any]:
    attributes = dict(message.get("Attributes", {}))
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": attributes,
        "messageAttributes": {
            k: {"stringValue": v.get("StringValue"), "dataType": v.get("DataType", "String"),
                "stringListValues": [], "binaryListValues": []}
            for k, v in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


@dataclass
class DeliveryStats:
    invocations: int = 0
    delivered: int = 0
    succeeded: int = 0
    failed: int = 0
    batch_errors: int = 0


class EventSourceMapping:
    def __init__(self, sqs: Any, *, queue_url: str, queue_arn: str, handler: Handler, function_name: str,
                 batch_size: int = 10, timeout_s: int = 30) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.handler = handler
        self.function_name = function_name
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.stats = DeliveryStats()

    def poll_once(self) -> int:
        """One receive + invoke + delete cycle. Returns how many messages were delivered."""
        response = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=self.batch_size, WaitTimeSeconds=0,
            AttributeNames=["All"], MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"])
        messages = response.get("Messages", [])
        if not messages:
            return 0
        event = {"Records": [to_lambda_record(m, self.queue_arn) for m in messages]}
        self.stats.invocations += 1
        self.stats.delivered += len(messages)
        context = LocalLambdaContext(function_name=self.function_name, timeout_s=self.timeout_s)
        try:
            result = self.handler(event, context)
        except Exception as err:  # the whole batch failed: nothing is deleted, all come back
            self.stats.batch_errors += 1
            self.stats.failed += len(messages)
            logger.warning("handler raised; whole batch returns to the queue",
                           extra={"function": self.function_name, "error_type": type(err).__name__,
                                  "batch_size": len(messages)})
            return len(messages)
        failures = {item["itemIdentifier"] for item in (result or {}).get("batchItemFailures", [])}
        done = [m for m in messages if m["MessageId"] not in failures]
        self.stats.failed += len(failures)
        self.stats.succeeded += len(done)
        for start in range(0, len(done), 10):
            chunk = done[start:start + 10]
            self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)])
        return len(messages)

    def depth(self) -> tuple[int, int]:
        attrs = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


class PipelineRunner:
    """Runs several mappings (one per function) until every source queue is empty."""

    def __init__(self, mappings: Iterable[EventSourceMapping]) -> None:
        self.mappings = list(mappings)

    def run_until_drained(self, *, timeout_s: float = 120.0, idle_sleep_s: float = 0.1) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            delivered = sum(mapping.poll_once() for mapping in self.mappings)
            if delivered:
                continue
            if all(mapping.depth() == (0, 0) for mapping in self.mappings):
                return True
            time.sleep(idle_sleep_s)  # messages in flight: wait for their visibility timeout
        return False

    def run_until_stopped(self, stop: threading.Event, *, idle_sleep_s: float = 0.05) -> None:
        """Poll every mapping until ``stop`` is set (``ehrbridge local up --run-functions``).

        One thread delivers to every function in turn, as the demo does: the handlers share Powertools'
        process-wide logger and metrics, which Lambda never runs concurrently in one process. A failed
        poll (the twin restarting, a reset) is logged and retried, so the consumers outlive it.
        """
        while not stop.is_set():
            delivered = 0
            for mapping in self.mappings:
                try:
                    delivered += mapping.poll_once()
                except Exception as err:  # the twin is local and may be restarted under us: keep polling
                    logger.warning("poll failed; retrying", extra={"function": mapping.function_name,
                                                                   "error_type": type(err).__name__})
                    stop.wait(1.0)
            if not delivered:
                stop.wait(idle_sleep_s)
