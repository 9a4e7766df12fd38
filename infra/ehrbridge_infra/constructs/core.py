"""Core resources every capability uses, built from ehrbridge.resources (the same definitions
the local twin provisions): the data KMS key, network, queues + DLQs, tables, buckets, backup,
the alarm topic and the shared Lambda layer.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import Acknowledgment, Validations
from aws_cdk import aws_backup as backup
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as sns_subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from ehrbridge import resources as spec
from ehrbridge_infra.constants import LAMBDA_PYTHON_VERSION, LAYER_SOURCE, LOG_RETENTION_DAYS
from ehrbridge_infra.packaging import PipLayerBundler


class CoreResources(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, prefix: str = spec.DEFAULT_PREFIX,
                 alarm_emails: tuple[str, ...] = ()) -> None:
        super().__init__(scope, construct_id)
        self.prefix = prefix

        self.key = kms.Key(self, "DataKey", alias=spec.KMS_KEY_ALIAS, enable_key_rotation=True,
                           description="ehrbridge: queues, tables, buckets, secrets and logs",
                           removal_policy=cdk.RemovalPolicy.RETAIN)
        region = cdk.Stack.of(self).region
        # CloudWatch Logs must be allowed to use the key for encrypted log groups.
        self.key.add_to_resource_policy(iam.PolicyStatement(
            actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
            principals=[iam.ServicePrincipal(f"logs.{region}.amazonaws.com")], resources=["*"],
            conditions={"ArnLike": {"kms:EncryptionContext:aws:logs:arn":
                                    f"arn:{cdk.Aws.PARTITION}:logs:{region}:{cdk.Aws.ACCOUNT_ID}:*"}}))

        # Alarm notifications hold alarm names and states, no PHI: their own key, so CloudWatch (which
        # must encrypt what it publishes to an encrypted topic) is never granted the data key.
        self.alarm_key = kms.Key(self, "AlarmKey", enable_key_rotation=True,
                                 description="ehrbridge: alarm notifications topic",
                                 removal_policy=cdk.RemovalPolicy.RETAIN)
        self.alarm_key.add_to_resource_policy(iam.PolicyStatement(
            sid="CloudWatchAlarmsPublishToEncryptedTopic",
            actions=["kms:Decrypt", "kms:GenerateDataKey*"],
            principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")], resources=["*"]))
        self.alarm_topic = sns.Topic(self, "AlarmTopic", master_key=self.alarm_key, enforce_ssl=True,
                                     display_name="ehrbridge alarms")
        for email in alarm_emails:  # each address confirms its subscription once
            self.alarm_topic.add_subscription(sns_subscriptions.EmailSubscription(email))

        self._network()
        self._buckets()
        self._queues()
        self._tables()
        self._layer()

    # ---- network ------------------------------------------------------------------
    def _network(self) -> None:
        flow_logs = logs.LogGroup(self, "FlowLogs", encryption_key=self.key,
                                  retention=logs.RetentionDays.ONE_YEAR, removal_policy=cdk.RemovalPolicy.RETAIN)
        # Two AZs: the stack's (EhrbridgeStack names them, so a concrete synth looks nothing up).
        self.vpc = ec2.Vpc(self, "Vpc", max_azs=2, nat_gateways=1, restrict_default_security_group=True,
                           subnet_configuration=[
                               ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC,
                                                       cidr_mask=24, map_public_ip_on_launch=False),
                               ec2.SubnetConfiguration(name="private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS,
                                                       cidr_mask=22)],
                           gateway_endpoints={"S3": ec2.GatewayVpcEndpointOptions(
                               service=ec2.GatewayVpcEndpointAwsService.S3),
                               "DynamoDB": ec2.GatewayVpcEndpointOptions(
                                   service=ec2.GatewayVpcEndpointAwsService.DYNAMODB)},
                           flow_logs={"all": ec2.FlowLogOptions(
                               destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs),
                               traffic_type=ec2.FlowLogTrafficType.ALL)})
        Validations.of(self.vpc).acknowledge(
            Acknowledgment(id="HIPAA.Security-VPCNoUnrestrictedRouteToIGW",
                           reason="Only the public subnets route to the internet gateway. They hold the NAT "
                                  "gateway (egress for functions and tasks) and, only when "
                                  "ehrbridge:mllpInternetFacing=true, the MLLP load balancer; never functions or "
                                  "tasks, which run in the private subnets."),
            Acknowledgment(id="HIPAA.Security-IAMNoInlinePolicy",
                           reason="Flow-log delivery role policy generated by CDK, attached only to that role."))
        # Functions only talk out over HTTPS (AWS APIs, EHR FHIR endpoints).
        self.function_security_group = ec2.SecurityGroup(self, "FunctionSg", vpc=self.vpc, allow_all_outbound=False,
                                                         description="ehrbridge functions: HTTPS egress only")
        self.function_security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "HTTPS out")

    # ---- buckets ------------------------------------------------------------------
    def _buckets(self) -> None:
        self.access_logs = s3.Bucket(self, "AccessLogs", encryption=s3.BucketEncryption.S3_MANAGED,
                                     block_public_access=s3.BlockPublicAccess.BLOCK_ALL, enforce_ssl=True,
                                     versioned=True, object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
                                     removal_policy=cdk.RemovalPolicy.RETAIN,
                                     lifecycle_rules=[s3.LifecycleRule(expiration=cdk.Duration.days(2555))])
        Validations.of(self.access_logs).acknowledge(
            Acknowledgment(id="AwsSolutions-S1", reason="This is the server access log bucket itself."),
            Acknowledgment(id="HIPAA.Security-S3BucketLoggingEnabled",
                           reason="This is the server access log bucket itself; logging it to itself would loop."),
            Acknowledgment(id="HIPAA.Security-S3DefaultEncryptionKMS",
                           reason="S3 server access logging delivers only to SSE-S3 encrypted buckets."),
            Acknowledgment(id="HIPAA.Security-S3BucketReplicationEnabled",
                           reason="Access logs are operational records, not PHI; cross-region replication is a "
                                  "per-deployment decision (docs/operations.md#data-protection-decisions)."))
        self.buckets: dict[str, s3.Bucket] = {}
        for bucket_spec in spec.BUCKETS:
            bucket = s3.Bucket(
                self, f"Bucket-{bucket_spec.name}", encryption=s3.BucketEncryption.KMS, encryption_key=self.key,
                bucket_key_enabled=True, block_public_access=s3.BlockPublicAccess.BLOCK_ALL, enforce_ssl=True,
                versioned=True, server_access_logs_bucket=self.access_logs,
                server_access_logs_prefix=f"{bucket_spec.name}/", removal_policy=cdk.RemovalPolicy.RETAIN)
            Validations.of(bucket).acknowledge(Acknowledgment(
                id="HIPAA.Security-S3BucketReplicationEnabled",
                reason="Cross-region replication is a per-deployment decision (PHI residency; "
                       "docs/operations.md#data-protection-decisions). In-region, versioning keeps every "
                       "overwritten or deleted object version and the bucket is retained on stack deletion; "
                       "AWS Backup covers the tables only."))
            self.buckets[bucket_spec.name] = bucket

    # ---- queues -------------------------------------------------------------------
    def _queues(self) -> None:
        self.queues: dict[str, sqs.Queue] = {}
        self.dlqs: dict[str, sqs.Queue] = {}
        for queue_spec in spec.QUEUES:
            retention = cdk.Duration.days(queue_spec.retention_days)
            dlq = sqs.Queue(self, f"Dlq-{queue_spec.name}", queue_name=queue_spec.dlq_physical_name(self.prefix),
                            fifo=queue_spec.fifo or None, encryption=sqs.QueueEncryption.KMS,
                            encryption_master_key=self.key, enforce_ssl=True, retention_period=retention)
            Validations.of(dlq).acknowledge(Acknowledgment(
                id="AwsSolutions-SQS3", reason="This queue is the dead-letter queue; it is alarmed on depth."))
            queue = sqs.Queue(
                self, f"Queue-{queue_spec.name}", queue_name=queue_spec.physical_name(self.prefix),
                fifo=queue_spec.fifo or None, encryption=sqs.QueueEncryption.KMS, encryption_master_key=self.key,
                enforce_ssl=True, retention_period=retention,
                visibility_timeout=cdk.Duration.seconds(queue_spec.visibility_timeout_s),
                # Content dedup off: the envelope's stable message_id is the dedup id.
                content_based_deduplication=False if queue_spec.fifo else None,
                dead_letter_queue=sqs.DeadLetterQueue(queue=dlq, max_receive_count=queue_spec.max_receive_count))
            self.queues[queue_spec.name] = queue
            self.dlqs[queue_spec.name] = dlq

    # ---- tables -------------------------------------------------------------------
    def _tables(self) -> None:
        self.tables: dict[str, dynamodb.Table] = {}
        attribute = dynamodb.AttributeType.STRING
        for table_spec in spec.TABLES:
            table = dynamodb.Table(
                self, f"Table-{table_spec.name}", table_name=table_spec.physical_name(self.prefix),
                partition_key=dynamodb.Attribute(name=table_spec.partition_key, type=attribute),
                sort_key=dynamodb.Attribute(name=table_spec.sort_key, type=attribute) if table_spec.sort_key else None,
                billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
                encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED, encryption_key=self.key,
                point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                    point_in_time_recovery_enabled=True),
                time_to_live_attribute=table_spec.ttl_attribute, removal_policy=cdk.RemovalPolicy.RETAIN,
                deletion_protection=True)
            for index in table_spec.indexes:
                table.add_global_secondary_index(
                    index_name=index.name, partition_key=dynamodb.Attribute(name=index.partition_key, type=attribute),
                    sort_key=dynamodb.Attribute(name=index.sort_key, type=attribute) if index.sort_key else None)
            self.tables[table_spec.name] = table
        vault = backup.BackupVault(self, "BackupVault", encryption_key=self.key,
                                   removal_policy=cdk.RemovalPolicy.RETAIN)
        plan = backup.BackupPlan.daily_weekly_monthly5_year_retention(self, "BackupPlan", backup_vault=vault)
        Validations.of(plan).acknowledge(
            Acknowledgment(id="AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                              "AWSBackupServiceRolePolicyForBackup]",
                           reason="AWS Backup's service role policy is the documented minimum for backup jobs."),
            Acknowledgment(id="HIPAA.Security-IAMNoInlinePolicy",
                           reason="Backup selection role policy generated by CDK, attached only to that role."))
        plan.add_selection("Data", resources=[backup.BackupResource.from_dynamo_db_table(t)
                                              for t in self.tables.values()])

    # ---- layer --------------------------------------------------------------------
    def _layer(self) -> None:
        runtime = lambda_.Runtime(f"python{LAMBDA_PYTHON_VERSION}", lambda_.RuntimeFamily.PYTHON)
        self.runtime = runtime
        self.layer = lambda_.LayerVersion(
            self, "CoreLayer", description="ehrbridge library and its dependencies",
            compatible_runtimes=[runtime], compatible_architectures=[lambda_.Architecture.ARM_64],
            code=lambda_.Code.from_asset(str(LAYER_SOURCE), bundling=cdk.BundlingOptions(
                image=cdk.DockerImage.from_registry("unused-local-bundling-only"), local=PipLayerBundler())))

    # ---- helpers for capability constructs ----------------------------------------------
    def env_for(self, function: spec.FunctionSpec) -> dict[str, str]:
        """Environment of a function: physical names only (never secrets), same variable names as local mode."""
        env: dict[str, str] = {"POWERTOOLS_SERVICE_NAME": function.name, "POWERTOOLS_METRICS_NAMESPACE": "ehrbridge"}
        queue_names = set(function.produces) | ({function.consumes} if function.consumes else set())
        for name in sorted(queue_names):
            env[spec.queue(name).url_env] = self.queues[name].queue_url
            env[spec.queue(name).dlq_url_env] = self.dlqs[name].queue_url
        for name in function.tables:
            env[spec.table(name).name_env] = self.tables[name].table_name
        for name in function.buckets:
            env[spec.bucket(name).name_env] = self.buckets[name].bucket_name
        env.update(function.extra_env)
        return env


__all__ = ["LOG_RETENTION_DAYS", "CoreResources"]
