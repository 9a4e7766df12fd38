"""The token_refresh construct in the synthesized stack: schedule, least privilege, alarms, JWKS."""

from __future__ import annotations

import json

import pytest

from tests.infra.conftest import Synth

pytestmark = [pytest.mark.infra, pytest.mark.xdist_group("infra")]


def _refresher_function(synth: Synth) -> dict:
    functions = {k: v for k, v in synth.resources("AWS::Lambda::Function").items()
                 if v["Properties"].get("Environment", {}).get("Variables", {}).get("POWERTOOLS_SERVICE_NAME")
                 == "token_refresh"}
    assert len(functions) == 1
    return next(iter(functions.values()))


def test_scheduled_every_minute_without_retries(synth: Synth) -> None:
    schedules = list(synth.resources("AWS::Scheduler::Schedule").values())
    refresh = [s for s in schedules if "token" in s["Properties"].get("Description", "")]
    assert len(refresh) == 1
    props = refresh[0]["Properties"]
    assert props["ScheduleExpression"] == "rate(1 minute)" and props["State"] == "ENABLED"
    assert props["Target"]["RetryPolicy"]["MaximumRetryAttempts"] == 0


def test_environment_holds_names_only_never_secrets(synth: Synth) -> None:
    variables = _refresher_function(synth)["Properties"]["Environment"]["Variables"]
    assert set(variables) == {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "EHRBRIDGE_TABLE_STATE",
                              "EHRBRIDGE_KMS_KEY_ID"}
    text = json.dumps(variables).lower()
    assert "secret" not in text and "token" not in text.replace("token_refresh", "")


def test_role_reaches_only_tenant_secrets(synth: Synth) -> None:
    role_policies = [p for k, p in synth.resources("AWS::IAM::Policy").items() if "TokenRefreshRefresher" in k]
    statements = [s for p in role_policies for s in p["Properties"]["PolicyDocument"]["Statement"]]
    secret_statements = [s for s in statements if any(str(a).startswith("secretsmanager:")
                                                      for a in _list(s["Action"]))]
    assert secret_statements
    for statement in secret_statements:
        for resource in _list(statement["Resource"]):
            assert json.dumps(resource).endswith((':secret:ehrbridge/tenants/*"]]}',
                                                  ':secret:ehrbridge/tenants/*/token-*"]]}',
                                                  ':secret:ehrbridge/tenants/*/credentials-*"]]}')), resource
    writes = {a for s in secret_statements for a in _list(s["Action"]) if "Put" in a or "Create" in a}
    assert writes == {"secretsmanager:PutSecretValue", "secretsmanager:CreateSecret"}
    assert not any(a in ("secretsmanager:*", "*") for s in statements for a in _list(s["Action"]))


def test_alarms_cover_failures_401_clusters_and_token_age(synth: Synth) -> None:
    expressions = []
    for key, alarm in synth.resources("AWS::CloudWatch::Alarm").items():
        if "TokenRefresh" in key:
            props = alarm["Properties"]
            assert props["AlarmActions"], key
            assert "runbook: docs/runbooks/" in props["AlarmDescription"]
            expressions += [m.get("Expression", "") for m in props.get("Metrics", [])]
    joined = "\n".join(expressions)
    for metric in ("TokenRefreshConsecutiveFailures", "Unauthorized401", "TokenLifetimeRemainingRatio",
                   "UnauthorizedAfterRefresh", "ResourceDenied"):
        assert metric in joined, metric
    assert "GROUP BY tenant" in joined  # 401 clusters are per tenant


def test_jwks_is_served_over_https_from_a_private_bucket(synth: Synth) -> None:
    distributions = [d for d in synth.resources("AWS::CloudFront::Distribution").values()
                     if "JWKS" in d["Properties"]["DistributionConfig"].get("Comment", "")]
    assert len(distributions) == 1
    config = distributions[0]["Properties"]["DistributionConfig"]
    assert config["DefaultCacheBehavior"]["ViewerProtocolPolicy"] == "https-only"
    assert config["Origins"][0]["OriginAccessControlId"]
    outputs = synth.template.get("Outputs", {})
    assert any("JwksBaseUrl" in k for k in outputs) and any("JwksBucketName" in k for k in outputs)


def _list(value: object) -> list:
    return value if isinstance(value, list) else [value]
