"""The identity extras in the synthesized stack: link-event bus with PutEvents for the matcher only,
matching alarms on Metrics Insights queries, each notifying and naming its runbook."""

from __future__ import annotations

import json

from tests.infra.conftest import Synth


def test_link_event_bus_and_permission(synth: Synth) -> None:
    buses = synth.resources("AWS::Events::EventBus")
    assert any(b["Properties"]["Name"] == "ehrbridge-identity" for b in buses.values())
    fns = synth.resources("AWS::Lambda::Function")
    matcher = next(f for f in fns.values() if f["Properties"].get("FunctionName") == "ehrbridge-identity-matcher")
    assert "EHRBRIDGE_EVENT_BUS" in matcher["Properties"]["Environment"]["Variables"]
    puts = [s for p in synth.resources("AWS::IAM::Policy").values()
            for s in p["Properties"]["PolicyDocument"]["Statement"] if "events:PutEvents" in json.dumps(s["Action"])]
    assert len(puts) == 1 and puts[0]["Resource"] != "*"


def test_identity_alarms(synth: Synth) -> None:
    alarms = [a["Properties"] for a in synth.resources("AWS::CloudWatch::Alarm").values()
              if "identity.md" in a["Properties"].get("AlarmDescription", "")]
    queries = " ".join(m.get("Expression", "") for a in alarms for m in a.get("Metrics", []))
    for metric in ("IdentityReviewOldestAge", "IdentityReview", "IdentityMatchScore"):
        assert f'"{metric}"' in queries
    assert len(alarms) == 3 and all(a.get("AlarmActions") for a in alarms)
