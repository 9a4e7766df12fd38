"""`ehrbridge` entry point. Each capability registers its commands from its own module.

Command modules keep heavy imports inside the command functions so `ehrbridge --help` stays fast.
"""

from __future__ import annotations

import typer

from ehrbridge.cli import local as local_cli

app = typer.Typer(help="ehrbridge: EHR integration that stays live.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
app.add_typer(local_cli.app, name="local")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
