"""`ehrbridge poll TENANT.yaml --out DIR`: one-shot incremental FHIR poll, the function's code path.

Writes one NDJSON file per resource type under DIR (only versions not already there) and keeps the
cursors in DIR, so a second run continues from the watermark the first one printed.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ehrbridge.cli.tenants import _echo, _errors, _store

if TYPE_CHECKING:
    from ehrbridge.auth.credentials import InMemoryCredentialStore
    from ehrbridge.contracts.tenant import TenantConfig


def poll(
    tenant: Annotated[str, typer.Argument(help="TENANT.yaml (with private_key_file) or a configured tenant id")],
    out: Annotated[Path, typer.Option("--out", help="directory for <Type>.ndjson files and the cursor state",
                                      file_okay=False)],
    resources: Annotated[str | None, typer.Option("--resources", help="comma-separated resource types "
                                                                      "(default: the tenant's poll plan)")] = None,
    since: Annotated[str | None, typer.Option("--since", help="watermark (ISO instant) to start from instead of "
                                                              "the saved cursors")] = None,
    count: Annotated[int | None, typer.Option("--count", min=1, help="_count per page (default: the vendor's "
                                                                     "maximum)")] = None,
    bulk: Annotated[bool, typer.Option("--bulk", help="backfill with Bulk Data $export first (with _since and "
                                                      "_type), then poll from its transactionTime")] = False,
    group: Annotated[str | None, typer.Option("--group", help="Group id for a Group-level $export (Epic, "
                                                              "Oracle, athena)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one summary line as JSON")] = False,
    state_table: Annotated[str | None, typer.Option("--state-table", help="tenant store table (for a tenant "
                                                                          "id)")] = None,
) -> None:
    """Poll the tenant's FHIR server once: every page of each type's window, politely, then stop."""
    with _errors():
        from ehrbridge.auth.refresher import TokenRefresher
        from ehrbridge.auth.state import InMemoryRefreshState
        from ehrbridge.auth.tokens import InMemoryTokenStore
        from ehrbridge.contracts.envelope import ContractError
        from ehrbridge.observability import logger
        from ehrbridge.poll.oneshot import run_once
        from ehrbridge.poll.poller import _parse

        config = _load_tenant(tenant, state_table)
        if since is not None:
            try:
                _parse(since)
            except ValueError:
                raise ContractError("poll options", ["--since: not an ISO 8601 instant"]) from None
        types = [t.strip() for t in resources.split(",") if t.strip()] if resources else None
        for resource_type in types or []:
            if not resource_type[:1].isupper() or not resource_type.isalpha():
                raise ContractError("poll options", [f"--resources: {resource_type!r} is not a resource type"])
        refresher = TokenRefresher(credentials=_credentials_for(config), tokens=InMemoryTokenStore(),
                                   state=InMemoryRefreshState())
        logger.setLevel("WARNING")
        terminal = sys.stderr.isatty() and not as_json

        def progress(resource_type: str, received: int, requests: int) -> None:
            if terminal:
                sys.stderr.write(f"\r  {resource_type:<24} {received:>8} resources  {requests:>6} requests")
                sys.stderr.flush()

        from ehrbridge.poll.poller import PollSettings

        # The SMART client writes EMF metric lines to stdout for CloudWatch; a one-shot run reports in its summary.
        with contextlib.redirect_stdout(io.StringIO()):
            summary = run_once(config, refresher, out, resource_types=types, since=since, progress=progress,
                               settings=PollSettings(page_size=count), bulk=bulk, group_id=group)
        if terminal:
            sys.stderr.write("\n")
        data = summary.to_dict()
        if as_json:
            _echo(json.dumps(data, sort_keys=True, separators=(",", ":")))
            return
        _echo(f"tenant {summary.tenant_id}: {summary.requests} requests, {summary.retries} retries, "
              f"{summary.throttled} throttled, {summary.elapsed_s} s")
        for resource_type, count in summary.resources.items():
            _echo(f"  {resource_type:<24} {count:>8} received {summary.new.get(resource_type, 0):>8} new  "
                  f"watermark {summary.watermark.get(resource_type) or '-'}  ({summary.modes.get(resource_type)})")
        if summary.bulk:
            _echo(f"  bulk export: {sum(summary.bulk['resources'].values())} resources up to "
                  f"{summary.bulk['transaction_time']}")
        if summary.denied or summary.not_granted:
            _echo(f"  denied: {', '.join(summary.denied + summary.not_granted)}")
        _echo(f"  written to {out}")


def _load_tenant(tenant: str, state_table: str | None) -> TenantConfig:
    """A tenant YAML (as `tenants check` takes it) or the id of a configured tenant; validated."""
    from ehrbridge.contracts.envelope import ContractError
    from ehrbridge.contracts.tenant import TenantConfig
    from ehrbridge.tenants.onboarding import validate

    path = Path(tenant)
    config = TenantConfig.from_yaml(path) if path.suffix in (".yaml", ".yml") or path.exists() else \
        _store(state_table).get(tenant)
    problems = validate(config)
    if problems:
        raise ContractError("tenant config", problems)
    return config


def _credentials_for(config: TenantConfig) -> InMemoryCredentialStore:
    """The YAML's private_key_file, else the tenant's credentials secret; held in memory only."""
    from ehrbridge.auth.credentials import (
        CredentialsError,
        InMemoryCredentialStore,
        SecretsManagerCredentialStore,
        credentials_from_file,
    )

    credentials = InMemoryCredentialStore()
    if config.private_key_file is not None:
        credentials.put(config.tenant_id, credentials_from_file(config))
        return credentials
    try:
        credentials.put(config.tenant_id, SecretsManagerCredentialStore().get(config.tenant_id))
    except CredentialsError as err:
        raise CredentialsError(f"{err}; or set private_key_file in the YAML") from None
    return credentials
