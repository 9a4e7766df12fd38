"""The MLLP bridge construct: NLB TCP passthrough to Fargate, TLS material from Secrets Manager, alarms."""

from __future__ import annotations

import json

import pytest

from tests.infra.conftest import Synth

pytestmark = [pytest.mark.infra, pytest.mark.xdist_group("infra")]


def one(synth: Synth, cfn_type: str, where=lambda props: True) -> dict:  # type: ignore[no-untyped-def]
    found = [r["Properties"] for r in synth.resources(cfn_type).values() if where(r.get("Properties", {}))]
    assert len(found) == 1, (cfn_type, len(found))
    return found[0]


def test_nlb_is_tcp_passthrough_with_http_readiness_checks(synth: Synth) -> None:
    listener = one(synth, "AWS::ElasticLoadBalancingV2::Listener", lambda p: p.get("Port") == 2575)
    assert listener["Protocol"] == "TCP" and "Certificates" not in listener
    tg = one(synth, "AWS::ElasticLoadBalancingV2::TargetGroup", lambda p: p.get("Port") == 2575)
    assert tg["Protocol"] == "TCP" and tg["TargetType"] == "ip"
    assert tg["HealthCheckProtocol"] == "HTTP" and tg["HealthCheckPath"] == "/readyz"
    assert tg["HealthCheckPort"] == "8080"
    nlb = one(synth, "AWS::ElasticLoadBalancingV2::LoadBalancer", lambda p: p.get("Type") == "network")
    assert nlb["Scheme"] == "internal"


def test_task_reads_tls_from_secrets_manager_and_runs_read_only(synth: Synth) -> None:
    task = one(synth, "AWS::ECS::TaskDefinition", lambda p: any(
        c.get("Name") == "bridge" for c in p.get("ContainerDefinitions", [])))
    [container] = task["ContainerDefinitions"]
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert "EHRBRIDGE_MLLP_TLS_SECRET_ID" in env and "Ref" in json.dumps(env["EHRBRIDGE_MLLP_TLS_SECRET_ID"])
    assert env["EHRBRIDGE_MLLP_TENANTS_FROM_STORE"] == "true" and env["EHRBRIDGE_MLLP_WORKERS"] == "2"
    assert "EHRBRIDGE_QUEUE_HL7_INBOUND_URL" in env
    assert not any("PRIVATE" in k or "KEY_PEM" in k for k in env)  # no key material in the environment
    assert container["ReadonlyRootFilesystem"] is True and container["StopTimeout"] >= 30
    assert task["RuntimePlatform"]["CpuArchitecture"] == "ARM64"


def test_only_sender_networks_reach_the_mllp_port(synth: Synth) -> None:
    for sg in synth.resources("AWS::EC2::SecurityGroup").values():
        for rule in sg["Properties"].get("SecurityGroupIngress", []):
            assert rule.get("CidrIp") != "0.0.0.0/0", rule


def test_alarms_autoscaling_and_secret(synth: Synth) -> None:
    alarms = [a["Properties"] for a in synth.resources("AWS::CloudWatch::Alarm").values()]
    text = json.dumps(alarms)
    assert "MllpAcks" in text and "MllpAckLatency" in text and "HealthyHostCount" in text
    # ACK-store failures: every code in one Metrics Insights series of the bridge's fleet-wide dimension set.
    [store] = [a for a in alarms if "MllpAckStoreFailed" in json.dumps(a)]
    [query] = [q["Expression"] for q in store["Metrics"] if "Expression" in q]
    assert 'FROM SCHEMA("ehrbridge", service, message_type)' in query and "service = 'mllp-bridge'" in query
    assert all("runbook" in a.get("AlarmDescription", "") for a in alarms if "Mllp" in json.dumps(a)
               or "HealthyHostCount" in json.dumps(a))
    one(synth, "AWS::ApplicationAutoScaling::ScalableTarget", lambda p: p.get("ServiceNamespace") == "ecs")
    secret = one(synth, "AWS::SecretsManager::Secret", lambda p: str(p.get("Name", "")).endswith("/mllp/tls"))
    assert "KmsKeyId" in secret


def test_task_role_writes_only_its_ack_items_in_the_state_table(synth: Synth) -> None:
    statements = [s for name, p in synth.resources("AWS::IAM::Policy").items() if name.startswith("MllpBridge")
                  for s in p["Properties"]["PolicyDocument"]["Statement"]]
    writes = [s for s in statements if any(a in json.dumps(s["Action"]) for a in ("PutItem", "BatchWriteItem"))]
    assert len(writes) == 1, writes
    [write] = writes
    assert sorted(write["Action"]) == ["dynamodb:BatchGetItem", "dynamodb:BatchWriteItem", "dynamodb:GetItem",
                                       "dynamodb:PutItem"]
    assert "CoreTablestate" in json.dumps(write["Resource"]) and "*" not in json.dumps(write["Resource"])
    assert write["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["mllp-ack#*"]}}
    assert not any(a in json.dumps(statements) for a in ("DeleteItem", "UpdateItem"))
