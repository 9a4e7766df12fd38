"""Queue health: DLQ depth and queue age alarms plus the pipeline dashboard."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from constructs import Construct

from ehrbridge import resources as spec
from ehrbridge_infra.constructs.core import CoreResources

# A message older than this in a pipeline queue means a stage is stuck or failing.
QUEUE_AGE_ALARM_S = 900


class PipelineMonitoring(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, core: CoreResources) -> None:
        super().__init__(scope, construct_id)
        action = cw_actions.SnsAction(core.alarm_topic)
        self.alarms: list[cw.Alarm] = []
        widgets: list[cw.IWidget] = []
        for queue_spec in spec.QUEUES:
            queue, dlq = core.queues[queue_spec.name], core.dlqs[queue_spec.name]
            depth = dlq.metric_approximate_number_of_messages_visible(period=cdk.Duration.minutes(1),
                                                                       statistic="Maximum")
            dlq_alarm = depth.create_alarm(
                self, f"DlqDepth-{queue_spec.name}", threshold=1, evaluation_periods=1,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                alarm_description=f"Messages in the {queue_spec.name} DLQ (runbook: docs/runbooks/dlq-redrive.md)")
            age = queue.metric_approximate_age_of_oldest_message(period=cdk.Duration.minutes(1),
                                                                 statistic="Maximum")
            age_alarm = age.create_alarm(
                self, f"QueueAge-{queue_spec.name}", threshold=QUEUE_AGE_ALARM_S, evaluation_periods=5,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                alarm_description=f"Oldest {queue_spec.name} message older than {QUEUE_AGE_ALARM_S}s "
                                  "(runbook: docs/runbooks/alarms.md#queue-age)")
            for alarm in (dlq_alarm, age_alarm):
                alarm.add_alarm_action(action)
                self.alarms.append(alarm)
            widgets.append(cw.GraphWidget(title=f"{queue_spec.name}: age / DLQ depth", left=[age], right=[depth],
                                          width=8))
        stage_failed = cw.Metric(namespace="ehrbridge", metric_name="StageFailed", statistic="Sum",
                                 period=cdk.Duration.minutes(5))
        quarantined = cw.Metric(namespace="ehrbridge", metric_name="Quarantined", statistic="Sum",
                                period=cdk.Duration.minutes(5))
        widgets.append(cw.GraphWidget(title="Stage failures / quarantined (all tenants)",
                                      left=[stage_failed], right=[quarantined], width=8))
        self.dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=f"{core.prefix}-pipeline")
        self.dashboard.add_widgets(*widgets)
