"""moto made fit for concurrent local traffic: the twin's emulator (never used in the deployed pipeline).

moto's server is a threaded WSGI app whose backends are plain dicts and lists without locks, and its
SQS model recomputes every queue attribute for every message. Measured with
``benchmarks/profile_twin_sqs.py`` (moto 5.2, FIFO queue, batches of 10 x 2 KB, nothing consuming):
500 messages took 17 s at depth 0 and 94 s at depth 1,000-1,500; at depth 2,000 one receive + delete
took 2.4 s. 98 % of the time was ``Queue.attributes``: called 6 times per message sent (validation,
content-based-dedup checks) and once per message received (retention check), each call counting the
queue's messages three times, each message asking moto's datetime-based clock (~13 us) twice.
Concurrent ``TransactWriteItems`` from two bridge workers crashed inside moto's DynamoDB
("dictionary changed size during iteration", HTTP 500).

What this module changes, all inside the emulator process:

- ``TwinDispatcher``: one lock per AWS service around request handling (moto_api, i.e. reset, takes
  them all), so no two requests mutate one service's state at once; SQS long polls give their lock
  up while they wait. Every request, 5xx answer and exception is counted (``GET /_twin/stats``).
- ``patch_dynamodb``: ``TransactWriteItems`` without deep-copying the whole table once per action
  (3,000 items: ~1.5 s per 25-put transaction, growing with the table; the bridge's ACK-store writes
  timed out), the copy that crashed under concurrent writes.
- ``patch_sqs``: queue attributes computed lazily (only the ones asked for; the three message counts
  in one pass with one clock reading), visibility checks on ``time.time``, delete by one scan, and
  FIFO deduplication over SQS's 5-minute window (moto only compares with messages still queued, so a
  message deleted and then resent was delivered twice; SQS drops it).

Patching moto's classes is only ever done in a process that serves the twin (``python -m
ehrbridge.local.emulator`` or ``MotoServer``'s thread); the patches hold for moto >= 5.1, < 6 (pinned).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

from ehrbridge.local.twin import STATS_PATH

DEDUP_WINDOW_S = 300.0  # SQS FIFO: a deduplication id is remembered for 5 minutes after the first send


# ---- FIFO deduplication window -------------------------------------------------------------------
class DedupWindow:
    """The deduplication ids of one FIFO queue seen in the last ``window_s`` seconds (SQS semantics).

    The interval starts at the first accepted send and is not extended by the duplicates it drops;
    deleting or receiving the message does not end it.
    """

    def __init__(self, window_s: float = DEDUP_WINDOW_S) -> None:
        self.window_s = window_s
        self._first_sent: OrderedDict[Hashable, float] = OrderedDict()  # in send order

    def admit(self, key: Hashable, sent_at_s: float) -> bool:
        """True for a new id (now remembered), False for a duplicate inside the window."""
        horizon = sent_at_s - self.window_s
        first = self._first_sent
        while first:
            oldest_key, oldest_at = next(iter(first.items()))
            if oldest_at > horizon:
                break
            del first[oldest_key]
        if key in first:
            return False
        first[key] = sent_at_s
        return True

    def __len__(self) -> int:
        return len(self._first_sent)


# ---- per-service serialization -------------------------------------------------------------------
_held = threading.local()  # the service lock this request thread holds (SQS long polls release it)


@dataclass
class TwinStats:
    requests: dict[str, int] = field(default_factory=dict)
    server_errors: dict[str, int] = field(default_factory=dict)  # 5xx answers per service
    exceptions: dict[str, int] = field(default_factory=dict)  # "<service>:<exception type>"
    lock_wait_ms_max: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"requests": self.requests, "server_errors": self.server_errors,
                           "exceptions": self.exceptions, "lock_wait_ms_max": self.lock_wait_ms_max,
                           "errors_total": sum(self.server_errors.values()) + sum(self.exceptions.values())},
                          sort_keys=True)


def _buffer_body(environ: dict[str, Any]) -> None:
    """Replace a Content-Length request body by its bytes in memory (moto's dispatcher does the same when
    it reads a body to find the service)."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    stream = environ.get("wsgi.input")
    if length > 0 and stream is not None and not isinstance(stream, io.BytesIO):
        environ["wsgi.input"] = io.BytesIO(stream.read(length))


