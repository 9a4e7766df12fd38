"""Operator commands: `ehrbridge status`, `redrive`, `replay` and `quarantine list|show|release`.

They find the resources the way the functions do (environment variables named in
ehrbridge.resources), so they work against a deployed stack and the local twin alike
(`eval "$(ehrbridge local up --env)"`-style exports from `ehrbridge local up`).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ehrbridge.cli.common import OperatorError, command_output, echo, print_json, stdout

quarantine_app = typer.Typer(help="The quarantine as a work list: what was set aside, why, and release after a fix.",
                             no_args_is_help=True)
AsJson = Annotated[bool, typer.Option("--json", help="machine-readable output: one JSON object on stdout")]
TenantOpt = Annotated[str | None, typer.Option("--tenant", help="only this tenant")]


def _queue_name(name: str) -> str:
    from ehrbridge import resources

    names = [q.name for q in resources.QUEUES]
    for spec in resources.QUEUES:
        if name in (spec.name, spec.physical_name(), spec.dlq_physical_name(), f"{spec.name}-dlq"):
            return spec.name
    raise OperatorError(f"unknown queue {name!r}; one of: {', '.join(names)}")


# ---- status -------------------------------------------------------------------------------
def status(as_json: AsJson = False) -> None:
    """Queues and DLQs, oldest ages, token ages, data staleness, review backlog, open quarantine: one screen."""
    with command_output(as_json):
        from ehrbridge import resources
        from ehrbridge.auth.state import DynamoRefreshState
        from ehrbridge.auth.tokens import SecretsManagerTokenStore
        from ehrbridge.aws import settings
        from ehrbridge.aws.clients import client
        from ehrbridge.contracts.tenant_store import DynamoTenantStore
        from ehrbridge.identity.dynamo_store import DynamoMpiStore
        from ehrbridge.ops.status import collect

        state_table = settings.table_name("state")
        queue_urls = {q.name: settings.queue_url(q.name) for q in resources.QUEUES}
        dlq_urls = {q.name: settings.dlq_url(q.name) for q in resources.QUEUES}
        report = collect(sqs=client("sqs"), cloudwatch=client("cloudwatch"), s3=client("s3"), queue_urls=queue_urls,
                         dlq_urls=dlq_urls, tenants=DynamoTenantStore(state_table).list(),
                         tokens=SecretsManagerTokenStore(), refresh_state=DynamoRefreshState(state_table),
                         mpi=DynamoMpiStore(settings.table_name("mpi")), lake_bucket=settings.bucket_name("lake"),
                         quarantine=_quarantine())
        if as_json:
            print_json({"ok": not report.problems, **report.to_dict()})
            return
        _print_status(report)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _print_status(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stdout(), width=max(100, Console().width))
    queues = Table(title=f"ehrbridge status {report.at}", title_justify="left")
    for column in ("queue", "waiting", "in flight", "oldest", "DLQ", "DLQ oldest"):
        queues.add_column(column, justify="left" if column == "queue" else "right")
    for q in report.queues:
        if q.error:
            queues.add_row(q.name, f"[red]{q.error}[/red]", "", "", "", "")
            continue
        queues.add_row(q.name, str(q.visible), str(q.in_flight), _age(q.oldest_age_s),
                       f"[red]{q.dlq_visible}[/red]" if q.dlq_visible else "0", _age(q.dlq_oldest_age_s))
    console.print(queues)
    tenants = Table(show_header=True)
    for column in ("tenant", "token left", "refresh", "failures", "review open", "quarantine", "freshest data"):
        tenants.add_column(column)
    for t in report.tenants:
        token = "-" if t.token_seconds_left is None else \
            f"{t.token_seconds_left:.0f}/{t.token_lifetime_s:.0f}s ({t.token_remaining_ratio:.0%})"
        fresh = ", ".join(f"{rt} {_age(age)}" for rt, age in sorted(t.newest_data.items())) or "-"
        tenants.add_row(t.tenant_id, token, t.refresh_mode or "-", str(t.refresh_failures),
                        "-" if t.review_open is None else str(t.review_open), str(t.quarantine_open), fresh)
    console.print(tenants if report.tenants else "no tenants configured")
    for problem in report.problems:
        console.print(f"[yellow]attention:[/yellow] {problem}")
    if not report.problems:
        console.print("nothing needs attention")


# ---- redrive -----------------------------------------------------------------------------
def redrive(
    queue: Annotated[str, typer.Argument(help="the queue whose DLQ to redrive (e.g. normalize)")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count and classify, move nothing")] = False,
    max_messages: Annotated[int | None, typer.Option("--max", min=1, help="move at most this many")] = None,
    include_invalid: Annotated[bool, typer.Option("--include-invalid", help="also move messages that are not "
                                                  "valid envelopes (they will fail again)")] = False,
    as_json: AsJson = False,
) -> None:
    """Move a DLQ's messages back to their source queue (FIFO group kept; idempotent consumers)."""
    with command_output(as_json):
        from ehrbridge.aws import settings
        from ehrbridge.aws.clients import client
        from ehrbridge.ops.redrive import redrive as run

        name = _queue_name(queue)
        result = run(client("sqs"), queue=name, dlq_url=settings.dlq_url(name), source_url=settings.queue_url(name),
                     dry_run=dry_run, max_messages=max_messages, include_invalid=include_invalid)
        if as_json:
            print_json({"ok": result.failed == 0, **result.to_dict()})
            return
        verb = "would move" if dry_run else "moved"
        echo(f"{name} DLQ: {result.in_dlq_before} message(s); {verb} {result.found if dry_run else result.moved} "
             f"to {name}" + ("" if dry_run else f"; {result.in_dlq_after} left"))
        if result.kept_invalid:
            echo(f"  kept {result.kept_invalid} invalid envelope(s) (--include-invalid to move them anyway)")
        if result.failed:
            echo(f"  {result.failed} not accepted by the source queue; still in the DLQ")
        for label, counts in (("tenant", result.by_tenant), ("kind", result.by_kind), ("reason", result.reasons)):
            for key, count in sorted(counts.items(), key=lambda kv: -kv[1])[:10]:
                echo(f"  {label} {key}: {count}")
        if result.failed:
            raise typer.Exit(1)


