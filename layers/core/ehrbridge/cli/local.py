"""`ehrbridge local ...`: the local twin (moto on 127.0.0.1) and the end-to-end demo."""

from __future__ import annotations

import json
import signal
import sys
import tempfile
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
           None, help="Override the queues' visibility timeout in seconds (default: as deployed)."),
       run_functions: bool = typer.Option(
           False, "--run-functions", help="Also run the pipeline's queue consumers (ingest, normalizer, identity "
                                          "matcher) against the twin, as the demo does, so traffic reaches the lake."),
       tenant: list[Path] = typer.Option(
           None, "--tenant", help="Tenant YAML to store in the state table (repeatable; with --run-functions "
                                  "the default is the demo tenant)."),
       log_file: Path = typer.Option(
           None, help="Where the functions' JSON logs and metrics go with --run-functions "
                      "(default: ehrbridge-local-functions.log in a new temporary directory)."),
       stock_emulator: bool = typer.Option(
           False, "--stock-emulator", hidden=True,
           help="moto exactly as shipped, without the twin's hardening (benchmark baseline only)."),
       ) -> None:
    """Start moto in server mode on 127.0.0.1 and create every queue, table, bucket and key; run until interrupted."""
    from ehrbridge.local.twin import MotoServer, provision

    # With the functions in this process, the emulator gets its own process (and core).
    server = MotoServer(port=port, separate_process=run_functions, stock=stock_emulator).start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    runner: threading.Thread | None = None
    try:
        twin = provision(server.endpoint, visibility_timeout_s=visibility_timeout)
        tenant_files = list(tenant or [])
        if run_functions and not tenant_files:
            from ehrbridge.local.demo import DEFAULT_TENANT

            tenant_files = [DEFAULT_TENANT]
        info = {**json.loads(twin.to_json()), "env": twin.env, "functions": run_functions,
                "tenants": _store_tenants(twin, tenant_files)}
        log_path = None
        if run_functions:
            log_path = log_file or Path(tempfile.mkdtemp(prefix="ehrbridge-local-")) / "ehrbridge-local-functions.log"
            info["log_file"] = str(log_path)
        if as_json:
            print(json.dumps(info, sort_keys=True), flush=True)
        else:
            print(f"moto server on {twin.endpoint}; export these to point functions and the CLI at it:")
            for key, value in sorted(twin.env.items()):
                print(f"export {key}={value}")
            if run_functions:
                print(f"pipeline functions running; their logs: {info['log_file']}")
            print("Ctrl-C to stop.", flush=True)
        if log_path is not None:
            # After printing: the functions' output is redirected process-wide from here on.
            runner = _start_functions(twin, log_path, stop)
        while not stop.wait(0.5):
            pass
    finally:
        stop.set()
        if runner is not None:
            runner.join(timeout=60)
        server.stop()


def _store_tenants(twin: object, files: list[Path]) -> list[str]:
    if not files:
        return []
    from ehrbridge.contracts.tenant import TenantConfig
    from ehrbridge.contracts.tenant_store import DynamoTenantStore
    from ehrbridge.local.twin import TwinResources, local_client

    assert isinstance(twin, TwinResources)
    store = DynamoTenantStore(twin.tables["state"], ddb=local_client("dynamodb", twin.endpoint))
    ids = []
    for path in files:
        config = TenantConfig.from_yaml(path)
        store.put(config)
        ids.append(config.tenant_id)
    return ids


def _start_functions(twin: object, log_path: Path, stop: threading.Event) -> threading.Thread:
    """The queue consumers on one thread, their logs to ``log_path`` (the endpoints were printed already)."""
    from ehrbridge.local.demo import pipeline_mappings, pipeline_output_to
    from ehrbridge.local.runner import PipelineRunner
    from ehrbridge.local.twin import TwinResources, activate

    assert isinstance(twin, TwinResources)
    activate(twin)
    runner = PipelineRunner(pipeline_mappings(twin))
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def run() -> None:
        with open(log_path, "a", encoding="utf-8") as stream, pipeline_output_to(stream):
            runner.run_until_stopped(stop)

    thread = threading.Thread(target=run, name="ehrbridge-functions", daemon=True)
    thread.start()
    return thread


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
