"""`ehrbridge local chaos`: the chaos scenarios on the local twin, one table row per scenario."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer


def chaos(
    scenario: Annotated[list[str] | None, typer.Option("--scenario", help="run only these (repeatable)")] = None,
    messages: Annotated[int, typer.Option("--messages", min=3, help="messages per scenario")] = 60,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
    list_only: Annotated[bool, typer.Option("--list", help="list the scenarios and exit")] = False,
) -> None:
    """Break one thing at a time (kill -9 the bridge, cut AWS, crash handlers, poison messages) and
    account for every message: in / delivered / quarantined / dead-lettered / duplicated / lost.

    Exit code 1 if any scenario lost or duplicated a message, left one in flight, or broke.
    """
    from ehrbridge.local.chaos import SCENARIOS, ScenarioResult, run_scenarios

    out = sys.stdout
    if list_only:
        for spec in SCENARIOS.values():
            out.write(f"{spec.name:<20} {spec.description}\n")
        return
    unknown = [n for n in scenario or [] if n not in SCENARIOS]
    if unknown:
        typer.secho(f"error: unknown scenario(s) {', '.join(unknown)}; see --list", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    header = f"{'scenario':<20}{'in':>6}{'delivered':>11}{'quarantined':>13}{'dead-lettered':>15}" \
             f"{'duplicated':>12}{'lost':>6}{'in flight':>11}{'seconds':>9}"

    def row(result: ScenarioResult) -> None:
        if as_json:
            return
        out.write(f"{result.name:<20}{result.messages_in:>6}{result.delivered:>11}{result.quarantined:>13}"
                  f"{result.dead_lettered:>15}{result.duplicated:>12}{result.lost:>6}{result.in_flight:>11}"
                  f"{result.seconds:>9.1f}" + ("" if result.ok else "  FAILED") + "\n")
        notes: dict[str, Any] = dict(result.notes)
        if result.error:
            notes["error"] = result.error
        if notes:
            out.write(f"{'':<20}{json.dumps(notes, sort_keys=True, default=str)}\n")
        out.flush()

    if not as_json:
        out.write(header + "\n")
        out.flush()
    results = run_scenarios(scenario or None, size=messages, progress=row)
    ok = all(r.ok for r in results)
    if as_json:
        out.write(json.dumps({"ok": ok, "scenarios": [r.to_dict() for r in results]}, sort_keys=True,
                             default=str) + "\n")
    else:
        out.write(("all scenarios: lost 0, duplicated 0" if ok else "FAILED: see the rows marked FAILED") + "\n")
    if not ok:
        raise typer.Exit(1)