# ---- replay ------------------------------------------------------------------------------
def replay(
    tenant: Annotated[str, typer.Option("--tenant", help="tenant id")],
    start: Annotated[str, typer.Option("--from", help="ISO 8601 start (inclusive; UTC if no offset)")],
    end: Annotated[str, typer.Option("--to", help="ISO 8601 end (exclusive)")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count what would be replayed")] = False,
    as_json: AsJson = False,
) -> None:
    """Raw HL7 from the archive back into hl7-inbound; already-processed messages are dropped by idempotency."""
    with command_output(as_json):
        from ehrbridge.aws import settings
        from ehrbridge.aws.clients import client
        from ehrbridge.aws.sqs import SqsPublisher
        from ehrbridge.ops.replay import parse_instant
        from ehrbridge.ops.replay import replay as run

        try:
            begin, finish = parse_instant(start), parse_instant(end)
        except ValueError as err:
            raise OperatorError(str(err)) from None
        if finish <= begin:
            raise OperatorError("--to must be after --from")
        result = run(client("s3"), archive_bucket=settings.bucket_name("archive"),
                     out=SqsPublisher(settings.queue_url("hl7-inbound")), tenant_id=tenant, start=begin, end=finish,
                     dry_run=dry_run)
        if as_json:
            print_json({"ok": not result.unreadable, **result.to_dict()})
            return
        echo(f"tenant {tenant}: {result.archived_in_range} archived message(s) from {result.start} to {result.end}; "
             + (f"would send {result.archived_in_range}" if dry_run else f"sent {result.sent} to hl7-inbound "
                "(already-processed ones are dropped by the consumers' idempotency)"))
        for kind, count in sorted(result.by_kind.items()):
            echo(f"  {kind}: {count}")
        if result.rebuilt_without_metadata:
            echo(f"  {result.rebuilt_without_metadata} rebuilt from MSH (archived without their envelope)")
        for key in result.unreadable[:20]:
            echo(f"  unreadable archive object: {key}")
        if result.unreadable:
            raise typer.Exit(1)


# ---- quarantine ----------------------------------------------------------------------------
def _quarantine() -> Any:
    from ehrbridge.aws import settings
    from ehrbridge.aws.s3 import S3BlobStore
    from ehrbridge.ops.quarantine import QuarantineList

    return QuarantineList(S3BlobStore(settings.bucket_name("quarantine")), _Publishers())


class _Publishers(dict):  # type: ignore[type-arg]
    """Queue name -> publisher, built on first use (release needs one queue, list none)."""

    def get(self, name: str, default: Any = None) -> Any:
        from ehrbridge.aws import settings
        from ehrbridge.aws.sqs import SqsPublisher
        from ehrbridge.pipeline.wiring import stage_io

        if name not in self:
            self[name] = SqsPublisher(settings.queue_url(name), stage_io().claim_check)
        return self[name]


@quarantine_app.command("list")
def quarantine_list(tenant: TenantOpt = None,
                    include_released: Annotated[bool, typer.Option("--all", help="include released items")] = False,
                    as_json: AsJson = False) -> None:
    """Open quarantine items, oldest first: id, tenant, stage, kind, when, reason."""
    with command_output(as_json):
        items = _quarantine().items(tenant=tenant, include_released=include_released)
        if as_json:
            print_json({"ok": True, "count": len(items), "items": [i.summary() for i in items]})
            return
        if not items:
            echo("quarantine is empty" + (f" for tenant {tenant}" if tenant else ""))
        for item in items:
            state = "" if item.open else f" [released as {str(item.released.get('released_as'))[:12]}]"  # type: ignore[union-attr]
            echo(f"{item.id[:12]}  {item.quarantined_at[:19]}  {item.tenant_id:<20} {item.stage:<16} "
                 f"{item.kind:<12} {'; '.join(item.reasons)[:100]}{state}")


@quarantine_app.command("show")
def quarantine_show(item_id: Annotated[str, typer.Argument(help="item id (or its first 6+ characters)")],
                    tenant: TenantOpt = None,
                    body: Annotated[bool, typer.Option("--body", help="also print the quarantined input itself "
                                                       "(it can hold PHI: for authorised eyes only)")] = False,
                    as_json: AsJson = False) -> None:
    """One item: every reason, tenant, stage, when, lineage ids; the input itself only with --body."""
    with command_output(as_json):
        quarantine = _quarantine()
        item = quarantine.get(item_id, tenant=tenant)
        data = item.summary()
        raw = quarantine.body(item) if body else None
        if as_json:
            print_json({"ok": True, **data, **({"body": raw.decode("utf-8", "replace")} if raw is not None else {})})
            return
        echo(f"quarantine item {item.id}")
        for key in ("tenant_id", "stage", "kind", "quarantined_at", "correlation_id"):
            echo(f"  {key}: {data[key]}")
        for reason in item.reasons:
            echo(f"  reason: {reason}")
        echo(f"  status: {'open' if item.open else 'released ' + str(item.released)}")
        if raw is not None:
            echo("  body:")
            echo(raw.decode("utf-8", "replace").replace("\r", "\n"))


@quarantine_app.command("release")
def quarantine_release(item_id: Annotated[str, typer.Argument(help="item id (or its first 6+ characters)")],
                       tenant: TenantOpt = None,
                       dry_run: Annotated[bool, typer.Option("--dry-run", help="say where it would go")] = False,
                       as_json: AsJson = False) -> None:
    """Re-inject an item into the queue of the stage that quarantined it (after the cause is fixed)."""
    with command_output(as_json):
        from ehrbridge.ops.quarantine import QuarantineError

        quarantine = _quarantine()
        try:
            item = quarantine.get(item_id, tenant=tenant)
            outcome = quarantine.release(item, dry_run=dry_run)
        except QuarantineError as err:
            raise OperatorError(str(err)) from None
        if as_json:
            print_json({"ok": True, **outcome})
            return
        verb = "would release" if dry_run else "released"
        echo(f"{verb} {item.id} into {outcome['queue']} as {outcome['released_as']}; if it fails again it "
             f"returns to the quarantine under that id")