class TwinDispatcher(DomainDispatcherApplication):
    """moto's host/body-based dispatcher with one lock per service around each request."""

    def __init__(self, profile_dir: str | None = None) -> None:
        super().__init__(create_backend_app)
        self.stats = TwinStats()
        # Diagnostics: one cProfile per service, enabled only while its lock is held (one thread at a time).
        self.profile_dir = profile_dir
        self._profiles: dict[str, Any] = {}
        self._stats_lock = threading.Lock()
        self._registry = threading.Lock()  # held while creating a service lock, and by moto_api
        self._locks: dict[str, threading.Lock] = {}

    def _lock_for(self, service: str) -> threading.Lock:
        with self._registry:
            lock = self._locks.get(service)
            if lock is None:
                lock = self._locks[service] = threading.Lock()
            return lock

    def _count(self, table: dict[str, int], key: str) -> None:
        with self._stats_lock:
            table[key] = table.get(key, 0) + 1

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == STATS_PATH:
            with self._stats_lock:
                body = self.stats.to_json().encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        app = self.get_application(environ)
        service = str(getattr(app, "service", "unknown"))
        self._count(self.stats.requests, service)
        status: list[str] = []

        def capture(status_line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status.append(status_line)
            return start_response(status_line, headers, exc_info)

        _buffer_body(environ)  # read the upload before taking the lock: a slow sender must not hold it
        started = time.perf_counter()
        release = self._acquire_all() if service == "moto_api" else self._acquire(service)
        waited_ms = (time.perf_counter() - started) * 1000
        with self._stats_lock:
            if waited_ms > self.stats.lock_wait_ms_max.get(service, 0.0):
                self.stats.lock_wait_ms_max[service] = round(waited_ms, 1)
        profile = self._profile(service)
        try:
            if profile is not None:
                profile.enable()
            result = app(environ, capture)
            try:
                body = b"".join(result)  # produced under the lock: a lazy body would read state after it
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception as err:
            self._count(self.stats.exceptions, f"{service}:{type(err).__name__}")
            raise
        finally:
            if profile is not None:
                profile.disable()
            release()
        if status and status[-1][:1] == "5":
            self._count(self.stats.server_errors, service)
        return [body]

    def _profile(self, service: str) -> Any:
        if not self.profile_dir or service == "moto_api":
            return None
        profile = self._profiles.get(service)
        if profile is None:
            import cProfile

            profile = self._profiles[service] = cProfile.Profile()
        return profile

    def dump_profiles(self) -> None:
        """Write ``<profile_dir>/<service>.prof`` (pstats format) for every profiled service."""
        if not self.profile_dir:
            return
        os.makedirs(self.profile_dir, exist_ok=True)
        for service, profile in list(self._profiles.items()):
            profile.dump_stats(os.path.join(self.profile_dir, f"{service}.prof"))

    def _acquire(self, service: str) -> Callable[[], None]:
        lock = self._lock_for(service)
        lock.acquire()
        _held.lock = lock

        def release() -> None:
            _held.lock = None
            lock.release()

        return release

    def _acquire_all(self) -> Callable[[], None]:
        """Reset and friends touch every backend: hold every service lock, and no new one is made meanwhile."""
        self._registry.acquire()
        locks = [self._locks[name] for name in sorted(self._locks)]
        for lock in locks:
            lock.acquire()

        def release() -> None:
            for lock in reversed(locks):
                lock.release()
            self._registry.release()

        return release


# ---- SQS ---------------------------------------------------------------------------------------
_COUNTS = ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed",
           "ApproximateNumberOfMessagesNotVisible")


def _now_ms() -> float:
    # moto's unix_time_millis() is the same instant via datetime (about 13 us a call).
    return time.time() * 1000.0


def _count_messages(queue: Any) -> dict[str, int]:
    now = _now_ms()
    visible = delayed = not_visible = 0
    for message in queue._messages:
        is_delayed = now < message.delayed_until
        delayed += is_delayed
        if now > message.visible_at:
            visible += not is_delayed
        else:
            not_visible += 1
    return {"ApproximateNumberOfMessages": visible, "ApproximateNumberOfMessagesDelayed": delayed,
            "ApproximateNumberOfMessagesNotVisible": not_visible}


_SNAKE: dict[str, str] = {}  # attribute name -> Queue property (moto's converter is a slow regex loop)


class _QueueAttributes(Mapping[str, Any]):
    """``Queue.attributes`` as moto computes it, one key at a time (the counts only when asked for)."""

    __slots__ = ("_counts", "_keys", "_queue")

    def __init__(self, queue: Any) -> None:
        self._queue = queue
        keys = list(queue.BASE_ATTRIBUTES)
        if queue.fifo_queue:
            keys += queue.FIFO_ATTRIBUTES
        if queue.kms_master_key_id:
            keys += queue.KMS_ATTRIBUTES
        self._keys = keys
        self._counts: dict[str, int] | None = None

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys:
            raise KeyError(key)
        if key in _COUNTS:
            if self._counts is None:
                self._counts = _count_messages(self._queue)
            return self._counts[key]
        name = _SNAKE.get(key)
        if name is None:
            from moto.core.utils import camelcase_to_underscores

            name = _SNAKE[key] = camelcase_to_underscores(key)
        value = getattr(self._queue, name)
        if key == "RedrivePolicy" and value:
            value = json.dumps(value)
        if isinstance(value, bool):
            value = str(value).lower()
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


