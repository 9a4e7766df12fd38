"""The MLLP/TLS bridge: Fargate tasks behind a Network Load Balancer with TCP passthrough.

TLS terminates in the container, so HL7 bytes stay encrypted all the way to the task and the
bridge sees the client certificate (needed to bind certificates to MSH-3/MSH-4). The NLB health
check is HTTP /readyz on the task's health port, never a probe of the TLS port. Certificate and
key come from Secrets Manager (the entrypoint loads them and hot-reloads rotations).

Context (cdk.json or -c): ``ehrbridge:mllpAllowedCidrs`` (comma-separated sender networks, default the
VPC), ``ehrbridge:mllpInternetFacing`` ("true" to put the NLB in public subnets; default internal, for
site-to-site VPN / Direct Connect), ``ehrbridge:bridgeImage`` (a pre-built image URI instead of building
bridge/Dockerfile at deploy).
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import Acknowledgment, Validations
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from ehrbridge import resources as spec
from ehrbridge.observability import names
from ehrbridge_infra.constants import REPO_ROOT
from ehrbridge_infra.constructs.core import CoreResources
from ehrbridge_infra.observability import insights, series

MLLP_PORT = 2575
HEALTH_PORT = 8080
SERVICE_NAME = "mllp-bridge"
DRAIN_TIMEOUT_S = 30
# Thresholds; each alarm has a runbook section in docs/runbooks/mllp-bridge.md.
NACK_RATE_ALARM = 0.05  # share of ACKs that are AE/AR/CE/CR over 5 minutes
ACK_P99_ALARM_MS = 1000
CERT_DAYS_ALARM = 21
ACK_STORE_FAILED_ALARM = 20  # failed ACK-store lookups/writes per 5 minutes, fleet-wide


class MllpBridgeService(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, core: CoreResources, desired_count: int = 2,
                 max_count: int = 10, cpu: int = 2048, memory_mib: int = 4096) -> None:
        super().__init__(scope, construct_id)
        vpc = core.vpc
        allowed = [c.strip() for c in str(self.node.try_get_context("ehrbridge:mllpAllowedCidrs") or "").split(",")
                   if c.strip()]
        internet_facing = str(self.node.try_get_context("ehrbridge:mllpInternetFacing") or "").lower() == "true"

        # ---- TLS material: {"certificate": PEM chain, "private_key": PEM, "client_ca": PEM bundle (mTLS)}
        self.tls_secret = secretsmanager.Secret(
            self, "TlsSecret", secret_name=f"{core.prefix}/mllp/tls", encryption_key=core.key,
            description="MLLP bridge server certificate, private key and client CA bundle (JSON, PEM values)")
        Validations.of(self.tls_secret).acknowledge(
            Acknowledgment(id="AwsSolutions-SMG4",
                           reason="An X.509 certificate is rotated by issuing a new one from the CA, not by a "
                                  "rotation Lambda; the bridge reloads a changed secret without a restart "
                                  "(docs/runbooks/mllp-bridge.md#certificate-rotation)."),
            Acknowledgment(id="HIPAA.Security-SecretsManagerRotationEnabled",
                           reason="Certificate rotation is a CA re-issue, hot-reloaded by the bridge (runbook)."))

        # ---- cluster, task, container
        self.cluster = ecs.Cluster(self, "Cluster", vpc=vpc,
                                   container_insights_v2=ecs.ContainerInsights.ENABLED)
        log_group = logs.LogGroup(self, "Logs", encryption_key=core.key, retention=logs.RetentionDays.ONE_YEAR,
                                  removal_policy=cdk.RemovalPolicy.RETAIN)
        task = ecs.FargateTaskDefinition(
            self, "Task", cpu=cpu, memory_limit_mib=memory_mib,
            runtime_platform=ecs.RuntimePlatform(cpu_architecture=ecs.CpuArchitecture.ARM64,
                                                 operating_system_family=ecs.OperatingSystemFamily.LINUX))
        # Read-only root filesystem: the TLS files and temp files live on task-local volumes.
        task.add_volume(name="tls")
        task.add_volume(name="tmp")
        image_uri = self.node.try_get_context("ehrbridge:bridgeImage")
        image = (ecs.ContainerImage.from_registry(image_uri) if image_uri else ecs.ContainerImage.from_asset(
            str(REPO_ROOT), file="bridge/Dockerfile", platform=ecr_assets.Platform.LINUX_ARM64,
            ignore_mode=cdk.IgnoreMode.DOCKER,
            exclude=["*", "!pyproject.toml", "!README.md", "!bridge", "!layers", "layers/**/__pycache__",
                     "layers/**/*.egg-info"]))
        function = spec.FunctionSpec(SERVICE_NAME, "MLLP bridge", consumes=None,
                                     produces=("hl7-inbound", "quarantine"), tables=("state",),
                                     buckets=("archive", "quarantine"))
        environment = {
            **core.env_for(function),
            "POWERTOOLS_SERVICE_NAME": SERVICE_NAME,
            "EHRBRIDGE_MLLP_TLS_SECRET_ID": self.tls_secret.secret_arn,
            "EHRBRIDGE_MLLP_TENANTS_FROM_STORE": "true",
            "EHRBRIDGE_MLLP_PORT": str(MLLP_PORT),
            "EHRBRIDGE_MLLP_HEALTH_PORT": str(HEALTH_PORT),
            "EHRBRIDGE_MLLP_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
            # One worker process per vCPU (Python uses one core per process); they share the ports.
            "EHRBRIDGE_MLLP_WORKERS": str(max(1, cpu // 1024)),
            "EHRBRIDGE_MLLP_TLS_DIR": "/run/ehrbridge-tls",
            "TMPDIR": "/tmp",  # noqa: S108 - a task-local volume, not a shared host directory
        }
        container = task.add_container(
            "bridge", image=image, environment=environment, readonly_root_filesystem=True,
            logging=ecs.LogDrivers.aws_logs(stream_prefix="bridge", log_group=log_group),
            port_mappings=[ecs.PortMapping(container_port=MLLP_PORT, protocol=ecs.Protocol.TCP),
                           ecs.PortMapping(container_port=HEALTH_PORT, protocol=ecs.Protocol.TCP)],
            # SIGTERM -> drain; SIGKILL only after the drain window.
            stop_timeout=cdk.Duration.seconds(DRAIN_TIMEOUT_S + 15),
            health_check=ecs.HealthCheck(
                command=["CMD", "python", "-c",
                         f"import urllib.request,sys;sys.exit(urllib.request.urlopen("
                         f"'http://127.0.0.1:{HEALTH_PORT}/healthz',timeout=2).status!=200)"],
                interval=cdk.Duration.seconds(15), timeout=cdk.Duration.seconds(5), retries=3,
                start_period=cdk.Duration.seconds(30)))
        container.add_mount_points(ecs.MountPoint(container_path="/run/ehrbridge-tls", source_volume="tls",
                                                  read_only=False),
                                   ecs.MountPoint(container_path="/tmp", source_volume="tmp",  # noqa: S108
                                                  read_only=False))
        Validations.of(task).acknowledge(
            Acknowledgment(id="AwsSolutions-ECS2",
                           reason="Environment variables carry physical resource names and settings only; the "
                                  "TLS key is read from Secrets Manager at start by the entrypoint."))

        # ---- least-privilege task role
        core.queues["hl7-inbound"].grant_send_messages(task.task_role)
        core.queues["quarantine"].grant_send_messages(task.task_role)
        core.buckets["archive"].grant_put(task.task_role)  # claim-checked bodies
        core.buckets["quarantine"].grant_put(task.task_role)
        core.tables["state"].grant_read_data(task.task_role)  # tenant configs
        # Resend replay (ehrbridge.mllp.ack_store): the bridge's own ACK items only. The conditional
        # TransactWriteItems is authorised as dynamodb:PutItem; the data key is granted above (SQS, S3).
        task.task_role.add_to_principal_policy(iam.PolicyStatement(
            actions=["dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:BatchWriteItem"],
            resources=[core.tables["state"].table_arn],
            conditions={"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["mllp-ack#*"]}}))
        self.tls_secret.grant_read(task.task_role)
        stack = cdk.Stack.of(self)

        def arn_of(bucket_name: str) -> str:
            return stack.get_logical_id(core.buckets[bucket_name].node.default_child)  # type: ignore[arg-type]

        Validations.of(task.task_role).acknowledge(
            Acknowledgment(id="AwsSolutions-IAM5[Action::kms:GenerateDataKey*]",
                           reason="Encrypting SQS messages and S3 objects with the one data key (CDK grant)."),
            Acknowledgment(id="AwsSolutions-IAM5[Action::kms:ReEncrypt*]",
                           reason="Part of CDK's encrypt grant on the data key for SSE-KMS writes."),
            Acknowledgment(id="AwsSolutions-IAM5[Action::s3:Abort*]",
                           reason="Aborting its own multipart uploads of large claim-checked bodies (CDK grant_put)."),
            *(Acknowledgment(id=f"AwsSolutions-IAM5[Resource::<{arn_of(name)}.Arn>/*]",
                             reason=f"Objects of the {name} bucket; keys are per tenant and message.")
              for name in ("archive", "quarantine")),
            Acknowledgment(id="HIPAA.Security-IAMNoInlinePolicy",
                           reason="Task role policy generated by CDK grants, attached only to this role."))
        Validations.of(task).acknowledge(
            Acknowledgment(id="AwsSolutions-IAM5[Resource::*]",
                           reason="Execution role: ecr:GetAuthorizationToken has no resource-level scoping."),
            Acknowledgment(id="HIPAA.Security-IAMNoInlinePolicy",
                           reason="Execution role policy generated by CDK (image pull, log delivery), one role."))

        # ---- network: NLB (TCP passthrough) -> tasks in private subnets
        self.task_security_group = ec2.SecurityGroup(self, "TaskSg", vpc=vpc, allow_all_outbound=False,
                                                     description="MLLP bridge tasks")
        self.task_security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "AWS APIs over HTTPS")
        self.lb_security_group = ec2.SecurityGroup(self, "LbSg", vpc=vpc, allow_all_outbound=False,
                                                   description="MLLP load balancer")
        for cidr in allowed or [vpc.vpc_cidr_block]:
            if cidr in ("0.0.0.0/0", "::/0"):
                raise ValueError("ehrbridge:mllpAllowedCidrs must name sender networks, not the whole internet")
            self.lb_security_group.add_ingress_rule(ec2.Peer.ipv4(cidr), ec2.Port.tcp(MLLP_PORT),
                                                    "MLLP over TLS from sender networks")
        why = ("Ingress is only TCP 2575 from the VPC CIDR or the configured sender networks (0.0.0.0/0 is "
               "refused above); the rule cannot evaluate the VPC CIDR token.")
        Validations.of(self.lb_security_group).acknowledge(
            Acknowledgment(id="AwsSolutions-EC23", reason=why),
            Acknowledgment(id="HIPAA.Security-EC2RestrictedCommonPorts", reason=why),
            Acknowledgment(id="HIPAA.Security-EC2RestrictedSSH", reason=why))
        self.lb_security_group.add_egress_rule(self.task_security_group, ec2.Port.tcp(MLLP_PORT), "to tasks")
        self.lb_security_group.add_egress_rule(self.task_security_group, ec2.Port.tcp(HEALTH_PORT), "health checks")
        self.task_security_group.add_ingress_rule(self.lb_security_group, ec2.Port.tcp(MLLP_PORT), "from the NLB")
        self.task_security_group.add_ingress_rule(self.lb_security_group, ec2.Port.tcp(HEALTH_PORT),
                                                  "NLB health checks")

        self.service = ecs.FargateService(
            self, "Service", cluster=self.cluster, task_definition=task, desired_count=desired_count,
            security_groups=[self.task_security_group], assign_public_ip=False,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            min_healthy_percent=100, max_healthy_percent=200,
            circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
            health_check_grace_period=cdk.Duration.seconds(60))

        self.load_balancer = elbv2.NetworkLoadBalancer(
            self, "Nlb", vpc=vpc, internet_facing=internet_facing, cross_zone_enabled=True,
            deletion_protection=True, security_groups=[self.lb_security_group],
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC if internet_facing
                                            else ec2.SubnetType.PRIVATE_WITH_EGRESS))
        Validations.of(self.load_balancer).acknowledge(
            Acknowledgment(id="AwsSolutions-ELB2",
                           reason="NLB access logs exist only for TLS listeners; this listener is TCP passthrough "
                                  "by design (TLS ends in the task to bind client certificates to senders). The "
                                  "bridge logs and counts every connection, handshake failure and ACK; VPC flow "
                                  "logs record the flows."),
            Acknowledgment(id="HIPAA.Security-ELBLoggingEnabled",
                           reason="TCP passthrough listener: see AwsSolutions-ELB2; bridge metrics and flow logs."))
        # TCP idle timeout above the bridge's keepalive (60 s) and well above typical quiet periods.
        listener = self.load_balancer.add_listener("Mllp", port=MLLP_PORT, protocol=elbv2.Protocol.TCP,
                                                   tcp_idle_timeout=cdk.Duration.seconds(3600))
        Validations.of(listener).acknowledge(Acknowledgment(
            id="HIPAA.Security-ELBv2ACMCertificateRequired",
            reason="TLS 1.2+ terminates in the task (TCP passthrough) so the bridge can verify and bind client "
                   "certificates; ACM keys cannot be exported to a task. The certificate lives in Secrets "
                   "Manager, encrypted with the data key."))
        self.target_group = listener.add_targets(
            "Tasks", port=MLLP_PORT, protocol=elbv2.Protocol.TCP,
            targets=[self.service.load_balancer_target(container_name="bridge", container_port=MLLP_PORT)],
            deregistration_delay=cdk.Duration.seconds(DRAIN_TIMEOUT_S + 10),
            health_check=elbv2.HealthCheck(protocol=elbv2.Protocol.HTTP, port=str(HEALTH_PORT), path="/readyz",
                                           interval=cdk.Duration.seconds(10), healthy_threshold_count=2,
                                           unhealthy_threshold_count=2))

        # ---- autoscaling
        scaling = self.service.auto_scale_task_count(min_capacity=desired_count, max_capacity=max_count)
        scaling.scale_on_cpu_utilization("Cpu", target_utilization_percent=60,
                                         scale_in_cooldown=cdk.Duration.minutes(5),
                                         scale_out_cooldown=cdk.Duration.minutes(1))

        # ---- alarms (runbook: docs/runbooks/mllp-bridge.md)
        action = cw_actions.SnsAction(core.alarm_topic)
        period = cdk.Duration.minutes(5)

        def acks(code: str) -> cw.Metric:
            return series(names.MLLP_ACKS, "Sum", {"service": SERVICE_NAME, "message_type": code}, period=period)

        bad = {f"n{c}": acks(c) for c in names.ACK_CODES_NACK}
        good = {f"p{c}": acks(c) for c in names.ACK_CODES_OK}
        nack_rate = cw.MathExpression(
            expression=f"({' + '.join(f'FILL({k}, 0)' for k in bad)}) / "
                       f"MAX([1, {' + '.join(f'FILL({k}, 0)' for k in (*bad, *good))}])",
            using_metrics={**bad, **good}, period=period, label="NACK share")
        self.alarms: list[cw.Alarm] = []
        self.alarms.append(nack_rate.create_alarm(
            self, "NackRate", threshold=NACK_RATE_ALARM, evaluation_periods=2,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            alarm_description="More than 5% of HL7 ACKs are AE/AR (runbook: docs/runbooks/mllp-bridge.md#nack-rate)"))
        latency = series(names.MLLP_ACK_LATENCY, "p99", {"service": SERVICE_NAME}, period=period)
        self.alarms.append(latency.create_alarm(
            self, "AckLatencyP99", threshold=ACK_P99_ALARM_MS, evaluation_periods=3, datapoints_to_alarm=2,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            alarm_description="ACK latency p99 above 1 s (runbook: docs/runbooks/mllp-bridge.md#ack-latency)"))
        healthy = self.target_group.metrics.healthy_host_count(period=cdk.Duration.minutes(1), statistic="Minimum")
        self.alarms.append(healthy.create_alarm(
            self, "NoHealthyTasks", threshold=1, evaluation_periods=2,
            comparison_operator=cw.ComparisonOperator.LESS_THAN_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.BREACHING,
            alarm_description="No healthy MLLP bridge task behind the NLB "
                              "(runbook: docs/runbooks/mllp-bridge.md#no-healthy-tasks)"))
        cert_days = series(names.MLLP_CERT_DAYS_TO_EXPIRY, "Minimum", {"service": SERVICE_NAME},
                           period=cdk.Duration.hours(1))
        self.alarms.append(cert_days.create_alarm(
            self, "CertExpiring", threshold=CERT_DAYS_ALARM, evaluation_periods=1,
            comparison_operator=cw.ComparisonOperator.LESS_THAN_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            alarm_description="The MLLP server certificate expires in less than 21 days "
                              "(runbook: docs/runbooks/mllp-bridge.md#certificate-rotation)"))
        # Every failure code (read_*/write_*) in one series: a Metrics Insights query needs no code list.
        store_failed = insights(names.MLLP_ACK_STORE_FAILED, "SUM", "ACK store failures", period=period,
                                fleet=True, where={"service": SERVICE_NAME})
        self.alarms.append(store_failed.create_alarm(
            self, "AckStoreFailing", threshold=ACK_STORE_FAILED_ALARM, evaluation_periods=3, datapoints_to_alarm=2,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            alarm_description="The MLLP ACK store (state table) keeps failing: resends get fresh ACKs, lookups are "
                              "skipped (runbook: docs/runbooks/mllp-bridge.md#ack-store-failing)"))
        for alarm in self.alarms:
            alarm.add_alarm_action(action)
            alarm.add_ok_action(action)

        cdk.CfnOutput(self, "MllpEndpoint", value=f"{self.load_balancer.load_balancer_dns_name}:{MLLP_PORT}",
                      description="Where interface engines connect (MLLP over TLS)")
        cdk.CfnOutput(self, "TlsSecretArn", value=self.tls_secret.secret_arn,
                      description="Put the bridge certificate/key JSON here before the first deploy completes")
