"""Issue 15 items 5 and 8: every cdk-nag acknowledgement holds, in every shape of synth a user meets.

Each acknowledgement's reason is a claim about the template. The claims that the template can show are
checked here against it; the rest were reviewed by hand and are listed with what they rest on. A new
acknowledgement fails ``test_every_acknowledgement_is_reviewed`` until it is added to one of the two.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from ehrbridge import resources
from tests.infra.conftest import Synth, nag_findings

pytestmark = [pytest.mark.infra, pytest.mark.xdist_group("infra")]


def _props(synth: Synth, cfn_type: str) -> list[dict]:
    return [r.get("Properties", {}) for r in synth.resources(cfn_type).values()]


def _public_subnets(synth: Synth) -> set[str]:
    return {k for k, v in synth.resources("AWS::EC2::Subnet").items()
            if any(t["Key"] == "aws-cdk:subnet-type" and t["Value"] == "Public" for t in v["Properties"]["Tags"])}


def vpc_public_subnets_hold_no_compute(synth: Synth) -> None:
    public = _public_subnets(synth)
    assert public
    for props in _props(synth, "AWS::Lambda::Function"):
        if "VpcConfig" in props:
            assert not {s["Ref"] for s in props["VpcConfig"]["SubnetIds"]} & public
    for props in _props(synth, "AWS::ECS::Service"):
        subnets = props["NetworkConfiguration"]["AwsvpcConfiguration"]["Subnets"]
        assert not {s["Ref"] for s in subnets} & public
    for props in _props(synth, "AWS::ElasticLoadBalancingV2::LoadBalancer"):
        in_public = bool({s["Ref"] for s in props["Subnets"]} & public)
        assert in_public == (props["Scheme"] == "internet-facing")


def nat_gateway_in_public_subnet(synth: Synth) -> None:
    public = _public_subnets(synth)
    assert all(p["SubnetId"]["Ref"] in public for p in _props(synth, "AWS::EC2::NatGateway"))


def data_buckets_versioned_retained_backup_tables_only(synth: Synth) -> None:
    buckets = {k: v for k, v in synth.resources("AWS::S3::Bucket").items()}
    for logical_id, bucket in buckets.items():
        assert bucket["Properties"]["VersioningConfiguration"]["Status"] == "Enabled", logical_id
        assert bucket["DeletionPolicy"] == "Retain", logical_id
        expiring = [r for r in bucket["Properties"].get("LifecycleConfiguration", {}).get("Rules", [])
                    if "NoncurrentVersionExpiration" in r or "NoncurrentVersionExpirationInDays" in r]
        assert not expiring, logical_id  # old versions are kept
    selected = json.dumps([p["BackupSelection"]["Resources"] for p in _props(synth, "AWS::Backup::BackupSelection")])
    assert "CoreTable" in selected and "CoreBucket" not in selected  # "AWS Backup covers the tables only"


def dlqs_alarmed_on_depth(synth: Synth) -> None:
    queues = {q["Properties"]["QueueName"]: k for k, q in synth.resources("AWS::SQS::Queue").items()}
    alarmed = json.dumps([p.get("Dimensions") for p in _props(synth, "AWS::CloudWatch::Alarm")
                          if p.get("MetricName") == "ApproximateNumberOfMessagesVisible"])
    for spec in resources.QUEUES:
        assert queues[spec.dlq_physical_name()] in alarmed, spec.name


def no_user_or_group_policies(synth: Synth) -> None:
    for cfn_type in ("AWS::IAM::User", "AWS::IAM::Group"):
        assert not synth.resources(cfn_type)
    for props in _props(synth, "AWS::IAM::Policy"):
        assert props.get("Roles") and not props.get("Users") and not props.get("Groups")


def functions_on_sqs_have_a_source_dlq(synth: Synth) -> None:
    queues = synth.resources("AWS::SQS::Queue")
    for mapping in _props(synth, "AWS::Lambda::EventSourceMapping"):
        source = mapping["EventSourceArn"]["Fn::GetAtt"][0]
        assert "RedrivePolicy" in queues[source]["Properties"]


def _schedule_of(synth: Synth, function_path: str) -> dict:
    """The one schedule whose target is the function under ``function_path`` (e.g. "TokenRefreshRefresher")."""
    functions = {k for k in synth.resources("AWS::Lambda::Function") if k.startswith(function_path)}
    assert len(functions) == 1, (function_path, functions)
    [schedule] = [p for p in _props(synth, "AWS::Scheduler::Schedule")
                  if p["Target"]["Arn"].get("Fn::GetAtt", [None])[0] in functions]
    return schedule


def _without_retries_every_minute(schedule: dict) -> None:
    assert schedule["Target"]["RetryPolicy"]["MaximumRetryAttempts"] == 0
    assert schedule["ScheduleExpression"] == "rate(1 minute)"


def schedule_without_retries(synth: Synth) -> None:
    _without_retries_every_minute(_schedule_of(synth, "TokenRefreshRefresher"))


def dispatcher_schedule_without_retries_and_stale_alarm(synth: Synth) -> None:
    """"Every minute without retries ... a pair that stays undispatched alarms as stale"."""
    _without_retries_every_minute(_schedule_of(synth, "PollingDispatcher"))
    stale = [p for p in _props(synth, "AWS::CloudWatch::Alarm")
             if any("PollStalenessRatio" in m.get("Expression", "") for m in p.get("Metrics", []))]
    assert len(stale) == 1 and stale[0]["AlarmActions"], stale


def nlb_listener_is_tcp_passthrough(synth: Synth) -> None:
    listeners = _props(synth, "AWS::ElasticLoadBalancingV2::Listener")
    assert listeners and all(p["Protocol"] == "TCP" for p in listeners)
    flow_logs = _props(synth, "AWS::EC2::FlowLog")
    assert flow_logs and all(p["TrafficType"] == "ALL" for p in flow_logs)


def tls_secret_on_the_data_key(synth: Synth) -> None:
    [secret] = [p for p in _props(synth, "AWS::SecretsManager::Secret") if str(p.get("Name", "")).endswith("/mllp/tls")]
    assert "CoreDataKey" in json.dumps(secret["KmsKeyId"])


def mllp_ingress_only_from_sender_networks(synth: Synth) -> None:
    [lb_sg] = [p for p in _props(synth, "AWS::EC2::SecurityGroup") if p["GroupDescription"] == "MLLP load balancer"]
    rules = lb_sg["SecurityGroupIngress"]
    assert rules and all(r["FromPort"] == r["ToPort"] == 2575 and r.get("CidrIp") != "0.0.0.0/0" for r in rules)


def jwks_cdn_logs_every_request_and_is_read_only(synth: Synth) -> None:
    [config] = [p["DistributionConfig"] for p in _props(synth, "AWS::CloudFront::Distribution")]
    assert config["Logging"]["Bucket"]  # viewer requests, cache hits included
    assert config["DefaultCacheBehavior"]["AllowedMethods"] == ["GET", "HEAD"]
    assert "ViewerCertificate" not in config or "AcmCertificateArn" not in config["ViewerCertificate"]


def _secret_statements(synth: Synth, policy_prefix: str) -> list[dict]:
    statements = [s for k, p in synth.resources("AWS::IAM::Policy").items() if k.startswith(policy_prefix)
                  for s in p["Properties"]["PolicyDocument"]["Statement"]]
    found = [s for s in statements if any(str(a).startswith("secretsmanager:") for a in
                                          ([s["Action"]] if isinstance(s["Action"], str) else s["Action"]))]
    assert found, policy_prefix
    for statement in found:
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        assert all("ehrbridge/tenants/" in json.dumps(r) for r in resources), statement
    return found


def refresher_secret_scope(synth: Synth) -> None:
    _secret_statements(synth, "TokenRefreshRefresher")


def poller_secret_scope(synth: Synth) -> None:
    """Reads tenant secrets only; writes nothing but per-tenant token secrets."""
    for statement in _secret_statements(synth, "PollingPoller"):
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        if set(actions) - {"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"}:
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            assert all(json.dumps(r).rstrip('"]}').endswith("/token-*") for r in resources), statement


# (construct path suffix, rule prefix) -> the check that makes the reason true of the template.
CHECKED: dict[tuple[str, str], Callable[[Synth], None]] = {
    ("Core/Vpc", "HIPAA.Security-VPCNoUnrestrictedRouteToIGW"): vpc_public_subnets_hold_no_compute,
    ("Core/Bucket-", "HIPAA.Security-S3BucketReplicationEnabled"): data_buckets_versioned_retained_backup_tables_only,
    ("Core/Dlq-", "AwsSolutions-SQS3"): dlqs_alarmed_on_depth,
    ("", "HIPAA.Security-IAMNoInlinePolicy"): no_user_or_group_policies,
    ("Pipeline/", "HIPAA.Security-LambdaDLQ"): functions_on_sqs_have_a_source_dlq,
    ("TokenRefresh/Refresher", "HIPAA.Security-LambdaDLQ"): schedule_without_retries,
    ("TokenRefresh/Refresher", "AwsSolutions-IAM5[Resource::arn:"): refresher_secret_scope,
    ("Polling/Dispatcher", "HIPAA.Security-LambdaDLQ"): dispatcher_schedule_without_retries_and_stale_alarm,
    ("Polling/Poller", "HIPAA.Security-LambdaDLQ"): functions_on_sqs_have_a_source_dlq,
    ("Polling/Poller", "AwsSolutions-IAM5[Resource::arn:"): poller_secret_scope,
    ("MllpBridge/Nlb", "AwsSolutions-ELB2"): nlb_listener_is_tcp_passthrough,
    ("MllpBridge/Nlb", "HIPAA.Security-ELBLoggingEnabled"): nlb_listener_is_tcp_passthrough,
    ("MllpBridge/Nlb/Mllp", "HIPAA.Security-ELBv2ACMCertificateRequired"): tls_secret_on_the_data_key,
    ("MllpBridge/LbSg", ""): mllp_ingress_only_from_sender_networks,
    ("TokenRefresh/JwksCdn", "AwsSolutions-CFR"): jwks_cdn_logs_every_request_and_is_read_only,
}
# Reviewed by hand (2026-12, issue 15): true, but not visible in the template alone.
REVIEWED: dict[tuple[str, str], str] = {
    ("/dev/ehrbridge", "CloudFormation-Validate::W3010"): "AZs named by EhrbridgeStack.availability_zones "
                                                          "(test_concrete_environment_synth_needs_no_account_lookup)",
    ("Core/Vpc/all", "CloudFormation-Validate::F300"): "CDK's own: FlowLog DestinationOptions casing",
    ("Core/AccessLogs", "CloudFormation-Validate::W3045"): "CDK's own: AccessControl for log delivery",
    ("Core/AccessLogs", ""): "the server access log bucket: SSE-S3 and no self-logging are AWS requirements",
    ("Core/BackupPlan", ""): "AWS Backup's managed service-role policy; the selection role CDK generates",
    ("", "AwsSolutions-IAM5[Resource::*]"): "ENI/X-Ray/ecr:GetAuthorizationToken have no resource scoping",
    ("", "AwsSolutions-IAM5[Resource::<"): "object keys, index names and versions under one named resource",
    ("MllpBridge/Task/TaskRole", "AwsSolutions-IAM5[Action::"): "CDK grant_put / encrypt action groups",
    ("TokenRefresh/SchedulerRole", ""): "CDK's invoke grant on the refresher, on the scheduler's own role",
    ("Polling/SchedulerRole", ""): "CDK's invoke grant on the dispatcher, on the scheduler's own role",
    ("TokenRefresh/JwksBucket", ""): "public keys, derivable from the credentials secrets (tenants/keys.py)",
    ("MllpBridge/TlsSecret", ""): "certificate re-issued by the CA; bridge/entrypoint.py re-reads and SIGHUPs",
    ("MllpBridge/Task", "AwsSolutions-ECS2"): "test_mllp_bridge: no key material in the environment",
    ("MllpBridge/Task", "HIPAA.Security-IAMNoInlinePolicy"): "execution role policy CDK generates",
}


def _match(table: dict, path: str, rule: str) -> list:
    rule = rule.removeprefix("Annotation::")
    return [value for (path_part, rule_prefix), value in table.items()
            if path_part in path and rule.startswith(rule_prefix)]


def _every_acknowledgement_is_reviewed(synth: Synth) -> None:
    acknowledged = synth.acknowledgements()
    assert len(acknowledged) > 50
    unreviewed = [f"{path} {rule}" for path, rule in acknowledged
                  if not _match(CHECKED, path, rule) and not _match(REVIEWED, path, rule)]
    assert unreviewed == []
    short = {k: v for k, v in acknowledged.items() if len(v.strip()) < 20}
    assert short == {}


def _checked_reasons_hold(synth: Synth) -> None:
    acknowledged = synth.acknowledgements()
    ran = set()
    for path, rule in acknowledged:
        for check in _match(CHECKED, path, rule):
            if check not in ran:
                check(synth)
                ran.add(check)
    assert len(ran) == len(set(CHECKED.values()))


def test_every_acknowledgement_is_reviewed(synth: Synth) -> None:
    _every_acknowledgement_is_reviewed(synth)


def test_checked_reasons_hold_environment_agnostic(synth: Synth) -> None:
    _checked_reasons_hold(synth)


def test_no_reason_claims_what_the_template_lacks(synth: Synth) -> None:
    reasons = " ".join(synth.acknowledgements().values())
    # The three false claims of issue 15 item 5.
    assert "versioning and AWS Backup cover" not in reasons
    assert "they hold the NAT gateway and the MLLP load balancer" not in reasons
    assert "logged by the bucket's server access logs" not in reasons


@pytest.mark.timeout(900)
def test_concrete_account_and_region_with_bundling_passes_cdk_nag(synth_deployed: Synth) -> None:
    """Item 8: what ``CDK_DEFAULT_ACCOUNT=... CDK_DEFAULT_REGION=... make synth`` produces is nag-clean."""
    assert nag_findings(synth_deployed.outdir) == []
    assert "123456789012" in json.dumps(synth_deployed.template)
    _every_acknowledgement_is_reviewed(synth_deployed)
    _checked_reasons_hold(synth_deployed)
    # The refresher's IAM5 acknowledgements name the concrete ARNs in this shape.
    rules = [rule for (path, rule) in synth_deployed.acknowledgements() if "TokenRefresh/Refresher" in path]
    assert any(":us-east-1:123456789012:secret:ehrbridge/tenants/*" in r for r in rules), rules
    rules = [rule for (path, rule) in synth_deployed.acknowledgements() if "Polling/Poller" in path]
    assert any(":us-east-1:123456789012:secret:ehrbridge/tenants/*/token-*" in r for r in rules), rules
