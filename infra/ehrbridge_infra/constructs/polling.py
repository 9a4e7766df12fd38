"""FHIR polling: the scheduled dispatcher, the fhir_poller behind the poll-jobs FIFO queue (its DLQ and
the queue itself come from CoreResources, defined in ehrbridge.resources), least-privilege roles,
the poller's alarms and a per-tenant dashboard.

- EventBridge Scheduler invokes ``poll_dispatcher`` every minute (one schedule for all tenants); it
  writes ``dispatched_at`` on the cursor items (state table, sk ``poll#{type}``) and enqueues jobs.
- ``fhir_poller`` consumes poll-jobs one job at a time, reads tenant secrets (and, on a 401, writes
  the refreshed token), moves cursors forward with conditional writes, publishes to normalize.
- Alarms (runbook: docs/runbooks/polling.md), all over every tenant with Metrics Insights (tenants
  are data, not deploy-time constants), worst tenant first: failed-call rate > 0.5 % over 15 min,
  p99 call latency > 500 ms, a cluster of 401s, a newly denied type, a pair stale beyond 3 intervals.
- Dashboard ``{prefix}-polling``: a ``tenant`` variable and one widget per alarm for that tenant.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import Acknowledgment, Validations
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as targets
from constructs import Construct

from ehrbridge import resources as spec
from ehrbridge.contracts.tenant import SECRET_PREFIX
from ehrbridge_infra.constructs.core import CoreResources
from ehrbridge_infra.constructs.function import PipelineFunction

RUNBOOK = "docs/runbooks/polling.md"
SCHEMA = 'SCHEMA("ehrbridge", service, tenant, endpoint, resource_type)'
SEARCH_SCHEMA = "{ehrbridge,service,tenant,endpoint,resource_type}"
TENANT_PLACEHOLDER = "TENANT_ID"  # replaced by the dashboard's tenant variable


def _worst_tenant(aggregate: str, metric: str, label: str, period: cdk.Duration) -> cw.MathExpression:
    query = (f"SELECT {aggregate}({metric}) FROM {SCHEMA} "  # noqa: S608 - constants, not input
             f"GROUP BY tenant ORDER BY {aggregate}() DESC LIMIT 1")
    return cw.MathExpression(expression=query, label=label, period=period)


def _for_tenant(metric: str, statistic: str, period_s: int, label: str) -> cw.MathExpression:
    return cw.MathExpression(
        expression=f"SEARCH('{SEARCH_SCHEMA} MetricName=\"{metric}\" tenant=\"{TENANT_PLACEHOLDER}\"', "
                   f"'{statistic}', {period_s})",
        label=label, period=cdk.Duration.seconds(period_s))


class FhirPolling(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, core: CoreResources,
                 failed_rate_threshold: float = 0.005, p99_latency_ms: float = 500.0,
                 unauthorized_threshold: int = 5, stale_intervals: float = 3.0) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.dispatcher = PipelineFunction(self, "Dispatcher", core=core, function=spec.function("poll_dispatcher"),
                                           reserved_concurrency=1)
        self.poller = PipelineFunction(self, "Poller", core=core, function=spec.function("fhir_poller"))
        state_arn = core.tables["state"].table_arn
        # The tenant list is a scan of the state table's config items.
        self.dispatcher.role.add_to_principal_policy(iam.PolicyStatement(actions=["dynamodb:Scan"],
                                                                         resources=[state_arn]))

        # ---- the poller reaches the EHR with the tenant's token (refreshed once on a 401) ------
        secrets_arn = f"arn:{stack.partition}:secretsmanager:{stack.region}:{stack.account}:secret:{SECRET_PREFIX}"
        self.poller.function.add_environment("EHRBRIDGE_KMS_KEY_ID", core.key.key_arn)  # a key id, not a secret
        self.poller.role.add_to_principal_policy(iam.PolicyStatement(
            actions=["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"], resources=[f"{secrets_arn}/*"]))
        self.poller.role.add_to_principal_policy(iam.PolicyStatement(
            actions=["secretsmanager:PutSecretValue", "secretsmanager:CreateSecret", "secretsmanager:TagResource"],
            resources=[f"{secrets_arn}/*/token-*"]))
        Validations.of(self.poller).acknowledge(
            Acknowledgment(id=f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:"
                              f"<AWS::AccountId>:secret:{SECRET_PREFIX}/*]",
                           reason="Reads the token and credentials of whichever tenant a poll job names (tenants are "
                                  "added at runtime); nothing outside the ehrbridge/tenants/ prefix."),
            Acknowledgment(id=f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:"
                              f"<AWS::AccountId>:secret:{SECRET_PREFIX}/*/token-*]",
                           reason="Writes only per-tenant token secrets, when a 401 forces one refresh."))

        # ---- one schedule for all tenants ----------------------------------------------------
        invoke_role = iam.Role(self, "SchedulerRole", assumed_by=iam.ServicePrincipal(
            "scheduler.amazonaws.com", conditions={"StringEquals": {"aws:SourceAccount": stack.account}}),
            description="ehrbridge: EventBridge Scheduler invokes poll_dispatcher")
        self.schedule = scheduler.Schedule(
            self, "EveryMinute", schedule=scheduler.ScheduleExpression.rate(cdk.Duration.minutes(1)),
            description="ehrbridge: enqueue due FHIR poll jobs",
            target=targets.LambdaInvoke(self.dispatcher.function, role=invoke_role, retry_attempts=0,
                                        max_event_age=cdk.Duration.minutes(1)))
        Validations.of(self.dispatcher).acknowledge(Acknowledgment(
            id="HIPAA.Security-LambdaDLQ",
            reason="Invoked by EventBridge Scheduler every minute without retries: the next run re-derives what is "
                   "due from the cursors, and a pair that stays undispatched alarms as stale."))
        fn_logical = stack.resolve(stack.get_logical_id(self.dispatcher.function.node.default_child))  # type: ignore[arg-type]
        Validations.of(invoke_role).acknowledge(
            Acknowledgment(id=f"AwsSolutions-IAM5[Resource::<{fn_logical}.Arn>:*]",
                           reason="lambda:InvokeFunction on the dispatcher's own versions/aliases, as CDK grants it."),
            Acknowledgment(id="HIPAA.Security-IAMNoInlinePolicy",
                           reason="Invoke permission attached only to the scheduler's own role for this function."))

        # ---- alarms --------------------------------------------------------------------------
        action = cw_actions.SnsAction(core.alarm_topic)
        self.alarms: dict[str, cw.Alarm] = {}
        gt = cw.ComparisonOperator.GREATER_THAN_THRESHOLD
        ge = cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD
        five, fifteen = cdk.Duration.minutes(5), cdk.Duration.minutes(15)

        def alarm(name: str, anchor: str, metric: cw.IMetric, threshold: float, comparison: cw.ComparisonOperator,
                  description: str, evaluation_periods: int = 1) -> None:
            created = cw.Alarm(self, name, metric=metric, threshold=threshold, comparison_operator=comparison,
                               evaluation_periods=evaluation_periods,
                               treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                               alarm_description=f"{description} (runbook: {RUNBOOK}#{anchor})")
            created.add_alarm_action(action)
            self.alarms[name] = created

        # PollCallFailed is 0/1 per call: its average is the failed-call rate.
        alarm("PollFailedCallRate", "failed-call-rate",
              _worst_tenant("AVG", "PollCallFailed", "failed-call rate of the worst tenant", fifteen),
              failed_rate_threshold, gt, f"more than {failed_rate_threshold:.1%} of a tenant's FHIR calls failed "
              "over 15 minutes")
        alarm("PollLatencyP99", "p99-latency",
              cw.Metric(namespace="ehrbridge", metric_name="PollCallLatency", dimensions_map={"service": "ehrbridge"},
                        statistic="p99", period=five),
              p99_latency_ms, gt, f"p99 FHIR call latency above {p99_latency_ms:.0f} ms", evaluation_periods=3)
        alarm("Poll401Cluster", "401-cluster",
              _worst_tenant("SUM", "PollCall401", "401s of the worst tenant", five),
              unauthorized_threshold, ge, f"{unauthorized_threshold}+ FHIR 401s for one tenant in 5 minutes "
              "(auth broken)")
        alarm("PollTypeDenied", "type-denied",
              _worst_tenant("SUM", "PollTypeDenied", "newly denied types", five),
              1, ge, "a FHIR server answered 403 for a resource type: newly denied for the tenant, skipped until fixed")
        alarm("PollStale", "stale",
              _worst_tenant("MAX", "PollStalenessRatio", "worst age / interval", five),
              stale_intervals, gt, f"a tenant's resource type has not been polled for {stale_intervals:g}x its "
              "interval", evaluation_periods=2)

        # ---- per-tenant dashboard: a widget per alarm ---------------------------------------
        tenant_variable = cw.DashboardVariable(
            id="tenant", type=cw.VariableType.PATTERN, input_type=cw.VariableInputType.SELECT,
            value=TENANT_PLACEHOLDER, label="Tenant",
            values=cw.Values.from_search(f'{SEARCH_SCHEMA} MetricName="PollCalls"', "tenant"))

        def widget(title: str, metric: cw.MathExpression, threshold: float, stat_label: str) -> cw.GraphWidget:
            return cw.GraphWidget(title=title, left=[metric], width=8, left_y_axis=cw.YAxisProps(label=stat_label),
                                  left_annotations=[cw.HorizontalAnnotation(value=threshold, label="alarm")])

        self.dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=f"{core.prefix}-polling",
                                      variables=[tenant_variable])
        self.dashboard.add_widgets(
            widget("Failed-call rate (15 min)", _for_tenant("PollCallFailed", "Average", 900, "failed"),
                   failed_rate_threshold, "fraction"),
            widget("Call latency p99", _for_tenant("PollCallLatency", "p99", 300, "p99"), p99_latency_ms, "ms"),
            widget("401 answers", _for_tenant("PollCall401", "Sum", 300, "401"), unauthorized_threshold, "count"),
            widget("Newly denied types", _for_tenant("PollTypeDenied", "Sum", 300, "denied"), 1, "count"),
            widget("Staleness (age / interval)", _for_tenant("PollStalenessRatio", "Maximum", 300, "ratio"),
                   stale_intervals, "ratio"),
            widget("Freshness lag (s)", _for_tenant("PollFreshnessSeconds", "Maximum", 300, "lag"),
                   900, "seconds"),
        )