_patched = False
_patch_lock = threading.Lock()


def patch_sqs() -> None:
    """Replace moto's per-message O(queue depth) paths; idempotent."""
    global _patched
    with _patch_lock:
        if _patched:
            return
        from moto.sqs import models
        from moto.sqs.exceptions import ReceiptHandleIsInvalid

        queue_cls, message_cls = models.Queue, models.Message
        original_add = queue_cls.add_message

        def add_message(self: Any, message: Any) -> None:
            # Only fresh sends are deduplicated (a redrive to the DLQ moves a message that was received).
            if self.fifo_queue and message.deduplication_id and message.approximate_receive_count == 0:
                window = self.__dict__.get("_ehrbridge_dedup")
                if window is None:
                    window = self.__dict__["_ehrbridge_dedup"] = DedupWindow()
                scope = message.group_id if getattr(self, "deduplication_scope", "queue") == "messageGroup" else None
                if not window.admit((scope, message.deduplication_id), (message.sent_timestamp or _now_ms()) / 1000):
                    return
            if self.lambda_event_source_mappings:  # moto's Lambda integration: keep its own path
                original_add(self, message)
                return
            with self._messages_lock:
                self._messages.append(message)
                self._messages_lock.notify_all()

        def delete_message(self: Any, receipt_handle: str) -> None:
            if receipt_handle in self.deleted_messages:
                return  # deleting twice is fine in SQS
            for index, message in enumerate(self._messages):
                if message.receipt_handle == receipt_handle or receipt_handle in message._old_receipt_handles:
                    self._messages = self._messages[:index] + self._messages[index + 1:]
                    self.pending_messages.discard(message)
                    self.deleted_messages.update(message.all_receipt_handles)
                    return
            raise ReceiptHandleIsInvalid()

        def messages(self: Any) -> list[Any]:
            now = _now_ms()
            return [m for m in self._messages if now > m.visible_at and not now < m.delayed_until]

        def wait_for_messages(self: Any, timeout: int) -> None:
            # A long poll must not hold the SQS lock while it waits: senders need it to add the message.
            lock = getattr(_held, "lock", None)
            released = False
            try:
                with self._messages_lock:
                    if messages(self):
                        return
                    if lock is not None:
                        lock.release()
                        released = True
                    self._messages_lock.wait(timeout)
            finally:
                if released:
                    lock.acquire()

        queue_cls.attributes = property(_QueueAttributes)
        queue_cls.messages = property(messages)
        queue_cls.approximate_number_of_messages = property(
            lambda self: _count_messages(self)["ApproximateNumberOfMessages"])
        queue_cls.approximate_number_of_messages_delayed = property(
            lambda self: _count_messages(self)["ApproximateNumberOfMessagesDelayed"])
        queue_cls.approximate_number_of_messages_not_visible = property(
            lambda self: _count_messages(self)["ApproximateNumberOfMessagesNotVisible"])
        queue_cls.add_message = add_message
        queue_cls.delete_message = delete_message
        queue_cls.wait_for_messages = wait_for_messages
        message_cls.visible = property(lambda self: _now_ms() > self.visible_at)
        message_cls.delayed = property(lambda self: _now_ms() < self.delayed_until)
        message_cls.had_receipt_handle = (
            lambda self, handle: handle == self.receipt_handle or handle in self._old_receipt_handles)
        _patched = True


# ---- DynamoDB ------------------------------------------------------------------------------------
_ddb_patched = False


