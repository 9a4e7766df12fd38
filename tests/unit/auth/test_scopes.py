from __future__ import annotations

import pytest

from ehrbridge.auth.scopes import (
    WORKFLOW_RESOURCES,
    GrantedScopes,
    ScopeError,
    parse_scope,
    refuse_wildcards,
    resource_permissions,
    scopes_for,
)
from ehrbridge.contracts.tenant import Workflow


def test_labs_is_the_minimum_set_of_system_rs_scopes() -> None:
    assert scopes_for(["labs"]) == ["system/DiagnosticReport.rs", "system/Observation.rs", "system/Patient.rs"]


def test_every_workflow_of_the_contract_has_a_table_entry_and_no_wildcards() -> None:
    workflows = Workflow.__args__  # type: ignore[attr-defined]
    assert set(workflows) == set(WORKFLOW_RESOURCES)
    scopes = scopes_for(workflows)
    assert all(s.startswith("system/") and "*" not in s for s in scopes)
    assert len(scopes) == len(set(scopes))
    assert "system/Binary.r" in scopes  # read by id only: no search permission asked for


def test_v1_scopes_use_read() -> None:
    assert scopes_for(["demographics", "encounters"], version=1) == ["system/Encounter.read", "system/Patient.read"]


@pytest.mark.parametrize("scope", ["system/*.read", "system/*.rs", "system/*.*"])
def test_wildcards_are_refused(scope: str) -> None:
    with pytest.raises(ScopeError, match="wildcard"):
        refuse_wildcards(["system/Patient.rs", scope])


def test_unknown_workflow_is_a_clear_error() -> None:
    with pytest.raises(ScopeError, match="unknown workflow"):
        resource_permissions(["billing"])


@pytest.mark.parametrize(("text", "rtype", "perms"), [
    ("system/Observation.rs", "Observation", "rs"),
    ("system/Observation.read", "Observation", "rs"),  # v1 .read == v2 .rs
    ("system/Observation.write", "Observation", "cud"),
    ("system/Observation.*", "Observation", "cruds"),
    ("system/Observation.cruds", "Observation", "cruds"),
    ("Observation.read", "Observation", "r"),  # Epic's own form
    ("Observation.search", "Observation", "s"),
])
def test_parse_scope_forms(text: str, rtype: str, perms: str) -> None:
    scope = parse_scope(text)
    assert scope is not None and scope.resource_type == rtype and scope.perms == perms


@pytest.mark.parametrize("text", ["system/Observation.sr", "system/Observation.dus", "openid", "fhirUser",
                                  "launch/patient", "system/observation.rs"])
def test_out_of_order_and_non_resource_scopes_grant_nothing(text: str) -> None:
    assert parse_scope(text) is None


def test_read_and_rs_are_equivalent_in_a_grant() -> None:
    v1 = GrantedScopes.parse("system/Patient.read system/Observation.read")
    v2 = GrantedScopes.parse("system/Patient.rs system/Observation.rs")
    epic = GrantedScopes.parse("Patient.read Patient.search Observation.read Observation.search")
    assert v1.normalized() == v2.normalized() == epic.normalized() == ["system/Observation.rs", "system/Patient.rs"]


def test_partial_grant_lists_denied_types() -> None:
    needed = resource_permissions(["labs", "documents"])
    granted = GrantedScopes.parse("system/Patient.rs system/Observation.r system/Binary.r openid")
    # Observation has read but not search: still denied for a search workflow.
    assert granted.denied(needed) == ["DiagnosticReport", "DocumentReference", "Observation"]
    assert granted.allows("Binary", "r") and not granted.allows("Binary", "rs")


def test_split_and_fine_grained_grants() -> None:
    granted = GrantedScopes.parse("system/Observation.r system/Observation.s "
                                  "system/Observation.rs?category=laboratory patient/Condition.rs")
    assert granted.allows("Observation") and granted.restricted == {"Observation": ["category=laboratory"]}
    assert not granted.allows("Condition")  # patient/ context is not a backend grant


def test_empty_grant_is_a_grant_of_nothing() -> None:
    granted = GrantedScopes.parse("")
    assert granted.permissions == {} and granted.denied({"Patient": "rs"}) == ["Patient"]
