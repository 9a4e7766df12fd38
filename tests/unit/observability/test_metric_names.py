"""The metric names module is the one source of truth: every entry is emitted by the code with exactly
its dimension sets, and every metric the code emits is an entry (alarms and dashboards are built from it,
tests/infra/test_observability.py checks the template against it)."""

from __future__ import annotations

import ast
import io
import json
import re
from dataclasses import dataclass

from ehrbridge.mllp import metrics as bridge_metrics
from ehrbridge.observability import names
from tests.conftest import REPO

SOURCES = [*(REPO / "layers" / "core" / "ehrbridge").rglob("*.py"), *(REPO / "functions").rglob("*.py")]
NOT_DIMENSIONS = {"tenant", "value", "unit", "high_resolution"}


@dataclass(frozen=True)
class Emission:
    where: str
    name: str  # a literal name, or a regex for f-strings
    is_pattern: bool
    secondary: str | None  # the keyword dimension, "**" when passed through **kwargs
    passthrough: bool

    def matches(self, metric: names.MetricName) -> bool:
        return bool(re.fullmatch(self.name, metric.name)) if self.is_pattern else self.name == metric.name


def _names(node: ast.expr, loops: list[ast.For], constants: dict[str, str]) -> list[tuple[str, bool]]:
    """The metric name(s) a call's first argument can take; empty when it cannot be told statically."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [(node.value, False)]
    if isinstance(node, ast.JoinedStr):
        return [("".join(re.escape(v.value) if isinstance(v, ast.Constant) else ".+" for v in node.values), True)]
    if isinstance(node, ast.IfExp):
        return _names(node.body, loops, constants) + _names(node.orelse, loops, constants)
    # names.QUARANTINED.name / QUARANTINED.name
    if isinstance(node, ast.Attribute) and node.attr == "name":
        inner = node.value
        attr = inner.attr if isinstance(inner, ast.Attribute) else getattr(inner, "id", None)
        if attr and isinstance(getattr(names, attr, None), names.MetricName):
            return [(getattr(names, attr).name, False)]
    # REMAINING_RATIO_METRIC = "TokenLifetimeRemainingRatio" at module level, then emit_metric(REMAINING_RATIO_METRIC)
    if isinstance(node, ast.Name) and node.id in constants:
        return [(constants[node.id], False)]
    # for decision, name in (("link", "IdentityLinked"), ...): emit_metric(name, ...)
    if isinstance(node, ast.Name):
        for loop in reversed(loops):
            if any(isinstance(t, ast.Name) and t.id == node.id for t in ast.walk(loop.target)):
                return [(c.value, False) for c in ast.walk(loop.iter)
                        if isinstance(c, ast.Constant) and isinstance(c.value, str)
                        and re.fullmatch(r"[A-Z][A-Za-z0-9]+", c.value)]
    return []


def _with_enclosing_loops(tree: ast.AST) -> list[tuple[ast.AST, list[ast.For]]]:
    out: list[tuple[ast.AST, list[ast.For]]] = []

    def visit(node: ast.AST, loops: list[ast.For]) -> None:
        out.append((node, loops))
        inner = [*loops, node] if isinstance(node, ast.For) else loops
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, [])
    return out


def emissions() -> list[Emission]:
    found = []
    for path in SOURCES:
        if path.name == "__init__.py" and path.parent.name == "observability":
            continue  # the definitions themselves
        tree = ast.parse(path.read_text())
        constants = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                     and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
                     for t in n.targets if isinstance(t, ast.Name)}
        for node, loops in _with_enclosing_loops(tree):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None))
                    in ("emit_metric", "timed")) or not node.args:
                continue
            resolved = _names(node.args[0], loops, constants)
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            assert resolved, f"{where}: metric name must be a literal or a names entry"
            keywords = [k.arg for k in node.keywords if k.arg not in NOT_DIMENSIONS]
            passthrough = any(k.arg is None for k in node.keywords)
            secondary = next((k for k in keywords if k is not None), None)
            found += [Emission(where, name, is_pattern, secondary, passthrough) for name, is_pattern in resolved]
    return found


def test_every_emitted_function_metric_is_a_catalogue_entry_with_its_dimensions() -> None:
    found = emissions()
    assert len(found) > 30
    functions = [m for m in names.ALL if m.emitter == "function"]
    for emission in found:
        entries = [m for m in functions if emission.matches(m)]
        assert entries, f"{emission.where}: {emission.name} is not in ehrbridge/observability/names.py"
        for entry in entries:
            if emission.passthrough:
                assert entry.secondary and entry.optional_secondary, (emission, entry)
            else:
                assert emission.secondary == entry.secondary, (emission, entry)


def test_every_function_catalogue_entry_is_emitted() -> None:
    found = emissions()
    for entry in (m for m in names.ALL if m.emitter == "function"):
        assert any(e.matches(entry) for e in found), f"{entry.name} is listed but nothing emits it"


def test_bridge_entries_match_what_the_bridge_flushes() -> None:
    constants = {v for k, v in vars(bridge_metrics).items() if k.isupper() and isinstance(v, str)}
    for entry in (m for m in names.ALL if m.emitter.startswith("bridge")):
        assert entry.name in constants, entry.name
        stream = io.StringIO()
        recorder = bridge_metrics.BridgeMetrics(stream=stream)
        if entry.emitter == "bridge_counter":
            recorder.count(entry.name, "t1", "AA" if entry.secondary else "")
        elif entry.emitter == "bridge_latency":
            recorder.observe(entry.name, "t1", 3.0)
        else:
            recorder.gauges[entry.name] = 12.0
        recorder.flush()
        emitted = {tuple(dims) for line in stream.getvalue().splitlines()
                   for directive in json.loads(line)["_aws"]["CloudWatchMetrics"] for dims in directive["Dimensions"]
                   if any(m["Name"] == entry.name for m in directive["Metrics"])}
        assert emitted == set(entry.dimension_sets), (entry.name, emitted)


def test_quarantines_are_counted_per_tenant_and_low_cardinality_reason(capsys) -> None:  # type: ignore[no-untyped-def]
    from ehrbridge.aws.s3 import InMemoryBlobStore
    from ehrbridge.contracts.envelope import new_envelope
    from ehrbridge.pipeline.stages import Quarantine

    class Sink:
        def __init__(self) -> None:
            self.sent: list[object] = []

        def publish(self, envelopes: list[object]) -> None:
            self.sent.extend(envelopes)

    envelope = new_envelope(tenant_id="t1", source="hl7v2", kind="ADT^A01", body=b"MSH|^~\\&|x",
                            natural_key=["n", "1"], patient_key=None)
    Quarantine(InMemoryBlobStore(), Sink()).put(  # type: ignore[arg-type]
        envelope, ["unsupported message type ADT^A99: no mapping", "second"], "normalizer")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    [metric] = [line for line in lines if "Quarantined" in line]
    assert metric["tenant"] == "t1" and metric["reason"] == "normalizer:unsupported message type"
    assert metric["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [list(names.QUARANTINED.dimension_sets[0])]
    assert names.quarantine_reason("hl7_ingest", ["OBX-3: loinc: bad"]) == "hl7_ingest:OBX-3"
    assert names.quarantine_reason("x", []) == "x:other"


def _poller_emissions() -> dict[str, set[tuple[str, ...]]]:
    """Every (metric, dimension set) PollMetrics writes, driving each of its recording methods."""
    from ehrbridge.poll.metrics import PollMetrics, outcome_for

    stream = io.StringIO()
    recorder = PollMetrics("t1", stream=stream, service="fhir_poller")
    for status, timeout in ((200, False), (401, False), (403, False), (404, False), (429, False), (503, False),
                            (400, False), (None, True), (None, False)):
        recorder.call("search", "Observation", status, 12.0, timeout=timeout)
        assert f"PollCall{outcome_for(status, timeout=timeout)}" in stream.getvalue()
    recorder.retry("search", "Observation", 1.5)
    recorder.bucket_wait("next-page", "Observation", 0.2)
    recorder.received("Observation", 10, duplicates=2)
    recorder.freshness("Observation", 130.0)
    recorder.denied("Observation")
    recorder.reprobed("Observation", reinstated=False)
    recorder.roster(2, 1, stuck=1)
    recorder.deletions("Observation", 3)
    recorder.staleness("Observation", 0.5)
    emitted: dict[str, set[tuple[str, ...]]] = {}
    for line in stream.getvalue().splitlines():
        for directive in json.loads(line)["_aws"]["CloudWatchMetrics"]:
            assert directive["Namespace"] == names.NAMESPACE
            for metric in directive["Metrics"]:
                emitted.setdefault(metric["Name"], set()).update(tuple(d) for d in directive["Dimensions"])
    return emitted


def test_poller_entries_match_what_the_poller_writes() -> None:
    """Both directions: every name PollMetrics writes is a poller entry with exactly its dimension sets,
    and every poller entry is written."""
    emitted = _poller_emissions()
    catalogued = {m.name: set(m.dimension_sets) for m in names.ALL if m.emitter.startswith("poller")}
    assert emitted == catalogued
    assert {f"PollCall{o}" for o in names.POLL_OUTCOMES} <= set(catalogued)
    assert ("service",) in catalogued["PollCallLatency"] and len(catalogued) >= 19
