"""A 403-denied type is asked again (after an interval, or at once when the grant changes), over real HTTP
against the sandbox: a re-probe that answers reinstates the type; one that gets 403 again keeps it quietly."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from ehrbridge.poll.jobs import PollJob, dispatch
from ehrbridge.poll.metrics import PollMetrics

from .conftest import Rig

TENANT = "poll-health"
DAY = 86_400


@pytest.fixture()
def client_metrics(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names the SMART client emits (ResourceDenied feeds the token construct's 403 alarm)."""
    seen: list[str] = []
    from ehrbridge.auth import fhir_client

    monkeypatch.setattr(fhir_client, "emit_metric", lambda name, **_kw: seen.append(name))
    return seen


def _emf(rig: Rig) -> io.StringIO:
    stream = io.StringIO()
    rig.metrics = PollMetrics(TENANT, stream=stream)
    return stream


def _run(rig: Rig, job: PollJob, at: float) -> Any:
    """The poller at a given moment (the dispatcher's clock and the poller's agree, as in production)."""
    poller = rig.poller()
    poller.clock = lambda: at
    return poller.run(job)


def _dispatch(rig: Rig, at: float, sent: list[PollJob]) -> Any:
    return dispatch([rig.tenant], rig.cursors, sent.extend, now=lambda: at,
                    coverage_for=lambda t: rig.refresher.state.status(t.tenant_id), reprobe_after_s=DAY)


def test_denied_type_is_reprobed_after_the_interval_quietly_then_reinstated(
        make_rig: Callable[..., Rig], client_metrics: list[str]) -> None:
    rig = make_rig(patients=3)
    rig.sandbox.clients["poll-client"].policy_denied_types = {"Observation"}
    emf = _emf(rig)
    first = rig.poller().run(PollJob(tenant_id=TENANT, resource_type="Observation", job_id="o-1"))
    assert first.status == "denied" and '"PollTypeDenied":1.0' in emf.getvalue()
    assert client_metrics.count("ResourceDenied") == 1
    cursor = rig.cursors.get(TENANT, "Observation")
    assert cursor.denied_at is not None and cursor.denied_probed_at is not None
    probed = cursor.denied_probed_at

    # Within the interval the dispatcher leaves it alone (and counts no staleness for it).
    sent: list[PollJob] = []
    summary = _dispatch(rig, probed + DAY - 60, sent)
    assert "Observation" not in [j.resource_type for j in sent] and f"{TENANT}:Observation" in summary.skipped
    # After it: one re-probe job, and only one while it is out.
    sent.clear()
    summary = _dispatch(rig, probed + DAY + 1, sent)
    [reprobe] = [j for j in sent if j.resource_type == "Observation"]
    assert reprobe.reprobe and summary.reprobed == [f"{TENANT}:Observation"]
    again: list[PollJob] = []
    _dispatch(rig, probed + DAY + 30, again)
    assert "Observation" not in [j.resource_type for j in again]

    # Still 403: stays denied, no new alarm metric from the poller or the SMART client.
    before = len(rig.sandbox.fhir_requests("Observation"))
    emf = _emf(rig)
    still = _run(rig, reprobe, probed + DAY + 40)
    assert still.status == "denied"
    assert len(rig.sandbox.fhir_requests("Observation")) == before + 1  # it really asked
    assert "PollTypeDenied" not in emf.getvalue()
    assert '"PollTypeReprobed":1.0' in emf.getvalue() and '"PollTypeReinstated":0.0' in emf.getvalue()
    # The expected 403 is counted under endpoint "reprobe" but is no failed call (failed-call-rate alarm).
    [probe_call] = [x for x in map(json.loads, emf.getvalue().splitlines()) if "PollCall403" in x]
    assert probe_call["endpoint"] == "reprobe" and probe_call["PollCallFailed"] == 0.0
    assert client_metrics.count("ResourceDenied") == 1
    assert "Observation" in rig.refresher.state.status(TENANT).server_denied_types
    cursor = rig.cursors.get(TENANT, "Observation")
    assert cursor.denied_at is not None and cursor.denied_at < probed + 1  # the denial's start is kept
    assert cursor.denied_probed_at == probed + DAY + 40  # the re-probe clock restarts

    # The site lifts the policy; the next re-probe (a day later) answers: reinstated, records delivered.
    rig.sandbox.clients["poll-client"].policy_denied_types = set()
    sent.clear()
    _dispatch(rig, cursor.denied_probed_at + DAY + 1, sent)
    [reprobe] = [j for j in sent if j.resource_type == "Observation"]
    emf = _emf(rig)
    outcome = _run(rig, reprobe, cursor.denied_probed_at + DAY + 10)
    assert outcome.status == "done" and outcome.resources > 0
    assert '"PollTypeReinstated":1.0' in emf.getvalue()
    endpoints = [x["endpoint"] for x in map(json.loads, emf.getvalue().splitlines()) if "PollCalls" in x]
    assert endpoints[0] == "reprobe" and "reprobe" not in endpoints[1:]  # only the probing call
    assert "Observation" not in rig.refresher.state.status(TENANT).server_denied_types
    cursor = rig.cursors.get(TENANT, "Observation")
    assert (cursor.denied_at, cursor.denied_probed_at, cursor.denied_scopes) == (None, None, None)
    assert cursor.watermark is not None
    # From now on an ordinary pair: dispatched by its interval, no re-probe flag.
    sent.clear()
    _dispatch(rig, cursor.completed_at + 3600, sent)
    [ordinary] = [j for j in sent if j.resource_type == "Observation"]
    assert not ordinary.reprobe


