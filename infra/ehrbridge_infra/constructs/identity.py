"""Identity extras on top of the generic pipeline function: the link-event bus and its permission,
and the alarms specific to matching (review backlog age, review-band rate, score-distribution shift).

The function itself (role, queue, table, buckets, error/duration alarms) is the lead's generic
PipelineFunction; this construct only adds what identity needs beyond it.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from constructs import Construct

from ehrbridge.observability import names
from ehrbridge_infra.constructs.core import CoreResources
from ehrbridge_infra.constructs.function import PipelineFunction
from ehrbridge_infra.observability import insights

EVENT_BUS_ENV = "EHRBRIDGE_EVENT_BUS"  # read by ehrbridge.identity.events
SERVICE = "identity_matcher"


def _insights(metric: names.MetricName, stat: str, period: cdk.Duration, label: str) -> cw.MathExpression:
    # A Metrics Insights query aggregates every tenant's series into one: alarms need no tenant list.
    return insights(metric, stat, label, period=period, where={"service": SERVICE})


class IdentityExtras(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, core: CoreResources, function: PipelineFunction,
                 review_backlog_age_s: int = 24 * 3600, review_rate: float = 0.2,
                 min_mean_score_pct: float = 40.0) -> None:
        super().__init__(scope, construct_id)
        # Link events (PHI-free: ids, grades, scores) on their own bus; consumers subscribe with rules.
        self.bus = events.EventBus(self, "LinkEvents", event_bus_name=f"{core.prefix}-identity")
        self.bus.archive("LinkEventsArchive", archive_name=f"{core.prefix}-identity-links",
                         event_pattern=events.EventPattern(source=["ehrbridge.identity"]),
                         retention=cdk.Duration.days(365), description="Replay of link changes")
        function.function.add_environment(EVENT_BUS_ENV, self.bus.event_bus_name)
        function.role.add_to_principal_policy(iam.PolicyStatement(actions=["events:PutEvents"],
                                                                  resources=[self.bus.event_bus_arn]))
        action = cw_actions.SnsAction(core.alarm_topic)
        self.alarms: list[cw.Alarm] = []

        def alarm(name: str, expr: cw.MathExpression, threshold: float, periods: int, description: str,
                  op: cw.ComparisonOperator = cw.ComparisonOperator.GREATER_THAN_THRESHOLD) -> None:
            created = cw.Alarm(self, name, metric=expr, threshold=threshold, evaluation_periods=periods,
                               comparison_operator=op, treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                               alarm_description=description)
            created.add_alarm_action(action)
            self.alarms.append(created)

        alarm("ReviewBacklogAge",
              _insights(names.IDENTITY_REVIEW_OLDEST_AGE, "MAX", cdk.Duration.minutes(15), "oldest open review (s)"),
              review_backlog_age_s, 2,
              f"An identity review item has waited over {review_backlog_age_s // 3600} h "
              "(runbook: docs/identity.md#alarm-review-backlog-age)")
        alarm("ReviewRate",
              _insights(names.IDENTITY_REVIEW, "AVG", cdk.Duration.hours(1), "share of records sent to review"),
              review_rate, 3,
              f"More than {review_rate:.0%} of records land in the review band for 3 h: the score distribution "
              "shifted (runbook: docs/identity.md#alarm-score-distribution-shift)")
        alarm("ScoreShift",
              _insights(names.IDENTITY_MATCH_SCORE, "AVG", cdk.Duration.hours(1), "mean best-candidate score (%)"),
              min_mean_score_pct, 6,
              f"Mean best-candidate match score below {min_mean_score_pct:.0f}% for 6 h: a feed changed "
              "(identifiers, placeholders, formats) (runbook: docs/identity.md#alarm-score-distribution-shift)",
              op=cw.ComparisonOperator.LESS_THAN_THRESHOLD)