def patch_dynamodb() -> None:
    """``TransactWriteItems`` without a deep copy of the whole table per action (idempotent).

    moto backs up a table before a transaction by deep-copying it once per action naming it: 25
    conditional puts into a table of 3,000 items took ~1.5 s, so the bridge's ACK-store writes timed
    out as the table grew (and the copy, iterating the table while another request thread wrote to
    it, was the "dictionary changed size during iteration" 500). Here every condition is evaluated
    first, nothing is written unless all hold, and the items a transaction touches are remembered one
    by one, so a failure half-way (a validation error) is undone without copying the table. The
    results (cancellation reasons per action, ALL_OLD items) are moto's.
    """
    global _ddb_patched
    with _patch_lock:
        if _ddb_patched:
            return
        import copy

        from moto.dynamodb import models
        from moto.dynamodb.comparisons import get_filter_expression
        from moto.dynamodb.exceptions import (
            ConditionalCheckFailed,
            MockValidationException,
            MultipleTransactionsException,
            TooManyTransactionsException,
            TransactionCanceledException,
            TransactWriteSingleOpException,
        )

        def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
            if len(transact_items) > 100:
                raise TooManyTransactionsException()
            targets: set[tuple[str, str]] = set()
            plans: list[tuple[str, dict[str, Any], str, dict[str, Any]]] = []
            errors: list[tuple[Any, Any, Any]] = []
            for action in transact_items:  # 1: validate and check every condition; nothing written yet
                if len(action) > 1:
                    raise TransactWriteSingleOpException
                original_item = None
                try:
                    op_type, op = next(iter(action.items()))
                    if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
                        raise ValueError("Unsupported transaction operation")
                    table_name = op["TableName"]
                    if op_type == "Put":
                        attrs = op["Item"]
                        table = self.get_table(table_name)
                        key = {table.hash_key_attr: attrs[table.hash_key_attr]}
                        if table.range_key_attr is not None:
                            key[table.range_key_attr] = attrs[table.range_key_attr]
                    else:
                        key = op["Key"]
                    target = (str(table_name), str(dict(sorted(key.items()))))
                    if target in targets:
                        raise MultipleTransactionsException()
                    targets.add(target)
                    current = self.get_item(table_name, key)
                    condition = op.get("ConditionExpression")
                    if condition is not None:
                        check = get_filter_expression(condition, op.get("ExpressionAttributeNames"),
                                                      op.get("ExpressionAttributeValues"))
                        if not check.expr(current):
                            if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                                original_item = current.to_json()["Attributes"]
                            raise ConditionalCheckFailed(item=original_item)
                    plans.append((op_type, op, table_name, key))
                    errors.append((None, None, None))
                except (MultipleTransactionsException, MockValidationException):
                    raise
                except ConditionalCheckFailed as err:
                    errors.append(("ConditionalCheckFailed", str(err.message), original_item))
                except Exception as err:
                    errors.append((type(err).__name__, str(err), original_item))
            if any(code is not None for code, _, _ in errors):
                raise TransactionCanceledException(errors)
            undo: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
            try:  # 2: write, remembering each item as it was
                for op_type, op, table_name, key in plans:
                    if op_type == "ConditionCheck":
                        continue
                    before = self.get_item(table_name, key)
                    undo.append((table_name, key, copy.deepcopy(before.to_json()["Attributes"]) if before else None))
                    expression = {"condition_expression": op.get("ConditionExpression"),
                                  "expression_attribute_names": op.get("ExpressionAttributeNames"),
                                  "expression_attribute_values": op.get("ExpressionAttributeValues")}
                    if op_type == "Put":
                        self.put_item(table_name, op["Item"], **expression)
                    elif op_type == "Delete":
                        self.delete_item(table_name, key, **expression)
                    else:
                        self.update_item(table_name, key, update_expression=op["UpdateExpression"], **expression)
            except Exception as err:
                for table_name, key, attrs in reversed(undo):
                    if attrs is None:
                        self.delete_item(table_name, key)
                    else:
                        self.put_item(table_name, attrs)
                if isinstance(err, MultipleTransactionsException | MockValidationException):
                    raise
                failed_at = len(undo) - 1
                raise TransactionCanceledException(
                    [(type(err).__name__, str(err), None) if index == failed_at else (None, None, None)
                     for index in range(len(plans))]) from err

        models.DynamoDBBackend.transact_write_items = transact_write_items
        _ddb_patched = True


def harden_moto() -> None:
    """Everything the twin needs from moto beyond what it ships with (idempotent)."""
    patch_sqs()
    patch_dynamodb()


# ---- serving ---------------------------------------------------------------------------------
def make_server(host: str = "127.0.0.1", port: int = 0, *, profile_dir: str | None = None) -> Any:
    """A threaded WSGI server running the hardened emulator (call ``serve_forever``; the dispatcher is
    ``server.app``). ``profile_dir``: profile each service's request handling (see ``--profile-dir``)."""
    import logging

    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import make_server as werkzeug_server

    harden_moto()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the dev server logs every request line
    return werkzeug_server(host, port, TwinDispatcher(profile_dir), threaded=True, request_handler=MotoRequestHandler)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """``python -m ehrbridge.local.emulator``: serve on HOST:PORT, print ``ready <port>`` once listening."""
    parser = argparse.ArgumentParser(description="The ehrbridge local twin's emulator (hardened moto server).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--profile-dir", default=os.environ.get("EHRBRIDGE_TWIN_PROFILE_DIR") or None,
                        help="Profile each service's request handling; <dir>/<service>.prof written on exit "
                             "(SIGTERM/SIGINT). Slows the emulator down; for finding where its time goes.")
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port, profile_dir=args.profile_dir)
    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C: close the socket, write the profiles
    port = server.server_address[1]
    os.environ.setdefault("MOTO_PORT", str(port))  # what moto.server sets for URLs it builds
    print(f"ready {port}", flush=True)
    # Nothing else goes to the parent's pipe (a full pipe would block the server).
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.app.dump_profiles()
    return 0


if __name__ == "__main__":  # pragma: no cover - the twin's separate process
    raise SystemExit(main())
