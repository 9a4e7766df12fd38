"""`ehrbridge` entry point. Each capability registers its commands from its own module.

Command modules keep heavy imports inside the command functions so `ehrbridge --help` stays fast.
"""

from __future__ import annotations

import typer

from ehrbridge.cli import bridge as bridge_cli
from ehrbridge.cli import chaos as chaos_cli
from ehrbridge.cli import common
from ehrbridge.cli import identity as identity_cli
from ehrbridge.cli import local as local_cli
from ehrbridge.cli import normalize as normalize_cli
from ehrbridge.cli import ops as ops_cli
from ehrbridge.cli import tenants as tenants_cli

app = typer.Typer(help="ehrbridge: EHR integration that stays live.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="also show the library's metric (EMF) and "
                                       "log lines, on stderr (default: only the command's own output)")) -> None:
    common.set_verbose(verbose)


app.add_typer(local_cli.app, name="local")
local_cli.app.command("chaos")(chaos_cli.chaos)
app.add_typer(identity_cli.app, name="identity")
app.add_typer(bridge_cli.app, name="bridge")
app.command("send")(bridge_cli.send)
app.command("normalize")(normalize_cli.normalize)
app.command("preflight")(normalize_cli.preflight)
app.add_typer(tenants_cli.tenants_app, name="tenants")
app.command("status")(ops_cli.status)
app.command("redrive")(ops_cli.redrive)
app.command("replay")(ops_cli.replay)
app.add_typer(ops_cli.quarantine_app, name="quarantine")
app.add_typer(tenants_cli.keys_app, name="keys")
app.add_typer(tenants_cli.sandbox_app, name="sandbox")


def main() -> None:
    """Run the CLI; bad input gets a one-line error and exit 2, never a stack trace."""
    from ehrbridge.contracts.envelope import ContractError

    try:
        app()
    except ContractError as err:
        typer.echo(f"error: {err}", err=True)
        raise SystemExit(2) from None
    except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
        typer.echo(f"error: {err.strerror}: {err.filename}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
