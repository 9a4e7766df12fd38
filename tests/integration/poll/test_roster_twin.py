"""ADT -> roster -> crawl on the local twin: the real normalizer and fhir_poller handlers, the sandbox as Epic.

An ADT for a patient no Patient poll has seen goes through the normalizer function; its MRN lands on the
tenant's roster (state table); an Observation poll job (per patient on Epic) resolves it to the sandbox's
Patient id and delivers exactly that patient's Observations on normalize.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ehrbridge.contracts.envelope import new_envelope, patient_key_for
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.local.polling import onboard_sandbox_tenant, poller_mapping
from ehrbridge.local.runner import EventSourceMapping, PipelineRunner, load_handler
from ehrbridge.local.twin import local_client
from ehrbridge.poll.cursor import DynamoCursorStore
from ehrbridge.poll.jobs import PollJob
from ehrbridge.sandbox.data import MRN_SYSTEM
from ehrbridge.sandbox.server import SandboxEHR
from tests.support import drain_queue

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("moto")]
REPO = Path(__file__).resolve().parents[3]


def test_adt_through_the_normalizer_feeds_the_roster_the_epic_poller_crawls(twin) -> None:  # type: ignore[no-untyped-def]
    with SandboxEHR("epic", patients=4) as sandbox:
        demo = TenantConfig.from_yaml(REPO / "events" / "tenants" / "demo-health.yaml")  # MRN -> sandbox's system
        base = TenantConfig.model_validate({**demo.model_dump(), "tenant_id": "twin-epic", "vendor": "epic",
                                            "rate_limits": {"requests_per_second": 100}})
        tenant = onboard_sandbox_tenant(sandbox, base, workflows=("labs",), algorithm="RS384")
        patient = sandbox.resources["Patient"][2]
        mrn = next(i["value"] for i in patient["identifier"] if i["system"] == MRN_SYSTEM)
        adt = (f"MSH|^~\\&|DEMOADT|HOSP|EHR|X|20260301083000||ADT^A04^ADT_A01|T1|P|2.5.1\r"
               f"EVN|A04|20260301083000\rPID|1||{mrn}^^^MRN^MR||DOE^JANE||19700101|F\rPV1|1|O\r").encode()
        sqs = local_client("sqs", twin.endpoint)
        for copy in range(2):  # delivered twice (different SQS dedup ids): the roster entry is written once
            env = new_envelope(tenant_id=tenant.tenant_id, source="hl7v2", kind="ADT^A04", body=adt,
                               natural_key=["adt", str(copy)], attributes={"source_id": "demo-adt"})
            sqs.send_message(QueueUrl=twin.queues["normalize"], MessageBody=env.to_json(),
                             MessageGroupId=env.group_id, MessageDeduplicationId=env.message_id)
        normalizer = EventSourceMapping(sqs, queue_url=twin.queues["normalize"],
                                        queue_arn=twin.queue_arns["normalize"], function_name="normalizer",
                                        handler=load_handler(REPO / "functions" / "normalizer" / "handler.py"))
        assert PipelineRunner([normalizer]).run_until_drained(timeout_s=60)
        assert normalizer.stats.batch_errors == 0
        assert len(drain_queue(twin, "identity")) == 2  # the ADT itself flows on as before

        store = DynamoCursorStore(twin.tables["state"], ddb=local_client("dynamodb", twin.endpoint))
        [entry] = store.pending_roster_identifiers(tenant.tenant_id)
        assert (entry.system, entry.value) == (MRN_SYSTEM, mrn) and store.roster(tenant.tenant_id) == []

        job = PollJob(tenant_id=tenant.tenant_id, resource_type="Observation", job_id="obs-1")
        sqs.send_message(QueueUrl=twin.queues["poll-jobs"], MessageBody=job.model_dump_json(),
                         MessageGroupId=job.group_id, MessageDeduplicationId=job.dedup_id)
        poller = poller_mapping(twin, timeout_s=60)
        assert PipelineRunner([poller]).run_until_drained(timeout_s=90)
        assert poller.stats.batch_errors == 0

        assert store.roster(tenant.tenant_id) == [patient["id"]]  # resolved and cached
        assert store.pending_roster_identifiers(tenant.tenant_id) == []
        bodies = drain_queue(twin, "normalize", limit=200)
        expected = {o["id"] for o in sandbox.resources["Observation"]
                    if o["subject"]["reference"] == f"Patient/{patient['id']}"}
        assert expected and len(bodies) == len(expected) and all(b["source"] == "fhir" for b in bodies)
        # Every envelope belongs to the admitted patient, and there is one per Observation of theirs.
        assert {b["patient_key"] for b in bodies} == {patient_key_for(tenant.tenant_id, "epic", patient["id"])}
