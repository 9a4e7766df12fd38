"""The FhirPolling construct in the synthesized stack: functions, schedule, queue wiring, roles, alarms,
the per-tenant dashboard."""

from __future__ import annotations

import json

import pytest

from ehrbridge import resources
from tests.infra.conftest import Synth

pytestmark = [pytest.mark.infra, pytest.mark.xdist_group("infra")]


def _function(synth: Synth, name: str) -> tuple[str, dict]:
    found = [(k, v) for k, v in synth.resources("AWS::Lambda::Function").items()
             if v["Properties"].get("FunctionName") == f"ehrbridge-{name.replace('_', '-')}"]
    assert len(found) == 1, name
    return found[0]


def _policy_text(synth: Synth, logical_id: str, function: dict) -> str:
    role = function["Properties"]["Role"]["Fn::GetAtt"][0]
    policies = [p for p in synth.resources("AWS::IAM::Policy").values()
                if any(r.get("Ref") == role for r in p["Properties"]["Roles"])]
    return json.dumps([p["Properties"]["PolicyDocument"] for p in policies])


def test_dispatcher_is_scheduled_and_poller_consumes_poll_jobs(synth: Synth) -> None:
    schedules = [s for s in synth.resources("AWS::Scheduler::Schedule").values()
                 if "poll" in s["Properties"].get("Description", "")]
    assert len(schedules) == 1 and schedules[0]["Properties"]["ScheduleExpression"] == "rate(1 minute)"
    poller_id, poller = _function(synth, "fhir_poller")
    mappings = [m["Properties"] for m in synth.resources("AWS::Lambda::EventSourceMapping").values()
                if m["Properties"]["FunctionName"].get("Ref") == poller_id]
    assert len(mappings) == 1
    assert mappings[0]["BatchSize"] == 1 and mappings[0]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    queues = {q["Properties"]["QueueName"]: q["Properties"] for q in synth.resources("AWS::SQS::Queue").values()}
    jobs = queues[resources.queue("poll-jobs").physical_name()]
    assert jobs["FifoQueue"] is True and "RedrivePolicy" in jobs
    assert resources.queue("poll-jobs").visibility_timeout_s >= 6 * resources.function("fhir_poller").timeout_s
    env = poller["Properties"]["Environment"]["Variables"]
    assert resources.queue("normalize").url_env in env and resources.queue("poll-jobs").url_env in env


def test_roles_are_least_privilege(synth: Synth) -> None:
    poller_id, poller = _function(synth, "fhir_poller")
    text = _policy_text(synth, poller_id, poller)
    assert "secretsmanager:GetSecretValue" in text and "ehrbridge/tenants/*/token-*" in text
    assert "secretsmanager:DeleteSecret" not in text and '"*"' not in text.replace('"Resource": "*"', "")
    dispatcher_id, dispatcher = _function(synth, "poll_dispatcher")
    text = _policy_text(synth, dispatcher_id, dispatcher)
    assert "secretsmanager" not in text and "dynamodb:Scan" in text


def test_alarms_and_a_dashboard_widget_per_alarm(synth: Synth) -> None:
    alarms = {k: v["Properties"] for k, v in synth.resources("AWS::CloudWatch::Alarm").items()
              if "runbooks/polling.md" in v["Properties"].get("AlarmDescription", "")}
    names = {"PollFailedCallRate", "PollLatencyP99", "Poll401Cluster", "PollTypeDenied", "PollStale",
             "PollRosterUnresolved"}
    assert {n for n in names if any(n in k for k in alarms)} == names
    failed = next(v for k, v in alarms.items() if "PollFailedCallRate" in k)
    [query] = [m["Expression"] for m in failed["Metrics"] if "Expression" in m]
    assert query.startswith('SELECT AVG("PollCallFailed") FROM SCHEMA("ehrbridge", service, tenant, endpoint, '
                            "resource_type) GROUP BY tenant ORDER BY AVG() DESC LIMIT 1"), query
    assert failed["Threshold"] == 0.005 and failed["Metrics"][0]["Period"] == 900
    roster = next(v for k, v in alarms.items() if "PollRosterUnresolved" in k)
    [query] = [m["Expression"] for m in roster["Metrics"] if "Expression" in m]
    assert query.startswith('SELECT MAX("PollRosterStuck") FROM SCHEMA("ehrbridge", service, tenant, endpoint, '
                            "resource_type) GROUP BY tenant ORDER BY MAX() DESC LIMIT 1"), query
    assert roster["Threshold"] == 5 and roster["EvaluationPeriods"] == 3 and roster["Metrics"][0]["Period"] == 3600
    assert roster["ComparisonOperator"] == "GreaterThanOrEqualToThreshold" and roster["AlarmActions"]
    assert "runbooks/polling.md#roster-unresolved" in roster["AlarmDescription"]
    p99 = next(v for k, v in alarms.items() if "PollLatencyP99" in k)
    assert p99["ExtendedStatistic"] == "p99" and p99["Threshold"] == 500
    # The series the poller writes: its Lambda's POWERTOOLS_SERVICE_NAME, fleet-wide.
    assert p99["Dimensions"] == [{"Name": "service", "Value": "fhir_poller"}]
    _, poller = _function(synth, "fhir_poller")
    assert poller["Properties"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"] == "fhir_poller"
    # The widgets are a section of the overview and the per-tenant dashboard (no dashboard of their own).
    dashboards = {d["Properties"]["DashboardName"]: json.dumps(d["Properties"]["DashboardBody"])
                  for d in synth.resources("AWS::CloudWatch::Dashboard").values()}
    assert set(dashboards) == {"ehrbridge-overview", "ehrbridge-tenant"}
    for name, body in dashboards.items():
        assert "FHIR polling" in body, name
        for metric in ("PollCallFailed", "PollCallLatency", "PollCall401", "PollTypeDenied", "PollStalenessRatio",
                       "PollFreshnessSeconds", "PollCalls", "PollCall429", "PollCall5xx", "PollRosterStuck",
                       "PollRosterResolved", "PollRosterUnresolved", "PollTypeReprobed", "PollTypeReinstated"):
            assert metric in body, (name, metric)
    tenant = dashboards["ehrbridge-tenant"].replace("\\", "")  # unescape the JSON in JSON
    assert "tenant = 'TENANT_ID'" in tenant and 'tenant="TENANT_ID"' in tenant  # insights and SEARCH
    assert "GROUP BY endpoint, resource_type" in tenant  # calls per endpoint and resource type



def test_roster_expiry_and_reprobe_interval_are_one_setting_on_every_function_that_uses_them(synth: Synth) -> None:
    """The normalizer writes roster entries from ADT, the poller and dispatcher read and refresh them: a
    different expiry on one side would cut entries short, so the stage sets both from one value."""
    from ehrbridge.poll.cursor import ROSTER_EXPIRY_ENV
    from ehrbridge.poll.jobs import REPROBE_ENV
    from ehrbridge_infra.config import load_stage

    stage = load_stage("dev")
    env = {name: _function(synth, name)[1]["Properties"]["Environment"]["Variables"]
           for name in ("normalizer", "fhir_poller", "poll_dispatcher")}
    assert {name: e.get(ROSTER_EXPIRY_ENV) for name, e in env.items()} == dict.fromkeys(
        env, str(stage.roster_expiry_days))
    assert env["fhir_poller"][REPROBE_ENV] == env["poll_dispatcher"][REPROBE_ENV] == str(stage.poll_reprobe_denied_s)
