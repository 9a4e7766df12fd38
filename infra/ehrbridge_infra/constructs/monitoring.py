"""Queue health alarms, the quarantine work-list alarm, and the dashboards (overview + per tenant).

Alarms (each names its runbook section; tests/infra checks the sections exist):
- every pipeline queue: depth (messages waiting) and age of the oldest message;
- every DLQ: depth >= 1;
- ``quarantine.fifo`` is a work list for people, not a pipeline stage: nothing consumes it, so depth and
  age say nothing about health. The alarm is on *new* quarantines, per tenant and reason
  (``Quarantined``, dimensions service, tenant, reason), worst (tenant, reason) first.

Dashboards: ``<prefix>-overview`` (fleet) and ``<prefix>-tenant`` (one tenant at a time, chosen with a
dashboard variable whose values come from the stage's tenant list, or from the tenants seen in metrics).
Capabilities add their own widgets with :meth:`PipelineMonitoring.add_section` — e.g. the FHIR-call
widgets of the polling construct (calls by outcome per endpoint and resource type, latency p50/p99,
failed-call rate, 401s, denied types, freshness per resource type).
"""

from __future__ import annotations

from collections.abc import Sequence

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from constructs import Construct

from ehrbridge import resources as spec
from ehrbridge.observability import names
from ehrbridge_infra.constructs.core import CoreResources
from ehrbridge_infra.observability import TENANT_PATTERN, insights, search, search_total, series

# A message older than this in a pipeline queue means a stage is stuck or failing.
QUEUE_AGE_ALARM_S = 900
# Messages waiting, sustained for 15 minutes: consumers are not keeping up (throttled, failing, too few).
QUEUE_DEPTH_ALARM = {"hl7-inbound": 5000, "normalize": 5000, "identity": 5000, "poll-jobs": 2000}
DEFAULT_QUEUE_DEPTH_ALARM = 1000
# New quarantines for one (tenant, reason) in 5 minutes; 1 = every new item of work notifies.
NEW_QUARANTINES_ALARM = 1
WORK_LIST_QUEUES = frozenset({"quarantine"})  # consumed by people (ehrbridge quarantine ...), not functions
BRIDGE_SERVICE = "mllp-bridge"
RUNBOOK = "docs/runbooks/alarms.md"


