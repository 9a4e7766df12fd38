"""Alarms and dashboards refer only to series the code writes (issue 15 items 3 and 4).

A CloudWatch metric is its name and its exact dimension set. Every reference in namespace ``ehrbridge``
(plain metrics, Metrics Insights ``SCHEMA(...)`` queries and ``SEARCH`` expressions, in alarms and in
dashboard bodies) must be an entry of ``ehrbridge.observability.names`` with one of its dimension sets;
tests/unit/observability/test_metric_names.py checks that the code emits exactly those.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from ehrbridge import resources
from ehrbridge.observability import names
from tests.infra.conftest import Synth

pytestmark = [pytest.mark.infra, pytest.mark.xdist_group("infra")]

INSIGHTS = re.compile(r'SELECT\s+\w+\("?(\w+)"?\)\s+FROM\s+SCHEMA\("?([\w/]+)"?((?:\s*,\s*\w+)*)\)')
SEARCH = re.compile(r"SEARCH\(\s*'\{([\w/]+)((?:,\w+)*)\}\s+MetricName=\"(\w+)\"")


def _render(value: Any) -> str:
    """A template string with intrinsics replaced by placeholders (enough to parse dashboard bodies)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(_render(p) for p in parts)
    if isinstance(value, dict) and "Ref" in value:
        return f"REF_{value['Ref']}"
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return "GETATT_" + "_".join(value["Fn::GetAtt"])
    raise AssertionError(f"unexpected intrinsic {value!r}")


def _from_expression(expression: str) -> list[tuple[str, str, frozenset[str]]]:
    refs = [(m.group(2), m.group(1), frozenset(d.strip() for d in m.group(3).split(",") if d.strip()))
            for m in INSIGHTS.finditer(expression)]
    refs += [(m.group(1), m.group(3), frozenset(d for d in m.group(2).split(",") if d))
             for m in SEARCH.finditer(expression)]
    assert refs or ("SELECT" not in expression and "SEARCH" not in expression), expression
    return refs


def alarm_references(synth: Synth) -> dict[str, list[tuple[str, str, frozenset[str]]]]:
    out: dict[str, list[tuple[str, str, frozenset[str]]]] = {}
    for logical_id, alarm in synth.resources("AWS::CloudWatch::Alarm").items():
        props = alarm["Properties"]
        refs = []
        if "MetricName" in props:
            refs.append((props["Namespace"], props["MetricName"],
                         frozenset(d["Name"] for d in props.get("Dimensions", []))))
        for query in props.get("Metrics", []):
            if "Expression" in query:
                refs += _from_expression(query["Expression"])
            if "MetricStat" in query:
                metric = query["MetricStat"]["Metric"]
                refs.append((metric["Namespace"], metric["MetricName"],
                             frozenset(d["Name"] for d in metric.get("Dimensions", []))))
        out[logical_id] = refs
    return out


def dashboard_references(synth: Synth) -> dict[str, list[tuple[str, str, frozenset[str]]]]:
    out: dict[str, list[tuple[str, str, frozenset[str]]]] = {}
    for logical_id, dashboard in synth.resources("AWS::CloudWatch::Dashboard").items():
        body = json.loads(_render(dashboard["Properties"]["DashboardBody"]))
        refs = []
        for widget in body["widgets"]:
            for row in widget.get("properties", {}).get("metrics", []):
                options = row[-1] if row and isinstance(row[-1], dict) else {}
                if "expression" in options:
                    refs += _from_expression(options["expression"])
                plain = [c for c in row if isinstance(c, str)]
                if len(plain) >= 2:
                    refs.append((plain[0], plain[1], frozenset(plain[2::2])))
        out[logical_id] = refs
    return out


def _check(where: str, refs: list[tuple[str, str, frozenset[str]]]) -> int:
    checked = 0
    for namespace, metric_name, dims in refs:
        if namespace != names.NAMESPACE:
            assert namespace.startswith("AWS/"), (where, namespace)
            continue
        entry = names.BY_NAME.get(metric_name)
        assert entry is not None, f"{where}: {metric_name} is not in ehrbridge/observability/names.py"
        assert dims in {frozenset(d) for d in entry.dimension_sets}, \
            f"{where}: {metric_name} is never emitted with dimensions {sorted(dims)} ({entry.dimension_sets})"
        checked += 1
    return checked


def test_every_alarm_refers_to_an_emitted_metric_and_dimension_set(synth: Synth) -> None:
    checked = sum(_check(name, refs) for name, refs in alarm_references(synth).items())
    assert checked >= 15


def test_every_dashboard_widget_refers_to_an_emitted_metric_and_dimension_set(synth: Synth) -> None:
    refs = dashboard_references(synth)
    checked = sum(_check(name, r) for name, r in refs.items())
    assert checked >= 30
    assert len(refs) == 2  # overview + tenant


def test_each_widget_holds_at_most_one_metrics_insights_query(synth: Synth) -> None:
    """A widget is one GetMetricData request, and a request takes one Metrics Insights query: a second
    query in the same widget does not render (several SEARCH expressions are fine)."""
    widgets = 0
    for dashboard in synth.resources("AWS::CloudWatch::Dashboard").values():
        body = json.loads(_render(dashboard["Properties"]["DashboardBody"]))
        for widget in body["widgets"]:
            rows = widget.get("properties", {}).get("metrics", [])
            expressions = [row[-1].get("expression", "") for row in rows if row and isinstance(row[-1], dict)]
            widgets += bool(rows)
            assert sum(e.lstrip().upper().startswith("SELECT") for e in expressions) <= 1, widget["properties"]
    assert widgets >= 40


