"""`ehrbridge local ...`: the local twin (moto on 127.0.0.1) and the end-to-end demo."""

from __future__ import annotations

import typer

app = typer.Typer(help="Run the pipeline locally: moto server on 127.0.0.1, real handlers.",
                  no_args_is_help=True)
