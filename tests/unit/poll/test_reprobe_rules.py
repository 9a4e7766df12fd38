"""When a 403-denied type is asked again: the dispatcher's re-probe rule, with fakes (no HTTP)."""

from __future__ import annotations

import io
from dataclasses import replace

from ehrbridge.auth.state import InMemoryRefreshState, RefreshStatus
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.poll.cursor import Cursor, InMemoryCursorStore
from ehrbridge.poll.jobs import PollJob, dispatch, next_reprobe_at, reprobe_due, scope_key
from ehrbridge.poll.metrics import PollMetrics

DAY = 86_400.0
GRANT = ["system/Observation.rs", "system/Patient.rs"]


def tenant() -> TenantConfig:
    return TenantConfig.model_validate({"tenant_id": "acme", "vendor": "generic", "client_id": "c",
                                        "fhir_base_url": "https://ehr.example/fhir", "workflows": ["labs"]})


def denied(probed: float | None = 1000.0, scopes: list[str] = GRANT, dispatched: float | None = None) -> Cursor:
    return Cursor("acme", "Observation", denied_at=probed, denied_probed_at=probed,
                  denied_scopes=scope_key(scopes) if probed is not None else None, dispatched_at=dispatched)


def test_reprobe_due_by_interval_scope_change_and_unrecorded_probe() -> None:
    assert reprobe_due(denied(), GRANT, 1000 + DAY - 1) is None
    assert reprobe_due(denied(), GRANT, 1000 + DAY) == "interval"
    assert reprobe_due(denied(), list(reversed(GRANT)), 1001) is None  # same grant, another order
    assert reprobe_due(denied(), ["system/Patient.rs"], 1001) == "scopes_changed"
    assert reprobe_due(denied(probed=None), GRANT, 5) == "unrecorded"
    assert reprobe_due(denied(), GRANT, 1000 + DAY * 2, reprobe_after_s=DAY * 3) is None  # configurable
    assert next_reprobe_at(denied(), DAY) == 1000 + DAY and next_reprobe_at(denied(probed=None)) is None


def test_one_reprobe_at_a_time_until_it_answers_or_is_presumed_lost() -> None:
    out = denied(dispatched=1000 + DAY)
    assert reprobe_due(out, GRANT, 1000 + DAY + 60) == "in_flight"
    assert reprobe_due(out, ["x"], 1000 + DAY + 60) == "in_flight"  # even on a scope change
    assert reprobe_due(out, GRANT, 1000 + DAY + 1801) == "interval"  # lost job: asked again
    answered = replace(out, denied_probed_at=1000 + DAY + 5)  # the re-probe got 403 again
    assert reprobe_due(answered, GRANT, 1000 + DAY + 60) is None


def test_dispatch_skips_denied_types_without_staleness_and_flags_reprobes() -> None:
    cursors = InMemoryCursorStore()
    cursors.put(denied())
    status = RefreshStatus(granted_scopes=GRANT, server_denied_types=["Observation"],
                           denied_types=["DiagnosticReport"])
    emf = io.StringIO()
    sent: list[PollJob] = []
    summary = dispatch([tenant()], cursors, sent.extend, coverage_for=lambda _t: status, now=lambda: 2000.0,
                       metrics_for=lambda t: PollMetrics(t, stream=emf), reprobe_after_s=DAY)
    assert [j.resource_type for j in sent] == ["Patient"]
    assert set(summary.skipped) == {"acme:Observation", "acme:DiagnosticReport"}
    assert '"resource_type":"Observation"' not in emf.getvalue()  # a denied type is not "stale"
    sent.clear()
    summary = dispatch([tenant()], cursors, sent.extend, coverage_for=lambda _t: status,
                       now=lambda: 1000 + DAY + 1, reprobe_after_s=DAY)
    assert [(j.resource_type, j.reprobe) for j in sent if j.resource_type != "Patient"] == [("Observation", True)]
    assert summary.reprobed == ["acme:Observation"] and summary.counts()["reprobed"] == 1
    assert PollJob.parse_json(sent[-1].model_dump_json()).reprobe  # survives the queue


def test_state_clears_one_denial_and_keeps_the_others() -> None:
    state = InMemoryRefreshState()
    state.mark_server_denied("acme", "Observation")
    state.mark_server_denied("acme", "Encounter")
    state.clear_server_denied("acme", "Observation")
    state.clear_server_denied("other", "Observation")  # nothing recorded: no error
    assert state.status("acme").server_denied_types == ["Encounter"]