def test_dashboards_cover_the_operations_views(synth: Synth) -> None:
    [overview] = [d for d in synth.resources("AWS::CloudWatch::Dashboard").values()
                  if d["Properties"]["DashboardName"] == "ehrbridge-overview"]
    [tenant] = [d for d in synth.resources("AWS::CloudWatch::Dashboard").values()
                if d["Properties"]["DashboardName"] == "ehrbridge-tenant"]
    for dashboard in (overview, tenant):
        body = _render(dashboard["Properties"]["DashboardBody"])
        for metric in ("ApproximateNumberOfMessagesVisible", "ApproximateAgeOfOldestMessage", "MllpAcks",
                       "MllpAckLatency", "Normalized", "Quarantined", "StageFailed", "IdentityMatchScore",
                       "IdentityReviewBacklog", "TokenLifetimeRemainingRatio"):
            assert metric in body, metric
    tenant_body = json.loads(_render(tenant["Properties"]["DashboardBody"]))
    [variable] = tenant_body["variables"]
    assert variable["type"] == "pattern" and variable["pattern"] == "TENANT_ID"
    # dev's tenant list comes from its tenant YAMLs (infra/stages/dev.yaml -> events/tenants).
    assert {"demo-health", "sandbox-local"} <= {v["value"] for v in variable["values"]}
    assert "tenant = 'TENANT_ID'" in json.dumps(tenant_body)
    overview_text = _render(overview["Properties"]["DashboardBody"])
    # Every queue's depth and age, every DLQ's depth.
    assert overview_text.count("ApproximateAgeOfOldestMessage") >= len(resources.QUEUES)
    assert overview_text.count("ApproximateNumberOfMessagesVisible") >= 2 * len(resources.QUEUES)


def _alarms(synth: Synth, prefix: str) -> dict[str, dict]:
    return {k: v["Properties"] for k, v in synth.resources("AWS::CloudWatch::Alarm").items()
            if k.startswith(prefix)}


def test_every_pipeline_queue_alarms_on_depth_and_age_and_every_dlq_on_depth(synth: Synth) -> None:
    alarms = synth.resources("AWS::CloudWatch::Alarm")
    by_metric: dict[str, list[str]] = {}
    for props in (a["Properties"] for a in alarms.values()):
        if props.get("Namespace") == "AWS/SQS":
            queue = _render(props["Dimensions"][0]["Value"])
            by_metric.setdefault(props["MetricName"], []).append(queue)
    queues = {q["Properties"]["QueueName"]: k for k, q in synth.resources("AWS::SQS::Queue").items()}
    for spec in resources.QUEUES:
        main, dlq = queues[spec.physical_name()], queues[spec.dlq_physical_name()]
        assert any(main in q for q in by_metric["ApproximateNumberOfMessagesVisible"]) == \
            (spec.name != "quarantine"), spec.name
        assert any(main in q for q in by_metric["ApproximateAgeOfOldestMessage"]) == \
            (spec.name != "quarantine"), spec.name
        assert any(dlq in q for q in by_metric["ApproximateNumberOfMessagesVisible"]), spec.name


def test_quarantine_is_a_work_list_alarmed_on_new_items_per_tenant_and_reason(synth: Synth) -> None:
    [alarm] = _alarms(synth, "MonitoringNewQuarantines").values()
    [query] = [m["Expression"] for m in alarm["Metrics"] if "Expression" in m]
    assert 'SUM("Quarantined") FROM SCHEMA("ehrbridge", service, tenant, reason)' in query
    assert "GROUP BY tenant, reason" in query and "LIMIT 1" in query
    assert alarm["Threshold"] >= 1 and alarm["AlarmActions"] and alarm["OKActions"]
    assert "quarantine.md#quarantine-new" in alarm["AlarmDescription"]


def test_token_health_is_judged_against_each_tenants_lifetime(synth: Synth) -> None:
    [alarm] = [a for k, a in _alarms(synth, "TokenRefresh").items() if "TokenAge" in k]
    [query] = [m["Expression"] for m in alarm["Metrics"] if "Expression" in m]
    assert 'MIN("TokenLifetimeRemainingRatio")' in query or "MIN(TokenLifetimeRemainingRatio)" in query
    assert 0 < alarm["Threshold"] < 1 and alarm["ComparisonOperator"] == "LessThanThreshold"


def test_alarm_notifications_can_be_published_to_the_encrypted_topic(synth: Synth) -> None:
    """Item 2: CloudWatch must be allowed to use the topic's key, or every notification is dropped."""
    [topic] = synth.resources("AWS::SNS::Topic").values()
    key_ref = topic["Properties"]["KmsMasterKeyId"]
    key_id = key_ref["Fn::GetAtt"][0] if "Fn::GetAtt" in key_ref else key_ref["Ref"]
    statements = synth.template["Resources"][key_id]["Properties"]["KeyPolicy"]["Statement"]
    allowed = {action for s in statements if s["Effect"] == "Allow"
               and s.get("Principal", {}).get("Service") == "cloudwatch.amazonaws.com"
               for action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert {"kms:Decrypt", "kms:GenerateDataKey*"} <= allowed
    alarms = synth.resources("AWS::CloudWatch::Alarm")
    topic_id = next(iter(synth.resources("AWS::SNS::Topic")))
    assert all({"Ref": topic_id} in a["Properties"]["AlarmActions"] for a in alarms.values())
    # The PHI data key is not the one CloudWatch may use.
    data_keys = [k for k, v in synth.resources("AWS::KMS::Key").items()
                 if "queues, tables" in v["Properties"].get("Description", "")]
    assert data_keys and key_id not in data_keys
