"""What every interactive command shares: one result on stdout, library noise kept off the terminal,
and expected failures as one clear line (or, with ``--json``, one JSON object on stdout).

The library emits EMF metrics on stdout and JSON logs, which is right inside a function (CloudWatch
reads them) and wrong for a person at a terminal: unless ``ehrbridge --verbose`` is given, both
go nowhere while a command runs; with it, both go to stderr (stdout stays parseable).
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any, TextIO

import typer

VERBOSE_ENV = "EHRBRIDGE_VERBOSE"
_verbose = contextvars.ContextVar("verbose", default=False)
_stdout: contextvars.ContextVar[TextIO | None] = contextvars.ContextVar("stdout", default=None)


def set_verbose(value: bool) -> None:
    _verbose.set(value)


def verbose() -> bool:
    return _verbose.get() or os.environ.get(VERBOSE_ENV, "") in ("1", "true", "yes")


def expected_errors() -> tuple[type[BaseException], ...]:
    """Failures that are the user's input or the environment, never a bug: one line, no trace."""
    from botocore.exceptions import BotoCoreError, ClientError

    from ehrbridge.auth.credentials import CredentialsError
    from ehrbridge.auth.keys import KeyMaterialError
    from ehrbridge.auth.refresher import RefreshFailed
    from ehrbridge.auth.scopes import ScopeError
    from ehrbridge.aws.settings import MissingSetting
    from ehrbridge.contracts.envelope import ContractError
    from ehrbridge.contracts.tenant_store import TenantNotFound
    from ehrbridge.tenants.keys import RotationError

    return (ContractError, CredentialsError, KeyMaterialError, TenantNotFound, RotationError, MissingSetting,
            ScopeError, RefreshFailed, OperatorError, ClientError, BotoCoreError)


class OperatorError(RuntimeError):
    """An operator command cannot do what was asked (unknown queue, nothing to release, ...)."""


def _message(err: BaseException) -> str:
    if isinstance(err, OSError) and not str(err):
        return err.strerror or type(err).__name__
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    return str(err)


@contextlib.contextmanager
def command_output(as_json: bool = False) -> Iterator[None]:
    """Run a command body: stdout for its result only; expected failures -> exit 1 with a clear
    message (stderr), or with ``as_json`` one ``{"ok": false, "error": ...}`` object on stdout."""
    from ehrbridge.observability import logger

    real_stdout = sys.stdout
    token = _stdout.set(real_stdout)
    sink: TextIO = sys.stderr if verbose() else io.StringIO()
    # The Powertools handler holds the stream it was created with: point it at the sink too.
    streams = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]
    previous = [h.setStream(sink) for h in streams]
    try:
        with contextlib.redirect_stdout(sink), warnings.catch_warnings():
            if not verbose():
                warnings.simplefilter("ignore")  # Powertools' "no metrics" warnings and the like
            yield
    except typer.Exit:
        raise
    except (*expected_errors(), OSError) as err:
        _fail(err, as_json, real_stdout)
    except Exception as err:
        if verbose() or not as_json:
            raise
        _fail(err, as_json, real_stdout, internal=True)
    finally:
        _stdout.reset(token)
        for handler, stream in zip(streams, previous, strict=True):
            if stream is not None:
                handler.setStream(stream)


def _fail(err: BaseException, as_json: bool, stdout: TextIO, *, internal: bool = False) -> None:
    kind = "internal" if internal else type(err).__name__
    message = f"unexpected {type(err).__name__}; rerun with --verbose for details" if internal else _message(err)
    if as_json:
        stdout.write(json.dumps({"ok": False, "error": {"kind": kind, "message": message}}, sort_keys=True) + "\n")
        stdout.flush()
    else:
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1) from None


def stdout() -> TextIO:
    """The command's own stdout (sys.stdout is the library-noise sink while a command runs)."""
    return _stdout.get() or sys.stdout


def echo(text: str = "") -> None:
    typer.echo(text, file=_stdout.get() or sys.stdout)


def print_json(data: Any) -> None:
    echo(json.dumps(data, indent=2, sort_keys=True, default=str))
