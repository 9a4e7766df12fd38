"""`ehrbridge local ...`: the local twin (moto on 127.0.0.1) and the end-to-end demo."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from ehrbridge.local.demo import DemoSummary

app = typer.Typer(help="Run the pipeline locally: moto server on 127.0.0.1, real handlers.",
                  no_args_is_help=True)


@app.command("up")
def up(port: int = typer.Option(0, help="Port for the moto server (0: pick a free one)."),
       as_json: bool = typer.Option(False, "--json", help="Print the endpoints as one JSON line."),
       visibility_timeout: int | None = typer.Option(
           None, help="Override the queues' visibility timeout in seconds (default: as deployed).")) -> None:
    """Start moto in server mode on 127.0.0.1 and create every queue, table, bucket and key; run until interrupted."""
    from ehrbridge.local.twin import MotoServer, provision

    server = MotoServer(port=port).start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        twin = provision(server.endpoint, visibility_timeout_s=visibility_timeout)
        if as_json:
            print(json.dumps({**json.loads(twin.to_json()), "env": twin.env}, sort_keys=True), flush=True)
        else:
            print(f"moto server on {twin.endpoint}; export these to point functions and the CLI at it:")
            for key, value in sorted(twin.env.items()):
                print(f"export {key}={value}")
            print("Ctrl-C to stop.", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()


@app.command("demo")
def demo(as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
         events: Path = typer.Option(None, help="Directory of sample events (default: the repo's events/)."),
         tenant: Path = typer.Option(None, help="Tenant YAML (default: events/tenants/demo-health.yaml)."),
         out: Path = typer.Option(None, help="Where to leave the FHIR NDJSON output (default: ./out/demo-<time>)."),
         ) -> None:
    """Run every sample in events/ through the pipeline on the local twin and account for each one."""
    from ehrbridge.local import demo as demo_mod

    output_dir = out or demo_mod.default_output_dir()
    summary = demo_mod.run_demo(events_dir=events or demo_mod.DEFAULT_EVENTS,
                                tenant_file=tenant or demo_mod.DEFAULT_TENANT, output_dir=output_dir)
    if as_json:
        print(summary.to_json())
    else:
        _print_table(summary)
    if summary.lost or not summary.drained:
        raise typer.Exit(1)


def _print_table(summary: DemoSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout)
    table = Table(title="ehrbridge local demo")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows: list[tuple[str, object]] = [
            ("messages in", summary.messages_in), ("delivered to the lake", summary.delivered),
            ("resources out", summary.resources_out), ("quarantined", summary.quarantined),
            ("dead-lettered", summary.dead_lettered), ("lost", summary.lost), ("still in flight", summary.in_flight)]
    acks = " ".join(f"{code} {count}" for code, count in sorted(summary.acks.items())) or "none"
    rows += [("MLLP/TLS ACKs", acks), ("returned to sender (AE)", summary.returned_to_sender)]
    for label, value in [*rows, *sorted(summary.extras.items())]:
        table.add_row(str(label), str(value))
    console.print(table)
    if summary.resources_by_type:
        by_type = sorted(summary.resources_by_type.items())
        console.print("resources by type: " + ", ".join(f"{k} {v}" for k, v in by_type))
    for reason in sorted(set(summary.quarantine_reasons))[:20]:
        console.print(f"quarantine reason: {reason}")
    console.print(f"FHIR NDJSON output: {summary.output_dir}/lake (function logs: {summary.output_dir}/pipeline.log)")
