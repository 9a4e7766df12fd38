"""CloudWatch references built from ``ehrbridge.observability.names`` only.

A metric is its name plus its exact dimension set; these helpers take a catalogue entry and one of the
dimension sets it is emitted with, so an alarm or a widget cannot refer to a series nobody writes
(tests/infra/test_observability.py checks the synthesized template against the catalogue as well).
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw

from ehrbridge.observability.names import NAMESPACE, MetricName

INSIGHTS_AGGREGATES = ("AVG", "COUNT", "MAX", "MIN", "SUM")
# Replaced by the tenant dashboard's variable (a CloudWatch "pattern" variable rewrites the body).
TENANT_PATTERN = "TENANT_ID"


def dimension_set(metric: MetricName, *, fleet: bool = False, secondary: bool = True) -> tuple[str, ...]:
    """The dimension set to query: per tenant (default) or fleet-wide (bridge metrics only)."""
    for dims in metric.dimension_sets:
        if ("tenant" in dims) == (not fleet) and (metric.secondary in dims) == (secondary and bool(
                metric.secondary)):
            return dims
    raise ValueError(f"{metric.name} is not emitted with fleet={fleet} secondary={secondary}: "
                     f"{metric.dimension_sets}")


def insights(metric: MetricName, aggregate: str, label: str, *, period: cdk.Duration | None = None,
             fleet: bool = False, secondary: bool = True, where: dict[str, str] | None = None,
             group_by: tuple[str, ...] = (), top: int | None = None) -> cw.MathExpression:
    """A Metrics Insights query over every series of one dimension set (tenants are data, not constants)."""
    if aggregate not in INSIGHTS_AGGREGATES:
        raise ValueError(aggregate)
    dims = dimension_set(metric, fleet=fleet, secondary=secondary)
    unknown = (set(where or {}) | set(group_by)) - set(dims)
    if unknown:
        raise ValueError(f"{metric.name} has no dimension {sorted(unknown)} in {dims}")
    query = f'SELECT {aggregate}("{metric.name}") FROM SCHEMA("{NAMESPACE}", {", ".join(dims)})'  # noqa: S608
    if where:
        query += " WHERE " + " AND ".join(f"{key} = '{value}'" for key, value in sorted(where.items()))
    if group_by:
        query += f" GROUP BY {', '.join(group_by)}"
        # One series per group: a dynamic label names each (a fixed label would repeat on every line).
        label = f"{label} " + " ".join(f"${{PROP('Dim.{dim}')}}" for dim in group_by)
    if top is not None:
        query += f" ORDER BY {aggregate}() DESC LIMIT {top}"
    return cw.MathExpression(expression=query, label=label, period=period or cdk.Duration.minutes(5),
                             using_metrics={})


def search(metric: MetricName, statistic: str, label: str, *, period: cdk.Duration | None = None,
           fleet: bool = False, secondary: bool = True, where: dict[str, str] | None = None) -> cw.MathExpression:
    """A SEARCH expression: one series per dimension value, with any statistic (percentiles too)."""
    dims = dimension_set(metric, fleet=fleet, secondary=secondary)
    terms = " ".join(f'{key}="{value}"' for key, value in sorted((where or {}).items()))
    seconds = int((period or cdk.Duration.minutes(5)).to_seconds())
    expression = f"SEARCH('{{{NAMESPACE},{','.join(dims)}}} MetricName=\"{metric.name}\"" + \
        (f" {terms}" if terms else "") + f"', '{statistic}', {seconds})"
    return cw.MathExpression(expression=expression, label=label, period=period or cdk.Duration.minutes(5),
                             using_metrics={})


def search_total(metric: MetricName, statistic: str, label: str, *, period: cdk.Duration | None = None,
                 where: dict[str, str] | None = None) -> cw.MathExpression:
    """One line: the sum of every series a SEARCH finds. Several of these fit in one widget, unlike Metrics
    Insights queries (a widget is one GetMetricData request, and a request takes one Insights query)."""
    found = search(metric, statistic, label, period=period, where=where)
    return cw.MathExpression(expression=f"SUM({found.expression})", label=label, period=found.period,
                             using_metrics={})


def series(metric: MetricName, statistic: str, dimensions: dict[str, str], *, label: str | None = None,
           period: cdk.Duration | None = None) -> cw.Metric:
    """One series; ``dimensions`` must be exactly one of the metric's dimension sets."""
    if tuple(sorted(dimensions)) not in {tuple(sorted(d)) for d in metric.dimension_sets}:
        raise ValueError(f"{metric.name} is not emitted with dimensions {sorted(dimensions)}")
    return cw.Metric(namespace=NAMESPACE, metric_name=metric.name, dimensions_map=dimensions, statistic=statistic,
                     label=label, period=period or cdk.Duration.minutes(5))


__all__ = ["TENANT_PATTERN", "dimension_set", "insights", "search", "search_total", "series"]
