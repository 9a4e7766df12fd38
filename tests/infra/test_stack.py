"""The synthesized stack: cdk-nag clean, cfn-lint clean, and built from the same resource definitions
as the local twin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ehrbridge import resources
from tests.infra.conftest import CONCRETE_REGION, Synth, nag_findings

pytestmark = [pytest.mark.infra, pytest.mark.xdist_group("infra")]

# CDK-generated noise, not fixable from our code: W3005 (redundant DependsOn CDK adds for roles),
# W3045 (CDK sets AccessControl on the access-log bucket for log delivery).
CFN_LINT_IGNORED = ["W3005", "W3045"]


def test_cdk_nag_aws_solutions_and_hipaa_have_no_unacknowledged_findings(synth: Synth) -> None:
    # The fixture fails the test with the findings listed if synth raised; here: nothing left over.
    assert nag_findings(synth.outdir) == []


def test_the_same_checks_do_fail_a_non_compliant_stack(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import aws_cdk as cdk
    from aws_cdk import aws_s3 as s3
    from aws_cdk import aws_sqs as sqs

    from ehrbridge_infra.app import add_compliance_checks

    app = cdk.App(outdir=str(tmp_path / "out"))
    add_compliance_checks(app)
    stack = cdk.Stack(app, "Bad")
    sqs.Queue(stack, "Plain", encryption=sqs.QueueEncryption.UNENCRYPTED)
    s3.Bucket(stack, "PlainBucket")
    with pytest.raises(RuntimeError):
        app.synth()
    rules = {f.split(" at ")[0] for f in nag_findings(tmp_path / "out")}
    assert "AwsSolutions-SQS4" in rules or "AwsSolutions-SQS3" in rules
    assert any(rule.startswith("HIPAA.Security-") for rule in rules), rules


def test_every_acknowledgement_has_a_reason(synth: Synth) -> None:
    acknowledged: dict[str, str] = {}
    for metadata_file in synth.outdir.glob("assembly-*/*.metadata.json"):
        for path, entries in json.loads(metadata_file.read_text()).items():
            for entry in entries:
                if entry["type"] == "aws:cdk:acknowledged-rules":
                    acknowledged.update({f"{path} {rule}": reason for rule, reason in entry["data"].items()})
    assert len(acknowledged) > 10
    short = {k: v for k, v in acknowledged.items() if len(v.strip()) < 20}
    assert short == {}


def _cfn_lint(synth: Synth, *ignored: str) -> None:
    cfn_lint = str(Path(sys.executable).with_name("cfn-lint"))
    result = subprocess.run([cfn_lint, "-t", str(synth.template_path), "--format", "parseable",
                             "-i", *CFN_LINT_IGNORED, *ignored], capture_output=True, text=True, check=False)
    assert result.stdout.strip() == "", result.stdout[:4000]
    assert result.returncode == 0, result.stderr[:2000]


def test_cfn_lint_reports_nothing(synth: Synth) -> None:
    _cfn_lint(synth)


@pytest.mark.timeout(900)
def test_concrete_environment_synth_needs_no_account_lookup(synth_deployed: Synth) -> None:
    """`cdk deploy --app cdk.out` cannot resolve context lookups: a concrete synth must need none
    (CDK writes placeholder AZs "dummy1a" when it would have to look them up)."""
    for manifest in synth_deployed.outdir.rglob("manifest.json"):
        assert not json.loads(manifest.read_text()).get("missing"), manifest
    assert "dummy" not in json.dumps(synth_deployed.template)
    subnets = [s["Properties"]["AvailabilityZone"] for s in synth_deployed.resources("AWS::EC2::Subnet").values()]
    assert sorted(set(subnets)) == [f"{CONCRETE_REGION}a", f"{CONCRETE_REGION}b"]
    _cfn_lint(synth_deployed, "W3010")  # the AZs are named on purpose (acknowledged on the stack)


def test_queues_come_from_the_shared_definitions(synth: Synth) -> None:
    queues = {q["Properties"]["QueueName"]: q["Properties"] for q in synth.resources("AWS::SQS::Queue").values()}
    for spec in resources.QUEUES:
        main, dlq = queues[spec.physical_name()], queues[spec.dlq_physical_name()]
        assert main.get("FifoQueue") is True and dlq.get("FifoQueue") is True
        assert main["KmsMasterKeyId"] and dlq["KmsMasterKeyId"]
        assert main["RedrivePolicy"]["maxReceiveCount"] == spec.max_receive_count
        assert main["VisibilityTimeout"] == spec.visibility_timeout_s
    policies = synth.resources("AWS::SQS::QueuePolicy")
    assert len(policies) >= 2 * len(resources.QUEUES)
    assert all("aws:SecureTransport" in json.dumps(p) for p in policies.values())


def test_tables_are_encrypted_and_recoverable(synth: Synth) -> None:
    tables = {t["Properties"]["TableName"]: t["Properties"] for t in synth.resources("AWS::DynamoDB::Table").values()}
    for spec in resources.TABLES:
        props = tables[spec.physical_name()]
        assert props["SSESpecification"]["SSEEnabled"] is True and props["SSESpecification"]["SSEType"] == "KMS"
        assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
        keys = {k["AttributeName"] for k in props["KeySchema"]}
        assert spec.partition_key in keys
        if spec.ttl_attribute:
            assert props["TimeToLiveSpecification"]["AttributeName"] == spec.ttl_attribute
    assert synth.resources("AWS::Backup::BackupSelection")


def test_buckets_are_kms_encrypted_private_and_versioned(synth: Synth) -> None:
    buckets = synth.resources("AWS::S3::Bucket")
    data_buckets = [b["Properties"] for b in buckets.values()
                    if b["Properties"].get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration", [{}])[0]
                    .get("ServerSideEncryptionByDefault", {}).get("SSEAlgorithm") == "aws:kms"]
    assert len(data_buckets) >= len(resources.BUCKETS)
    for props in data_buckets:
        assert props["VersioningConfiguration"]["Status"] == "Enabled"
        assert props["PublicAccessBlockConfiguration"]["BlockPublicAcls"] is True
        assert "LoggingConfiguration" in props


def test_pipeline_functions_are_wired_like_the_local_runner(synth: Synth) -> None:
    functions = {f["Properties"]["FunctionName"]: f["Properties"]
                 for f in synth.resources("AWS::Lambda::Function").values() if "FunctionName" in f["Properties"]}
    mappings = list(synth.resources("AWS::Lambda::EventSourceMapping").values())
    for spec in resources.FUNCTIONS:
        if spec.consumes is None:
            continue
        props = functions[f"ehrbridge-{spec.name.replace('_', '-')}"]
        assert props["Handler"] == "handler.lambda_handler"
        assert props["TracingConfig"]["Mode"] == "Active"
        assert props["ReservedConcurrentExecutions"] > 0
        assert props["VpcConfig"]["SubnetIds"]
        env = props["Environment"]["Variables"]
        assert resources.queue(spec.consumes).url_env in env
        for produced in spec.produces:
            assert resources.queue(produced).url_env in env
        # Secrets never travel in environment variables: only names.
        assert not any("SECRET" in k and "NAME" not in k for k in env)
    assert all(m["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"] for m in mappings
               if "FunctionResponseTypes" in m["Properties"])
    assert len([m for m in mappings if m["Properties"].get("FunctionResponseTypes")]) >= 3


def test_every_alarm_notifies_and_names_a_runbook(synth: Synth) -> None:
    alarms = synth.resources("AWS::CloudWatch::Alarm")
    assert alarms
    for name, alarm in alarms.items():
        assert alarm["Properties"].get("AlarmActions"), name
        assert "runbook" in alarm["Properties"].get("AlarmDescription", ""), name


def test_local_twin_and_cdk_create_the_same_queues_tables_and_attributes(synth: Synth, twin) -> None:  # type: ignore[no-untyped-def]
    template_queues = {q["Properties"]["QueueName"]: q["Properties"]
                       for q in synth.resources("AWS::SQS::Queue").values()}
    twin_queue_names = {url.rsplit("/", 1)[1] for url in [*twin.queues.values(), *twin.dlqs.values()]}
    assert twin_queue_names == set(template_queues)
    template_tables = {t["Properties"]["TableName"]: t["Properties"]
                       for t in synth.resources("AWS::DynamoDB::Table").values()}
    assert set(twin.tables.values()) == set(template_tables)
    import boto3

    ddb = boto3.client("dynamodb", endpoint_url=twin.endpoint, region_name="us-east-1")
    for name, props in template_tables.items():
        local = ddb.describe_table(TableName=name)["Table"]
        assert {k["AttributeName"]: k["KeyType"] for k in local["KeySchema"]} == \
            {k["AttributeName"]: k["KeyType"] for k in props["KeySchema"]}
        assert sorted(i["IndexName"] for i in local.get("GlobalSecondaryIndexes", [])) == \
            sorted(i["IndexName"] for i in props.get("GlobalSecondaryIndexes", []))


def _anchors(markdown: str) -> set[str]:
    """GitHub-style heading anchors."""
    import re

    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", text).replace(" ", "-"))
    return anchors


def test_every_alarm_runbook_link_resolves(synth: Synth) -> None:
    import re

    from tests.conftest import REPO

    for name, alarm in synth.resources("AWS::CloudWatch::Alarm").items():
        description = json.dumps(alarm["Properties"].get("AlarmDescription", ""))
        links = re.findall(r"(docs/[\w./-]+\.md)(?:#([\w-]+))?", description)
        assert links, f"{name}: no runbook link"
        for path, anchor in links:
            doc = REPO / path
            assert doc.is_file(), f"{name}: {path} does not exist"
            # A section of its own, not just a document: the on-call lands on what to do.
            assert anchor, f"{name}: {path} without a #section"
            assert anchor in _anchors(doc.read_text()), f"{name}: no section #{anchor} in {path}"
