"""FHIR polling: the scheduled dispatcher, the fhir_poller behind the poll-jobs FIFO queue (its DLQ and
the queue itself come from CoreResources, defined in ehrbridge.resources), least-privilege roles,
the poller's alarms and a per-tenant dashboard.

- EventBridge Scheduler invokes ``poll_dispatcher`` every minute (one schedule for all tenants); it
  writes ``dispatched_at`` on the cursor items (state table, sk ``poll#{type}``) and enqueues jobs.
- ``fhir_poller`` consumes poll-jobs one job at a time, reads tenant secrets (and, on a 401, writes
  the refreshed token), moves cursors forward with conditional writes, publishes to normalize.
- Alarms (runbook: docs/runbooks/polling.md), all over every tenant with Metrics Insights (tenants
  are data, not deploy-time constants), worst tenant first: failed-call rate > 0.5 % over 15 min,
  p99 call latency > 500 ms, a cluster of 401s, a newly denied type (re-probes that get 403 again do not
  count), a pair stale beyond 3 intervals, and ADT-fed roster identifiers that keep failing to resolve
  (``PollRosterStuck`` ≥ 5 for a tenant three hours running).
  The poll-jobs queue's depth, age and DLQ alarms are PipelineMonitoring's (every pipeline queue).
- Widgets: a "FHIR polling" section on the overview and per-tenant dashboards of PipelineMonitoring
  (``add_section``): one widget per alarm, plus calls by outcome, endpoint and resource type.
Every metric comes from ``ehrbridge.observability.names`` with the dimension set the poller writes.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import Acknowledgment, Validations
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from constructs import Construct

from ehrbridge import resources as spec
from ehrbridge.contracts.tenant import SECRET_PREFIX
from ehrbridge.observability import names
from ehrbridge.poll.cursor import DEFAULT_ROSTER_EXPIRY_DAYS, ROSTER_EXPIRY_ENV
from ehrbridge.poll.jobs import DEFAULT_REPROBE_AFTER_S, REPROBE_ENV
from ehrbridge_infra.constructs.core import CoreResources
from ehrbridge_infra.constructs.function import PipelineFunction
from ehrbridge_infra.constructs.monitoring import PipelineMonitoring
from ehrbridge_infra.constructs.schedule import every_minute
from ehrbridge_infra.nag import iam5_resource
from ehrbridge_infra.observability import TENANT_PATTERN, insights, search, search_total, series

RUNBOOK = "docs/runbooks/polling.md"
# The poller's EMF lines carry the function's POWERTOOLS_SERVICE_NAME (CoreResources.env_for).
POLLER_SERVICE = spec.function("fhir_poller").name


def _worst_tenant(aggregate: str, metric: names.MetricName, label: str, period: cdk.Duration) -> cw.MathExpression:
    """Metrics Insights over every tenant (tenants are data, not deploy-time constants), worst tenant first."""
    return insights(metric, aggregate, label, period=period, group_by=("tenant",), top=1)


class FhirPolling(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, core: CoreResources,
                 monitoring: PipelineMonitoring | None = None, failed_rate_threshold: float = 0.005,
                 p99_latency_ms: float = 500.0,
                 unauthorized_threshold: int = 5, stale_intervals: float = 3.0,
                 roster_stuck_threshold: int = 5, roster_stuck_hours: int = 3,
                 roster_expiry_days: int = int(DEFAULT_ROSTER_EXPIRY_DAYS),
                 reprobe_denied_s: int = DEFAULT_REPROBE_AFTER_S) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.dispatcher = PipelineFunction(self, "Dispatcher", core=core, function=spec.function("poll_dispatcher"),
                                           reserved_concurrency=1)
        self.poller = PipelineFunction(self, "Poller", core=core, function=spec.function("fhir_poller"))
        for fn in (self.dispatcher, self.poller):
            fn.function.add_environment(ROSTER_EXPIRY_ENV, str(roster_expiry_days))
            fn.function.add_environment(REPROBE_ENV, str(reprobe_denied_s))
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
        # Ids rendered from the same ARNs: they match with and without a concrete account/region.
        Validations.of(self.poller).acknowledge(
            Acknowledgment(id=iam5_resource(stack, f"{secrets_arn}/*"),
                           reason="Reads the token and credentials of whichever tenant a poll job names (tenants are "
                                  "added at runtime); nothing outside the ehrbridge/tenants/ prefix."),
            Acknowledgment(id=iam5_resource(stack, f"{secrets_arn}/*/token-*"),
                           reason="Writes only per-tenant token secrets, when a 401 forces one refresh."))

        # ---- one schedule for all tenants ----------------------------------------------------
        self.schedule = every_minute(self, self.dispatcher.function, function_label="poll_dispatcher",
                                     description="ehrbridge: enqueue due FHIR poll jobs")
        Validations.of(self.dispatcher).acknowledge(Acknowledgment(
            id="HIPAA.Security-LambdaDLQ",
            reason="Invoked by EventBridge Scheduler every minute without retries: the next run re-derives what is "
                   "due from the cursors, and a pair that stays undispatched alarms as stale."))

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
              _worst_tenant("AVG", names.POLL_CALL_FAILED, "failed-call rate of the worst tenant", fifteen),
              failed_rate_threshold, gt, f"more than {failed_rate_threshold:.1%} of a tenant's FHIR calls failed "
              "over 15 minutes")
        # Percentiles need a plain metric (Metrics Insights has none): the fleet-wide latency series.
        alarm("PollLatencyP99", "p99-latency",
              series(names.POLL_CALL_LATENCY, "p99", {"service": POLLER_SERVICE}, period=five),
              p99_latency_ms, gt, f"p99 FHIR call latency above {p99_latency_ms:.0f} ms", evaluation_periods=3)
        alarm("Poll401Cluster", "401-cluster",
              _worst_tenant("SUM", names.POLL_CALL_401, "401s of the worst tenant", five),
              unauthorized_threshold, ge, f"{unauthorized_threshold}+ FHIR 401s for one tenant in 5 minutes "
              "(auth broken)")
        alarm("PollTypeDenied", "type-denied",
              _worst_tenant("SUM", names.POLL_TYPE_DENIED, "newly denied types", five),
              1, ge, "a FHIR server answered 403 for a resource type: newly denied for the tenant, skipped until fixed")
        alarm("PollStale", "stale",
              _worst_tenant("MAX", names.POLL_STALENESS_RATIO, "worst age / interval", five),
              stale_intervals, gt, f"a tenant's resource type has not been polled for {stale_intervals:g}x its "
              "interval", evaluation_periods=2)
        # A gauge of entries pending for over an hour after several failed resolutions: one patient the EHR
        # lacks stays below the threshold; a tenant whose identifiers do not resolve (wrong identifier
        # system, Patient denied, search broken) climbs above it and stays there.
        alarm("PollRosterUnresolved", "roster-unresolved",
              _worst_tenant("MAX", names.POLL_ROSTER_STUCK, "roster identifiers that keep failing, worst tenant",
                            cdk.Duration.hours(1)),
              roster_stuck_threshold, ge, f"{roster_stuck_threshold}+ of a tenant's ADT-fed roster identifiers have "
              f"kept failing to resolve to a Patient for {roster_stuck_hours} hours",
              evaluation_periods=roster_stuck_hours)

        # ---- widgets on the overview and tenant dashboards (PipelineMonitoring.add_section) ---
        self.thresholds = {"failed": failed_rate_threshold, "p99": p99_latency_ms,
                           "unauthorized": float(unauthorized_threshold), "stale": stale_intervals,
                           "roster_stuck": float(roster_stuck_threshold)}
        if monitoring is not None:
            monitoring.add_section("FHIR polling", overview=self.widgets(tenant=None),
                                   tenant=self.widgets(tenant=TENANT_PATTERN))

    def widgets(self, tenant: str | None) -> list[cw.IWidget]:
        """FHIR calls by outcome, endpoint and resource type, latency p50/p99, failed-call rate, 401s, denied
        types, freshness and staleness per resource type: for one tenant, or (``None``) every tenant.

        At most one Metrics Insights query per widget: a widget is one GetMetricData request, which takes
        one Insights query. Multi-line widgets use SEARCH instead."""
        five, fifteen = cdk.Duration.minutes(5), cdk.Duration.minutes(15)
        where = {"tenant": tenant} if tenant else {}
        # Fleet-wide: one line per tenant; for a tenant: one line per resource type.
        by = ("tenant",) if tenant is None else ("resource_type",)

        def graph(title: str, metrics: list[cw.IMetric], *, alarm_at: float | None = None,
                  stacked: bool = False) -> cw.GraphWidget:
            return cw.GraphWidget(title=title, width=8, left=metrics, stacked=stacked,
                                  left_annotations=[cw.HorizontalAnnotation(value=alarm_at, label="alarm")]
                                  if alarm_at is not None else None)

        def one(metric: names.MetricName, aggregate: str, label: str, group_by: tuple[str, ...],
                period: cdk.Duration = five) -> list[cw.IMetric]:
            return [insights(metric, aggregate, label, where=where, group_by=group_by, period=period)]

        if tenant is None:
            latency: list[cw.IMetric] = [series(names.POLL_CALL_LATENCY, stat, {"service": POLLER_SERVICE},
                                                label=f"{stat} (ms)", period=five) for stat in ("p50", "p99")]
        else:
            # One series per endpoint and resource type; SEARCH allows percentiles, Metrics Insights does not.
            latency = [search(names.POLL_CALL_LATENCY, stat, f"{stat} (ms)", where=where, period=five)
                       for stat in ("p50", "p99")]
        per_call = ("endpoint", "resource_type") if tenant else ("tenant",)
        return [
            graph("FHIR calls by outcome", [search_total(metric, "Sum", outcome, where=where, period=five)
                                            for outcome, metric in names.POLL_CALL_OUTCOMES.items()], stacked=True),
            graph("FHIR calls by endpoint and resource type" if tenant else "FHIR calls by tenant",
                  one(names.POLL_CALLS, "SUM", "calls", per_call)),
            graph("Failed calls by endpoint and resource type" if tenant else "Failed calls by tenant and endpoint",
                  one(names.POLL_CALL_FAILED, "SUM", "failed", per_call if tenant else ("tenant", "endpoint"))),
            graph("FHIR call latency p50 / p99 (ms)", latency, alarm_at=self.thresholds["p99"]),
            graph("Failed-call rate (15 min)", one(names.POLL_CALL_FAILED, "AVG", "failed-call rate", ("tenant",),
                                                   fifteen), alarm_at=self.thresholds["failed"]),
            graph("FHIR 401 answers", one(names.POLL_CALL_401, "SUM", "401", by),
                  alarm_at=self.thresholds["unauthorized"]),
            graph("Newly denied resource types (403)",
                  one(names.POLL_TYPE_DENIED, "SUM", "denied", ("resource_type",) if tenant else
                      ("tenant", "resource_type")), alarm_at=1),
            graph("Freshness lag per resource type (s)",
                  one(names.POLL_FRESHNESS_SECONDS, "MAX", "lag", ("resource_type",) if tenant else ("tenant",))),
            graph("Staleness (time since last window / interval)",
                  one(names.POLL_STALENESS_RATIO, "MAX", "ratio", by), alarm_at=self.thresholds["stale"]),
            graph("Resources received", one(names.POLL_RESOURCES, "SUM", "resources", by)),
            graph("Duplicates received", one(names.POLL_DUPLICATES, "SUM", "duplicates", by)),
            graph("Retries", one(names.POLL_RETRIES, "SUM", "retries", by)),
            graph("Throttle wait (ms)", one(names.POLL_THROTTLE_WAIT_MS, "SUM", "wait", by)),
            graph("Denied types re-probed / reinstated",
                  [search_total(names.POLL_TYPE_REPROBED, "Sum", "re-probed", where=where, period=five),
                   search_total(names.POLL_TYPE_REINSTATED, "Sum", "reinstated", where=where, period=five)]),
            graph("Roster identifiers resolved / not resolved (ADT)",
                  [search_total(names.POLL_ROSTER_RESOLVED, "Sum", "resolved", where=where, period=five),
                   search_total(names.POLL_ROSTER_UNRESOLVED, "Sum", "not resolved", where=where, period=five)]),
            graph("Deletions seen at the source, not delivered (opt-in)",
                  one(names.POLL_DELETIONS_SEEN, "SUM", "deleted", by)),
            graph("Roster identifiers that keep failing",
                  one(names.POLL_ROSTER_STUCK, "MAX", "stuck", ("tenant",), cdk.Duration.hours(1)),
                  alarm_at=self.thresholds["roster_stuck"]),
        ]
