"""SMART token refresh: the scheduled function, its least-privilege access to tenant secrets, its
alarms, and the published JWKS (CloudFront in front of a private bucket).

- EventBridge Scheduler invokes ``token_refresh`` every minute (one schedule; the function decides
  which tenants are due). No retries: the next run comes within a minute anyway.
- The role reads only ``ehrbridge/tenants/*`` secrets and writes only their ``token`` (and, for
  rotating refresh tokens, ``credentials``) secrets; KMS on the data key; the state table.
- Alarms (runbook: docs/runbooks/onboarding-a-tenant.md#alarms): consecutive refresh failures,
  401 clusters per tenant, 401 after refresh, a token close to expiry, 403-denied resource types,
  and the refresher not running at all.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import Acknowledgment, Validations
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudfront_origins as origins
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from ehrbridge import resources as spec
from ehrbridge.contracts.tenant import SECRET_PREFIX
from ehrbridge.observability import names
from ehrbridge_infra.constructs.core import CoreResources
from ehrbridge_infra.constructs.function import PipelineFunction
from ehrbridge_infra.constructs.schedule import every_minute
from ehrbridge_infra.nag import iam5_resource
from ehrbridge_infra.observability import insights

RUNBOOK = "docs/runbooks/onboarding-a-tenant.md#alarms"


def _insights(aggregate: str, metric: names.MetricName, label: str, *, worst_tenant: bool = False) -> cw.MathExpression:
    """Metrics Insights over every tenant (tenants are data, not deploy-time constants), on the metric's
    emitted dimension set. ``worst_tenant``: group by tenant and keep the top one, so a cluster at one
    tenant alarms."""
    return insights(metric, aggregate, label, group_by=("tenant",) if worst_tenant else (),
                    top=1 if worst_tenant else None)


class TokenRefresh(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, core: CoreResources,
                 failure_threshold: int = 3, unauthorized_threshold: int = 5,
                 token_ratio_threshold: float = 0.1) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        fn_spec = spec.function("token_refresh")
        self.refresher = PipelineFunction(self, "Refresher", core=core, function=fn_spec, reserved_concurrency=1)
        fn = self.refresher.function
        fn.add_environment("EHRBRIDGE_KMS_KEY_ID", core.key.key_arn)  # a key id, not a secret

        # ---- least privilege: tenant secrets only -------------------------------------------
        secrets_arn = f"arn:{stack.partition}:secretsmanager:{stack.region}:{stack.account}:secret:{SECRET_PREFIX}"
        role = self.refresher.role
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
            resources=[f"{secrets_arn}/*"]))
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["secretsmanager:PutSecretValue", "secretsmanager:CreateSecret", "secretsmanager:TagResource"],
            resources=[f"{secrets_arn}/*/token-*", f"{secrets_arn}/*/credentials-*"]))
        # The tenant list is a scan of the state table's config items.
        role.add_to_principal_policy(iam.PolicyStatement(actions=["dynamodb:Scan"],
                                                         resources=[core.tables["state"].table_arn]))
        # Ids rendered from the same ARNs: they match with and without a concrete account/region.
        Validations.of(self.refresher).acknowledge(
            Acknowledgment(id=iam5_resource(stack, f"{secrets_arn}/*"),
                           reason="Reads the secrets of every onboarded tenant (tenants are added at runtime) "
                                  "and nothing outside the ehrbridge/tenants/ prefix."),
            Acknowledgment(id=iam5_resource(stack, f"{secrets_arn}/*/token-*"),
                           reason="Writes only the per-tenant token secrets (the suffix is Secrets Manager's)."),
            Acknowledgment(id=iam5_resource(stack, f"{secrets_arn}/*/credentials-*"),
                           reason="Stores a rotated refresh token where a vendor app issues them."),
            Acknowledgment(id="HIPAA.Security-LambdaDLQ",
                           reason="Invoked by EventBridge Scheduler every minute without retries: a failed run is "
                                  "superseded by the next one, and failures alarm (Errors, refresh failures)."))

        # ---- schedule ----------------------------------------------------------------------
        self.schedule = every_minute(self, fn, function_label="token_refresh",
                                     description="ehrbridge: refresh SMART tokens that are due")

        # ---- alarms -----------------------------------------------------------------------
        action = cw_actions.SnsAction(core.alarm_topic)
        self.alarms: dict[str, cw.Alarm] = {}

        def alarm(name: str, metric: cw.IMetric, threshold: float, comparison: cw.ComparisonOperator,
                  description: str, evaluation_periods: int = 1,
                  missing: cw.TreatMissingData = cw.TreatMissingData.NOT_BREACHING) -> None:
            created = cw.Alarm(self, name, metric=metric, threshold=threshold, comparison_operator=comparison,
                               evaluation_periods=evaluation_periods, treat_missing_data=missing,
                               alarm_description=f"{description} (runbook: {RUNBOOK}-{name.lower()})")
            created.add_alarm_action(action)
            self.alarms[name] = created

        ge = cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD
        alarm("RefreshFailures", _insights("MAX", names.TOKEN_REFRESH_CONSECUTIVE_FAILURES,
                                           "worst consecutive refresh failures"),
              failure_threshold, ge, f"a tenant's token refresh failed {failure_threshold}+ times in a row")
        alarm("Unauthorized401Cluster",
              _insights("SUM", names.UNAUTHORIZED_401, "401s of the worst tenant", worst_tenant=True),
              unauthorized_threshold, ge, f"{unauthorized_threshold}+ FHIR 401s for one tenant in 5 minutes")
        alarm("UnauthorizedAfterRefresh", _insights("SUM", names.UNAUTHORIZED_AFTER_REFRESH, "401 after a fresh token"),
              1, ge, "a freshly refreshed token was refused: credentials revoked or app disabled at the site")
        # Relative to each tenant's own lifetime: a vendor issuing 30 s tokens is healthy at 20 s left,
        # one issuing 1 h tokens is not. The refresher emits the ratio (seconds left / lifetime).
        alarm("TokenAge", _insights("MIN", names.TOKEN_LIFETIME_REMAINING_RATIO,
                                    "least share of its lifetime left on any token"),
              token_ratio_threshold, cw.ComparisonOperator.LESS_THAN_THRESHOLD,
              f"a tenant's token has under {token_ratio_threshold:.0%} of its lifetime left (or has expired) "
              "twice in a row without being refreshed", evaluation_periods=2)
        alarm("ResourceDenied", _insights("SUM", names.RESOURCE_DENIED, "403 denials"),
              1, ge, "a FHIR server answered 403 for a granted resource type; the type is skipped until fixed")
        alarm("RefresherNotRunning", fn.metric_invocations(period=cdk.Duration.minutes(5), statistic="Sum"),
              1, cw.ComparisonOperator.LESS_THAN_THRESHOLD, "the token refresher has not run for 5 minutes",
              missing=cw.TreatMissingData.BREACHING)

        # ---- JWKS publishing ------------------------------------------------------------------
        # Public keys only (no PHI, nothing secret): SSE-S3 so CloudFront can read it without the
        # data key ever being shared with the CDN.
        self.jwks_bucket = s3.Bucket(
            self, "JwksBucket", encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL, enforce_ssl=True, versioned=True,
            server_access_logs_bucket=core.access_logs, server_access_logs_prefix="jwks/",
            removal_policy=cdk.RemovalPolicy.RETAIN)
        Validations.of(self.jwks_bucket).acknowledge(
            Acknowledgment(id="HIPAA.Security-S3DefaultEncryptionKMS",
                           reason="Holds public JWKS only, served through CloudFront; SSE-S3 keeps the PHI data "
                                  "key away from the CDN."),
            Acknowledgment(id="HIPAA.Security-S3BucketReplicationEnabled",
                           reason="Public keys are reproducible from the credentials secrets; versioning covers "
                                  "recovery."))
        self.jwks_distribution = cloudfront.Distribution(
            self, "JwksCdn", comment="ehrbridge JWKS (public keys for SMART client assertions)",
            default_behavior=cloudfront.BehaviorOptions(
                origin=origins.S3BucketOrigin.with_origin_access_control(self.jwks_bucket),
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.HTTPS_ONLY,
                allowed_methods=cloudfront.AllowedMethods.ALLOW_GET_HEAD,
                cache_policy=cloudfront.CachePolicy.CACHING_OPTIMIZED),
            minimum_protocol_version=cloudfront.SecurityPolicyProtocol.TLS_V1_2_2021,
            price_class=cloudfront.PriceClass.PRICE_CLASS_100,
            # Every viewer request, cache hits included (the bucket's own logs see only origin fetches).
            enable_logging=True, log_bucket=core.access_logs, log_file_prefix="cloudfront/jwks/")
        Validations.of(self.jwks_distribution).acknowledge(
            Acknowledgment(id="AwsSolutions-CFR1",
                           reason="EHR vendors fetch the JWKS from their own regions; public keys need no geo "
                                  "restriction."),
            Acknowledgment(id="AwsSolutions-CFR2",
                           reason="Serves one static public JSON document per tenant (GET/HEAD only, from an S3 "
                                  "origin); there is no application behind it for a WAF to protect."),
            Acknowledgment(id="AwsSolutions-CFR4",
                           reason="Uses the default *.cloudfront.net certificate, with which CloudFront sets the "
                                  "viewer TLS policy itself; the content is public keys. To enforce TLSv1.2_2021, "
                                  "attach an ACM certificate and alias per deployment "
                                  "(docs/runbooks/key-rotation.md)."))
        cdk.CfnOutput(self, "JwksBucketName", value=self.jwks_bucket.bucket_name,
                      description="EHRBRIDGE_JWKS_BUCKET for `ehrbridge keys rotate`")
        cdk.CfnOutput(self, "JwksBaseUrl", value=f"https://{self.jwks_distribution.distribution_domain_name}",
                      description="JWKS URL = {base}/jwks/{tenant_id}/jwks.json (register with the vendor)")


def _logical_id(stack: cdk.Stack, construct: Construct) -> str:
    return stack.resolve(stack.get_logical_id(construct.node.default_child))  # type: ignore[arg-type,no-any-return]
