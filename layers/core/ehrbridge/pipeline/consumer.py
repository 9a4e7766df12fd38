"""Consume an SQS FIFO batch: validate envelopes, dedupe, call the stage, report partial failures.

A record's failure fails only its own FIFO message group (skip_group_on_error), so other
patients go on while one patient's later events wait behind the failed one, in order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.batch import SqsFifoPartialProcessor, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from ehrbridge import resources
from ehrbridge.aws.clients import client
from ehrbridge.contracts.envelope import ContractError, Envelope
from ehrbridge.observability import emit_metric, logger

StageHandler = Callable[[Envelope], None]


class PermanentError(Exception):
    """Retrying cannot help (bad contract, unmappable input). The reason is PHI-free."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Consumer:
    """Runs a stage over an SQS event with Powertools' FIFO partial batch processor."""

    def __init__(self, stage_name: str, handle: StageHandler, *, consumes: str,
                 idempotency_table: str | None = None) -> None:
        self.stage_name = stage_name
        self.consumes = consumes
        self._handle = handle
        self._idempotency_table = idempotency_table
        self._idempotent: Callable[..., Any] | None = None

    def _dedupe(self, context: Any) -> Callable[..., Any]:
        if self._idempotent is None:
            if not self._idempotency_table or os.environ.get("POWERTOOLS_IDEMPOTENCY_DISABLED"):
                self._idempotent = lambda envelope: self._handle(envelope)
            else:
                from aws_lambda_powertools.utilities.idempotency import (
                    DynamoDBPersistenceLayer,
                    IdempotencyConfig,
                    idempotent_function,
                )

                config = IdempotencyConfig(event_key_jmespath="message_id", raise_on_no_idempotency_key=True,
                                           expires_after_seconds=resources.IDEMPOTENCY_TTL_S)
                store = DynamoDBPersistenceLayer(table_name=self._idempotency_table,
                                                 boto3_client=client("dynamodb"))

                handle = self._handle

                @idempotent_function(data_keyword_argument="envelope", persistence_store=store, config=config,
                                     key_prefix=f"ehrbridge.{self.stage_name}")
                def run_once(envelope: Envelope) -> dict[str, str]:
                    handle(envelope)
                    return {"status": "done"}

                self._config = config
                self._idempotent = run_once
        if context is not None and hasattr(self, "_config"):
            self._config.register_lambda_context(context)
        return self._idempotent

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        run = self._dedupe(context)
        processor = SqsFifoPartialProcessor(skip_group_on_error=True)

        def record_handler(record: SQSRecord) -> None:
            try:
                envelope = Envelope.parse_json(record.body)
            except ContractError as err:
                # Not retryable: straight to the DLQ with the reason, never silently away.
                self._dead_letter(record, reason=str(err))
                return
            logger.append_keys(tenant_id=envelope.tenant_id, message_id=envelope.message_id,
                               correlation_id=envelope.correlation_id, kind=envelope.kind)
            try:
                run(envelope=envelope)
            except Exception as err:
                emit_metric("StageFailed", tenant=envelope.tenant_id, message_type=envelope.kind)
                logger.warning("stage failed", extra={"stage": self.stage_name,
                                                      "error_type": type(err).__name__})
                raise
            finally:
                logger.remove_keys(["tenant_id", "message_id", "correlation_id", "kind"])

        return process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                        context=context)

    def _dead_letter(self, record: SQSRecord, reason: str) -> None:
        spec = resources.queue(self.consumes)
        dlq = os.environ.get(spec.dlq_url_env)
        logger.error("invalid envelope", extra={"stage": self.stage_name, "reason": reason})
        emit_metric("InvalidEnvelope", tenant="unknown", message_type=self.stage_name)
        if not dlq:
            raise PermanentError(reason)
        attrs = record.attributes
        kwargs: dict[str, Any] = {}
        if dlq.endswith(".fifo"):
            kwargs = {"MessageGroupId": attrs.message_group_id or "invalid",
                      "MessageDeduplicationId": attrs.message_deduplication_id or record.message_id}
        client("sqs").send_message(
            QueueUrl=dlq, MessageBody=record.body,
            MessageAttributes={"reason": {"DataType": "String", "StringValue": reason[:1000]},
                               "stage": {"DataType": "String", "StringValue": self.stage_name}},
            **kwargs)
