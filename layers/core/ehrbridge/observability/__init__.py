"""The one observability module: Logger, Metrics and Tracer are set up here, once.

Conventions (docs/architecture.md): JSON logs with tenant_id / message_id / correlation_id and
never PHI; EMF metrics in namespace ``ehrbridge`` with dimension ``tenant`` plus at most one of
``resource_type``, ``endpoint``, ``message_type``, ``reason``. Names and dimension sets: ``names``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import perf_counter
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric

from ehrbridge.observability.names import NAMESPACE, SECONDARY_DIMENSIONS
from ehrbridge.observability.phi import PhiRedactionFilter, scrub

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "ehrbridge")


class LazyTracer:
    """Powertools Tracer, only when X-Ray SDK subsegments are wanted (``EHRBRIDGE_XRAY_SDK=1``).

    Importing the X-Ray SDK costs ~150 ms of every cold start, a third of the normalizer's budget.
    Lambda's active tracing (set in CDK) still records every invocation without it; the SDK adds
    per-call subsegments, worth switching on while investigating latency.
    """

    def __init__(self, service: str) -> None:
        self.service = service
        self._tracer: Any = None

    @property
    def enabled(self) -> bool:
        return os.environ.get("EHRBRIDGE_XRAY_SDK", "0") == "1" and \
            os.environ.get("POWERTOOLS_TRACE_DISABLED", "0").lower() not in ("1", "true")

    def real(self) -> Any:
        if self._tracer is None and self.enabled:
            from aws_lambda_powertools import Tracer

            self._tracer = Tracer(service=self.service)
        return self._tracer

    def capture_lambda_handler(self, capture_response: bool = False
                               ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorate(handler: Callable[..., Any]) -> Callable[..., Any]:
            traced: list[Callable[..., Any]] = []

            @functools.wraps(handler)
            def wrapper(event: Any, context: Any) -> Any:
                real = self.real()
                if real is None:
                    return handler(event, context)
                if not traced:
                    traced.append(real.capture_lambda_handler(handler, capture_response=capture_response))
                return traced[0](event, context)

            return wrapper

        return decorate


logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
tracer = LazyTracer(service=SERVICE)

_phi_filter = PhiRedactionFilter()
logger.addFilter(_phi_filter)
for _handler in logger.handlers:
    _handler.addFilter(_phi_filter)
# Library debug logs can carry request bodies (queue messages, i.e. PHI): keep them quiet.
for _noisy in ("botocore", "boto3", "urllib3", "httpx", "httpcore", "s3transfer", "werkzeug"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


def emit_metric(name: str, *, tenant: str, value: float = 1.0, unit: MetricUnit = MetricUnit.Count,
                high_resolution: bool = False, **dimension: str) -> None:
    """Emit one metric now with dimensions tenant [+ one secondary], as EMF on stdout.

    A batch can mix tenants, so each emission carries its own dimension set instead of the
    function-wide ``metrics`` object. Ids (MRN, message id) are never dimensions.
    """
    if len(dimension) > 1 or not set(dimension) <= SECONDARY_DIMENSIONS:
        raise ValueError(f"at most one secondary dimension of {sorted(SECONDARY_DIMENSIONS)}")
    resolution = 1 if high_resolution else 60
    with single_metric(name=name, unit=unit, value=value, namespace=NAMESPACE,
                       resolution=resolution) as metric:  # type: ignore[arg-type]
        metric.add_dimension(name="service", value=SERVICE)
        metric.add_dimension(name="tenant", value=tenant)
        for key, dim_value in dimension.items():
            metric.add_dimension(name=key, value=dim_value)


@contextmanager
def timed(name: str, *, tenant: str, **dimension: str) -> Iterator[None]:
    """Time a block in milliseconds as a metric (every external call is counted and timed)."""
    start = perf_counter()
    try:
        yield
    finally:
        emit_metric(name, tenant=tenant, value=(perf_counter() - start) * 1000,
                    unit=MetricUnit.Milliseconds, **dimension)


__all__ = ["MetricUnit", "emit_metric", "logger", "metrics", "scrub", "timed", "tracer"]