class PipelineMonitoring(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, core: CoreResources,
                 tenants: Sequence[str] = ()) -> None:
        super().__init__(scope, construct_id)
        self.core = core
        self.action = cw_actions.SnsAction(core.alarm_topic)
        self.alarms: list[cw.Alarm] = []
        self._queue_alarms()
        self._quarantine_alarm()

        variable = cw.DashboardVariable(
            id="tenant", label="Tenant", type=cw.VariableType.PATTERN, value=TENANT_PATTERN,
            input_type=cw.VariableInputType.SELECT,
            values=cw.Values.from_values(*(cw.VariableValue(value=t) for t in tenants)) if tenants else
            # Every tenant, HL7 or FHIR, passes the normalizer: the tenants seen there in the last hours.
            cw.Values.from_search(f'{{{names.NAMESPACE},service,tenant,message_type}} '
                                  f'MetricName="{names.NORMALIZED.name}"', "tenant"),
            default_value=cw.DefaultValue.value(tenants[0]) if tenants else cw.DefaultValue.FIRST)
        self.overview = cw.Dashboard(self, "Overview", dashboard_name=f"{core.prefix}-overview",
                                     default_interval=cdk.Duration.hours(3))
        self.tenant_dashboard = cw.Dashboard(self, "Tenant", dashboard_name=f"{core.prefix}-tenant",
                                             default_interval=cdk.Duration.hours(3), variables=[variable])
        self.add_section("Queues (shared by all tenants)", overview=self._queue_widgets(),
                         tenant=self._queue_widgets())
        self.add_section("MLLP bridge", overview=self._bridge_widgets(tenant=None),
                         tenant=self._bridge_widgets(tenant=TENANT_PATTERN))
        self.add_section("Normalization and quarantine", overview=self._pipeline_widgets(tenant=None),
                         tenant=self._pipeline_widgets(tenant=TENANT_PATTERN))
        self.add_section("Patient identity", overview=self._identity_widgets(tenant=None),
                         tenant=self._identity_widgets(tenant=TENANT_PATTERN))
        self.add_section("SMART tokens", overview=self._token_widgets(tenant=None),
                         tenant=self._token_widgets(tenant=TENANT_PATTERN))

    # ---- the place other constructs wire their widgets -------------------------------------------
    def add_section(self, title: str, *, overview: Sequence[cw.IWidget] = (),
                    tenant: Sequence[cw.IWidget] = ()) -> None:
        """A titled row of widgets on the overview and/or the tenant dashboard.

        Tenant widgets filter on ``TENANT_PATTERN`` (``ehrbridge_infra.observability``); the dashboard
        variable replaces it with the chosen tenant. Build queries with ``insights``/``search``/``series``
        so they refer to names and dimension sets from ``ehrbridge.observability.names``.
        """
        for dashboard, widgets in ((self.overview, overview), (self.tenant_dashboard, tenant)):
            if widgets:
                dashboard.add_widgets(cw.TextWidget(markdown=f"## {title}", width=24, height=1))
                dashboard.add_widgets(*widgets)

    def alarm(self, alarm: cw.Alarm) -> cw.Alarm:
        alarm.add_alarm_action(self.action)
        self.alarms.append(alarm)
        return alarm

    # ---- alarms ---------------------------------------------------------------------------------
    def _queue_alarms(self) -> None:
        for queue_spec in spec.QUEUES:
            name = queue_spec.name
            queue, dlq = self.core.queues[name], self.core.dlqs[name]
            self.alarm(dlq.metric_approximate_number_of_messages_visible(
                period=cdk.Duration.minutes(1), statistic="Maximum").create_alarm(
                self, f"DlqDepth-{name}", threshold=1, evaluation_periods=1,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                alarm_description=f"Messages in the {name} DLQ (runbook: docs/runbooks/dlq-redrive.md#triage)"))
            if name in WORK_LIST_QUEUES:
                continue
            self.alarm(queue.metric_approximate_age_of_oldest_message(
                period=cdk.Duration.minutes(1), statistic="Maximum").create_alarm(
                self, f"QueueAge-{name}", threshold=QUEUE_AGE_ALARM_S, evaluation_periods=5,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                alarm_description=f"Oldest {name} message older than {QUEUE_AGE_ALARM_S}s "
                                  f"(runbook: {RUNBOOK}#queue-age)"))
            depth = QUEUE_DEPTH_ALARM.get(name, DEFAULT_QUEUE_DEPTH_ALARM)
            self.alarm(queue.metric_approximate_number_of_messages_visible(
                period=cdk.Duration.minutes(5), statistic="Minimum").create_alarm(
                self, f"QueueDepth-{name}", threshold=depth, evaluation_periods=3,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                alarm_description=f"{depth}+ messages waiting in {name} for 15 minutes "
                                  f"(runbook: {RUNBOOK}#queue-depth)"))

    def _quarantine_alarm(self) -> None:
        worst = insights(names.QUARANTINED, "SUM", "new quarantines of the worst (tenant, reason)",
                         group_by=("tenant", "reason"), top=1)
        self.new_quarantines_alarm = self.alarm(cw.Alarm(
            self, "NewQuarantines", metric=worst, threshold=NEW_QUARANTINES_ALARM, evaluation_periods=1,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            alarm_description="New quarantined messages for a tenant and reason: work for the data steward "
                              "(runbook: docs/runbooks/quarantine.md#quarantine-new)"))
        self.new_quarantines_alarm.add_ok_action(self.action)

    # ---- widgets --------------------------------------------------------------------------------
    def _queue_widgets(self) -> list[cw.IWidget]:
        minute = cdk.Duration.minutes(1)
        queues = [self.core.queues[q.name] for q in spec.QUEUES]
        dlqs = [self.core.dlqs[q.name] for q in spec.QUEUES]
        return [
            cw.GraphWidget(title="Queue depth (visible messages)", width=8, left=[
                q.metric_approximate_number_of_messages_visible(period=minute, statistic="Maximum",
                                                                label=s.name)
                for q, s in zip(queues, spec.QUEUES, strict=True)]),
            cw.GraphWidget(title="Age of the oldest message (s)", width=8, left=[
                q.metric_approximate_age_of_oldest_message(period=minute, statistic="Maximum", label=s.name)
                for q, s in zip(queues, spec.QUEUES, strict=True)]),
            cw.GraphWidget(title="DLQ depth", width=8, left=[
                q.metric_approximate_number_of_messages_visible(period=minute, statistic="Maximum",
                                                                label=f"{s.name} DLQ")
                for q, s in zip(dlqs, spec.QUEUES, strict=True)]),
        ]

    @staticmethod
    def _where(tenant: str | None, **extra: str) -> dict[str, str]:
        return {**({"tenant": tenant} if tenant else {}), **extra}

    def _bridge_widgets(self, tenant: str | None) -> list[cw.IWidget]:
        fleet = tenant is None
        where = {"service": BRIDGE_SERVICE, **self._where(tenant)}
        acks = insights(names.MLLP_ACKS, "SUM", "ACKs by code", fleet=fleet, where=where,
                        group_by=("message_type",))
        messages = insights(names.MLLP_MESSAGES, "SUM", "messages by type", fleet=fleet, where=where,
                            group_by=("message_type",))
        latency_dims = {"service": BRIDGE_SERVICE, **self._where(tenant)}
        latency = [series(names.MLLP_ACK_LATENCY, stat, latency_dims, label=f"ACK latency {stat} (ms)")
                   for stat in ("p50", "p99")]
        return [cw.GraphWidget(title="HL7 ACKs by code (AA/CA accepted; AE/AR/CE/CR refused)", width=8,
                               left=[acks], stacked=True),
                cw.GraphWidget(title="ACK latency p50 / p99 (ms)", width=8, left=latency),
                cw.GraphWidget(title="HL7 messages received by type", width=8, left=[messages])]

    def _pipeline_widgets(self, tenant: str | None) -> list[cw.IWidget]:
        where = self._where(tenant)
        by = ("tenant",) if tenant is None else ("message_type",)
        normalized = insights(names.NORMALIZED, "SUM", "normalized", where=where, group_by=by)
        unmapped = insights(names.UNMAPPED_SEGMENTS, "SUM", "unmapped segments", where=where, group_by=by)
        repairs = insights(names.CODE_REPAIRS, "SUM", "code repairs", where=where, group_by=by)
        quarantined = insights(names.QUARANTINED, "SUM", "quarantined", where=where,
                               group_by=("tenant", "reason") if tenant is None else ("reason",))
        # The fixed "stage failures" widget: per emitting service over the dimension set actually written.
        failed = insights(names.STAGE_FAILED, "SUM", "stage failures", where=where, group_by=("service",))
        invalid = insights(names.INVALID_ENVELOPE, "SUM", "invalid envelopes", group_by=("message_type",))
        # One Metrics Insights query per widget: a widget is one GetMetricData request, which takes one.
        widgets: list[cw.IWidget] = [
            cw.GraphWidget(title="Normalized", width=8, left=[normalized]),
            cw.GraphWidget(title="Unmapped segments", width=8, left=[unmapped]),
            cw.GraphWidget(title="Code repairs", width=8, left=[repairs]),
            cw.GraphWidget(title="Quarantined by reason" + (" and tenant" if tenant is None else ""), width=8,
                           left=[quarantined], stacked=True),
            cw.GraphWidget(title="Stage failures (retried, then DLQ) by stage", width=8, left=[failed]),
        ]
        if tenant is None:
            widgets.append(cw.GraphWidget(title="Invalid envelopes by stage", width=8, left=[invalid]))
        return widgets

    def _identity_widgets(self, tenant: str | None) -> list[cw.IWidget]:
        hour = cdk.Duration.hours(1)
        if tenant is None:
            scores = [search(names.IDENTITY_MATCH_SCORE, "p50", "median best-candidate score (%)", period=hour)]
        else:
            scores = [series(names.IDENTITY_MATCH_SCORE, stat, {"service": "identity_matcher", "tenant": tenant},
                             label=f"score {stat} (%)", period=hour) for stat in ("p10", "p50", "p90")]
        where = self._where(tenant)
        decisions = [search_total(metric, "Sum", label, where=where, period=hour)
                     for metric, label in ((names.IDENTITY_LINKED, "linked"), (names.IDENTITY_REVIEW, "review"),
                                           (names.IDENTITY_NEW, "new patient"))]
        by_tenant = ("tenant",) if tenant is None else ()
        backlog = insights(names.IDENTITY_REVIEW_BACKLOG, "MAX", "open reviews", where=where, group_by=by_tenant)
        oldest = insights(names.IDENTITY_REVIEW_OLDEST_AGE, "MAX", "oldest open review (s)", where=where,
                          group_by=by_tenant)
        # One Metrics Insights query per widget (one GetMetricData request each).
        return [cw.GraphWidget(title="Match-score distribution (best candidate, %)", width=8, left=scores),
                cw.GraphWidget(title="Match decisions", width=8, left=decisions, stacked=True),
                cw.GraphWidget(title="Review backlog", width=8, left=[backlog]),
                cw.GraphWidget(title="Oldest open review (s)", width=8, left=[oldest])]

    def _token_widgets(self, tenant: str | None) -> list[cw.IWidget]:
        where = self._where(tenant)
        by = ("tenant",) if tenant is None else ()
        ratio = insights(names.TOKEN_LIFETIME_REMAINING_RATIO, "MIN", "token lifetime left (0-1)", where=where,
                         group_by=by)
        failures = insights(names.TOKEN_REFRESH_CONSECUTIVE_FAILURES, "MAX", "consecutive refresh failures",
                            where=where, group_by=by)
        unauthorized = insights(names.UNAUTHORIZED_401, "SUM", "FHIR 401s", where=where, group_by=by)
        return [cw.GraphWidget(title="Token lifetime remaining (share of its own lifetime)", width=8,
                               left=[ratio], left_y_axis=cw.YAxisProps(min=0, max=1)),
                cw.GraphWidget(title="Token refresh failures (consecutive)", width=8, left=[failures]),
                cw.GraphWidget(title="FHIR 401s", width=8, left=[unauthorized])]
