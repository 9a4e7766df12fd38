"""One schedule for a whole fleet: EventBridge Scheduler invokes a function every minute, without retries.

Used by the token refresher and the poll dispatcher: both re-derive what is due from state on every run,
so a missed or failed run is superseded by the next one instead of being retried late.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import Acknowledgment, Validations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as targets
from constructs import Construct


def every_minute(scope: Construct, function: lambda_.Function, *, function_label: str,
                 description: str) -> scheduler.Schedule:
    """``scope``/SchedulerRole (its own invoke role, scoped and acknowledged here) and ``scope``/EveryMinute."""
    stack = cdk.Stack.of(scope)
    invoke_role = iam.Role(scope, "SchedulerRole", assumed_by=iam.ServicePrincipal(
        "scheduler.amazonaws.com", conditions={"StringEquals": {"aws:SourceAccount": stack.account}}),
        description=f"ehrbridge: EventBridge Scheduler invokes {function_label}")
    schedule = scheduler.Schedule(
        scope, "EveryMinute", schedule=scheduler.ScheduleExpression.rate(cdk.Duration.minutes(1)),
        description=description,
        target=targets.LambdaInvoke(function, role=invoke_role, retry_attempts=0,
                                    max_event_age=cdk.Duration.minutes(1)))
    function_logical_id = stack.resolve(stack.get_logical_id(function.node.default_child))  # type: ignore[arg-type]
    Validations.of(invoke_role).acknowledge(
        Acknowledgment(id=f"AwsSolutions-IAM5[Resource::<{function_logical_id}.Arn>:*]",
                       reason=f"lambda:InvokeFunction on {function_label}'s own versions/aliases, as CDK grants it."),
        Acknowledgment(id="HIPAA.Security-IAMNoInlinePolicy",
                       reason="Invoke permission attached only to the scheduler's own role for this function."))
    return schedule
