"""One Lambda function the ehrbridge way: explicit encrypted log group, its own least-privilege role,
the shared layer, inside the VPC, X-Ray, reserved concurrency, SQS event source with partial
batch responses, and error/duration alarms to the alarm topic.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import Acknowledgment, Validations
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_logs as logs
from constructs import Construct

from ehrbridge import resources as spec
from ehrbridge_infra.constants import FUNCTIONS_DIR
from ehrbridge_infra.constructs.core import CoreResources
from ehrbridge_infra.packaging import FunctionBundler


class PipelineFunction(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, core: CoreResources, function: spec.FunctionSpec,
                 reserved_concurrency: int = 20) -> None:
        super().__init__(scope, construct_id)
        self.spec = function
        self.log_group = logs.LogGroup(self, "Logs", encryption_key=core.key,
                                       retention=logs.RetentionDays.ONE_YEAR,
                                       removal_policy=cdk.RemovalPolicy.RETAIN)
        self.role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                             description=f"ehrbridge {function.name}: least privilege")
        # The log group ARN already ends in ":*" (its streams).
        self.role.add_to_policy(iam.PolicyStatement(actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                                                    resources=[self.log_group.log_group_arn]))
        # ENI management for VPC functions and X-Ray: these actions have no resource-level scoping.
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DeleteNetworkInterface",
                     "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses",
                     "xray:PutTraceSegments", "xray:PutTelemetryRecords"], resources=["*"]))

        self.function = lambda_.Function(
            self, "Function", function_name=f"{core.prefix}-{function.name.replace('_', '-')}",
            runtime=core.runtime, architecture=lambda_.Architecture.ARM_64,
            handler="handler.lambda_handler",
            code=lambda_.Code.from_asset(str(FUNCTIONS_DIR / function.name), bundling=cdk.BundlingOptions(
                image=cdk.DockerImage.from_registry("unused-local-bundling-only"),
                local=FunctionBundler(FUNCTIONS_DIR / function.name))),
            layers=[core.layer], role=self.role, log_group=self.log_group,
            logging_format=lambda_.LoggingFormat.JSON,
            timeout=cdk.Duration.seconds(function.timeout_s), memory_size=function.memory_mb,
            environment=core.env_for(function), environment_encryption=core.key,
            tracing=lambda_.Tracing.ACTIVE, reserved_concurrent_executions=reserved_concurrency,
            vpc=core.vpc, vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            security_groups=[core.function_security_group])
        acks = grant_least_privilege(self, self.role, core, function)
        if function.consumes:
            queue = core.queues[function.consumes]
            self.function.add_event_source(sources.SqsEventSource(
                queue, batch_size=spec.queue(function.consumes).batch_size, report_batch_item_failures=True))
            acks.append(Acknowledgment(
                id="HIPAA.Security-LambdaDLQ",
                reason="Invoked by an SQS event source mapping; failures go to the source queue's DLQ."))
        Validations.of(self).acknowledge(*acks)

        action = cw_actions.SnsAction(core.alarm_topic)
        self.errors_alarm = self.function.metric_errors(period=cdk.Duration.minutes(5)).create_alarm(
            self, "Errors", threshold=1, evaluation_periods=1,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            alarm_description=f"{function.name} raised errors (runbook: docs/runbooks/alarms.md#function-errors)")
        self.errors_alarm.add_alarm_action(action)
        self.duration_alarm = self.function.metric_duration(statistic="p99", period=cdk.Duration.minutes(5)) \
            .create_alarm(self, "DurationP99", threshold=function.timeout_s * 1000 * 0.8, evaluation_periods=3,
                          treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                          alarm_description=f"{function.name} p99 duration near its timeout "
                                            "(runbook: docs/runbooks/alarms.md#function-duration)")
        self.duration_alarm.add_alarm_action(action)


def grant_least_privilege(scope: Construct, role: iam.IRole, core: CoreResources,
                          function: spec.FunctionSpec) -> list[Acknowledgment]:
    """Explicit actions on exactly the function's resources (no CDK wildcard grants).

    Returns the cdk-nag acknowledgements (with reasons) for what cannot be narrower.
    """
    stack = cdk.Stack.of(scope)
    acks: list[Acknowledgment] = [Acknowledgment(
        id="AwsSolutions-IAM5[Resource::*]",
        reason="EC2 ENI actions (VPC functions) and X-Ray segment upload have no resource-level scoping.")]
    statements = [iam.PolicyStatement(actions=["kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"],
                                      resources=[core.key.key_arn])]
    sends = [core.queues[name].queue_arn for name in function.produces]
    if function.consumes:
        sends.append(core.dlqs[function.consumes].queue_arn)  # invalid envelopes go straight to the DLQ
        statements.append(iam.PolicyStatement(
            actions=["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                     "sqs:GetQueueAttributes", "sqs:GetQueueUrl"],
            resources=[core.queues[function.consumes].queue_arn]))
    if sends:
        statements.append(iam.PolicyStatement(actions=["sqs:SendMessage", "sqs:GetQueueAttributes",
                                                       "sqs:GetQueueUrl"], resources=sends))
    for name in function.tables:
        table = core.tables[name]
        resources = [table.table_arn]
        if spec.table(name).indexes:
            resources.append(f"{table.table_arn}/index/*")
            acks.append(Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::<{_logical_id(stack, table)}.Arn>/index/*]",
                reason="Queries on this table's own secondary indexes."))
        statements.append(iam.PolicyStatement(
            actions=["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
                     "dynamodb:Query", "dynamodb:ConditionCheckItem", "dynamodb:BatchGetItem",
                     "dynamodb:BatchWriteItem"],
            resources=resources))
    for name in function.buckets:
        bucket = core.buckets[name]
        statements.append(iam.PolicyStatement(actions=["s3:GetObject", "s3:PutObject"],
                                              resources=[bucket.arn_for_objects("*")]))
        statements.append(iam.PolicyStatement(actions=["s3:ListBucket"], resources=[bucket.bucket_arn]))
        acks.append(Acknowledgment(
            id=f"AwsSolutions-IAM5[Resource::<{_logical_id(stack, bucket)}.Arn>/*]",
            reason=f"Objects of the {name} bucket; keys are per tenant and message, not known in advance."))
    for statement in statements:
        role.add_to_principal_policy(statement)
    acks.append(Acknowledgment(
        id="HIPAA.Security-IAMNoInlinePolicy",
        reason="A policy attached only to this function's own role: the least-privilege unit. No user or "
               "group policies exist."))
    return acks


def _logical_id(stack: cdk.Stack, construct: Construct) -> str:
    return stack.resolve(stack.get_logical_id(construct.node.default_child))  # type: ignore[arg-type]