def test_a_change_in_the_granted_scopes_reprobes_at_once(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(patients=2)
    rig.sandbox.clients["poll-client"].policy_denied_types = {"Observation"}
    rig.refresher.get_token(rig.tenant)  # the token status holds the granted scopes, as in production
    assert rig.poller().run(PollJob(tenant_id=TENANT, resource_type="Observation", job_id="o-1")).status == "denied"
    probed = rig.cursors.get(TENANT, "Observation").denied_probed_at
    assert probed is not None
    sent: list[PollJob] = []
    _dispatch(rig, probed + 120, sent)
    assert "Observation" not in [j.resource_type for j in sent]

    # The site changes the app's grant (here: DiagnosticReport dropped); the next token says so.
    rig.sandbox.clients["poll-client"].grant_types = {"Patient", "Observation"}
    rig.sandbox.clients["poll-client"].policy_denied_types = set()
    token = rig.refresher.get_token(rig.tenant)
    rig.refresher.refresh(rig.tenant, force=True, stale_access_token=token.access_token.get_secret_value())
    sent.clear()
    _dispatch(rig, probed + 180, sent)  # minutes later, not a day
    [reprobe] = [j for j in sent if j.resource_type == "Observation"]
    assert reprobe.reprobe
    assert rig.poller().run(reprobe).status == "done"
    assert "Observation" not in rig.refresher.state.status(TENANT).server_denied_types


def test_a_denied_per_patient_type_with_nobody_to_ask_stays_denied(make_rig: Callable[..., Rig]) -> None:
    """A probe that made no call proves nothing: the denial is kept and its clock restarts."""
    rig = make_rig("epic", patients=2)
    rig.sandbox.clients["poll-client"].policy_denied_types = {"Observation"}
    rig.refresher.state.mark_server_denied(TENANT, "Observation")  # e.g. denied by an older release
    sent: list[PollJob] = []
    _dispatch(rig, time.time(), sent)
    [reprobe] = [j for j in sent if j.resource_type == "Observation"]  # unrecorded probe: asked at once
    assert reprobe.reprobe
    outcome = rig.poller().run(reprobe)  # the roster is empty: no Observation search is made
    assert outcome.status == "done" and not rig.sandbox.fhir_requests("Observation")
    assert "Observation" in rig.refresher.state.status(TENANT).server_denied_types
    assert rig.cursors.get(TENANT, "Observation").denied_probed_at is not None


def test_a_reprobe_flag_on_a_type_not_denied_is_an_ordinary_job(make_rig: Callable[..., Rig],
                                                                 client_metrics: list[str]) -> None:
    """E.g. the continuation of a re-probe that reinstated the type: a 403 now is a new denial, alarmed."""
    rig = make_rig(patients=2)
    rig.sandbox.clients["poll-client"].policy_denied_types = {"Observation"}
    emf = _emf(rig)
    job = PollJob(tenant_id=TENANT, resource_type="Observation", job_id="o-1", reprobe=True)
    assert rig.poller().run(job).status == "denied"
    assert '"PollTypeDenied":1.0' in emf.getvalue() and "PollTypeReprobed" not in emf.getvalue()
    assert client_metrics.count("ResourceDenied") == 1
    assert "Observation" in rig.refresher.state.status(TENANT).server_denied_types
