"""The one observability module: Logger, Metrics and Tracer are set up here, once.

Conventions (docs/architecture.md): JSON logs with tenant_id / message_id / correlation_id and
never PHI; EMF metrics in namespace ``ehrbridge`` with dimension ``tenant`` plus at most one of
``resource_type``, ``endpoint``, ``message_type``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric

from ehrbridge.observability.phi import PhiRedactionFilter, scrub

NAMESPACE = "ehrbridge"
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "ehrbridge")
SECONDARY_DIMENSIONS = frozenset({"resource_type", "endpoint", "message_type"})

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
tracer = Tracer(service=SERVICE)

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
