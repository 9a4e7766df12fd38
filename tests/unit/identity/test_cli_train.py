"""`ehrbridge identity resolve|train|review|thresholds|merge|unmerge|history`, and EM training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ehrbridge.cli.main import app
from ehrbridge.identity.model import Model, default_model
from ehrbridge.identity.normalize import person_from_patient
from ehrbridge.identity.resolver import Resolver
from ehrbridge.identity.store import InMemoryMpiStore
from ehrbridge.identity.synth import household_linkage_set
from ehrbridge.identity.train import train
from tests.unit.identity.helpers import patient

runner = CliRunner()


def write_ndjson(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_resolve_json_is_one_line_per_input_in_order_and_matches_the_resolver(tmp_path: Path) -> None:
    a, b = household_linkage_set(60, seed=4)
    rows = [{k: v for k, v in p.items() if k not in ("truth", "case")} for p in a + b]
    src = write_ndjson(tmp_path / "p.ndjson", rows)
    result = runner.invoke(app, ["identity", "resolve", str(src), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert [x["patient_id"] for x in lines] == [r["id"] for r in rows]
    assert set(lines[0]) == {"patient_id", "enterprise_id", "decision", "grade", "score"}
    assert {x["decision"] for x in lines} <= {"link", "review", "new"} and any(x["decision"] == "link" for x in lines)
    # Exactly what the function's resolver does, one at a time, no look-ahead.
    resolver = Resolver(InMemoryMpiStore(), default_model())
    expected = [resolver.resolve("local", r).as_json() for r in rows]
    assert lines == expected


def test_resolve_reports_bad_input_lines(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ndjson"
    bad.write_text(json.dumps(patient("a1")) + "\n{oops\n")
    result = runner.invoke(app, ["identity", "resolve", str(bad), "--json"])
    assert result.exit_code == 2 and "line 2: not valid JSON" in result.output
    obs = write_ndjson(tmp_path / "o.ndjson", [{"resourceType": "Observation"}])
    result = runner.invoke(app, ["identity", "resolve", str(obs)])
    assert result.exit_code == 2 and "expected a FHIR Patient" in result.output
    result = runner.invoke(app, ["identity", "resolve", str(tmp_path / "missing.ndjson")])
    assert result.exit_code == 2 and "no such file" in result.output


def test_review_queue_with_a_state_file(tmp_path: Path) -> None:
    state = tmp_path / "mpi.json"
    src = write_ndjson(tmp_path / "p.ndjson", [patient("a1", ssn="536-22-1947"),
                                               patient("b1", given="Daniel", birth="1994-12-02",
                                                       ssn="536-22-1947")])
    out = runner.invoke(app, ["identity", "resolve", str(src), "--json", "--state", str(state)])
    assert out.exit_code == 0 and json.loads(out.stdout.splitlines()[1])["decision"] == "review"
    listed = runner.invoke(app, ["identity", "review", "list", "--state", str(state), "--json"])
    item = json.loads(listed.stdout.splitlines()[0])
    assert item["source_key"] == "b1" and item["candidates"][0]["weights"]["ssn"] > 0
    text = runner.invoke(app, ["identity", "review", "list", "--state", str(state)])
    assert "ssn=+" in text.stdout and "Daniel" not in text.stdout
    done = runner.invoke(app, ["identity", "review", "resolve", item["review_id"], "new", "--by", "qa",
                               "--state", str(state)])
    assert done.exit_code == 0 and json.loads(done.stdout)["change"] == "review-resolved"
    again = runner.invoke(app, ["identity", "review", "resolve", item["review_id"], "link", "--state", str(state)])
    assert again.exit_code == 2 and "already resolved" in again.output
    # The manual decision survives re-running the same input.
    rerun = runner.invoke(app, ["identity", "resolve", str(src), "--json", "--state", str(state)])
    assert json.loads(rerun.stdout.splitlines()[1])["enterprise_id"] == item["provisional_eid"]
    hist = runner.invoke(app, ["identity", "history", item["provisional_eid"], "--state", str(state)])
    assert [json.loads(x)["change"] for x in hist.stdout.splitlines()] == ["created", "review-opened",
                                                                           "review-resolved"]


def test_thresholds_merge_unmerge_commands(tmp_path: Path) -> None:
    state = tmp_path / "mpi.json"
    src = write_ndjson(tmp_path / "p.ndjson", [patient("a1"), patient("a2", given="Daniel", birth="1994-12-02")])
    runner.invoke(app, ["identity", "resolve", str(src), "--state", str(state)])
    shown = runner.invoke(app, ["identity", "thresholds", "--link", "0.99", "--state", str(state)])
    assert json.loads(shown.stdout)["thresholds"] == {"link": 0.99}
    bad = runner.invoke(app, ["identity", "thresholds", "--review", "0.995", "--state", str(state)])
    assert bad.exit_code == 2
    merged = runner.invoke(app, ["identity", "merge", "a1", "a2", "--state", str(state)])
    assert json.loads(merged.stdout.splitlines()[0])["change"] == "merged"
    unmerged = runner.invoke(app, ["identity", "unmerge", "a2", "--state", str(state)])
    assert json.loads(unmerged.stdout.splitlines()[0])["change"] == "unmerged"


def test_train_writes_a_loadable_model(tmp_path: Path) -> None:
    a, b = household_linkage_set(300, seed=9)
    src = write_ndjson(tmp_path / "p.ndjson", a + b)
    out = tmp_path / "model.json"
    result = runner.invoke(app, ["identity", "train", str(src), "--out", str(out), "--link", "0.97"])
    assert result.exit_code == 0, result.output
    model = Model.load(out)
    assert model.thresholds.link == 0.97 and model.meta["records"] == len(a) + len(b)
    resolved = runner.invoke(app, ["identity", "resolve", str(src), "--json", "--model", str(out)])
    assert resolved.exit_code == 0 and len(resolved.stdout.splitlines()) == len(a) + len(b)


def test_em_learns_that_agreement_is_evidence() -> None:
    a, b = household_linkage_set(400, seed=12)
    model = train([person_from_patient(p) for p in a + b], u_samples=50_000)
    from ehrbridge.identity.comparisons import INDEX

    for name in ("given", "family", "dob", "address"):
        w = model.weights[INDEX[name]]
        assert w[0] > 3 and w[-1] < 0, name
    assert 0 < model.prior < 1 and "DOB" in model.meta["method"]
    with pytest.raises(ValueError, match="at least 50"):
        train([person_from_patient(p) for p in a[:10]])
