"""`ehrbridge tenants ...`, `ehrbridge keys ...` and `ehrbridge sandbox serve`.

Heavy imports stay inside the commands so `ehrbridge --help` stays fast. Output never contains
a token, a private key (except the file `keys generate` writes) or a client secret.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ehrbridge.cli.common import command_output, echo, print_json

tenants_app = typer.Typer(help="Onboard, inspect, check and remove tenants (health systems).", no_args_is_help=True)
keys_app = typer.Typer(help="Client-assertion signing keys: generate, rotate (with a published JWKS).",
                       no_args_is_help=True)
sandbox_app = typer.Typer(help="The sandbox EHR (FHIR R4 + SMART Backend Services) on 127.0.0.1.",
                          no_args_is_help=True)

StateTable = Annotated[str | None, typer.Option("--state-table", help="state table name (default: from the "
                                                                       "EHRBRIDGE_TABLE_STATE environment variable)")]
AsJson = Annotated[bool, typer.Option("--json", help="machine-readable output: always one JSON object on stdout")]
# Expected failures become one clear line (or one JSON object with --json), never a stack trace;
# library metrics/logs stay off the terminal unless `ehrbridge --verbose`.
_errors = command_output
_echo = echo


def _store(state_table: str | None) -> Any:
    from ehrbridge.aws.settings import table_name
    from ehrbridge.contracts.tenant_store import DynamoTenantStore

    return DynamoTenantStore(state_table or table_name("state"))


_print = print_json


# ---- tenants --------------------------------------------------------------------------
@tenants_app.command("add")
def tenants_add(
    config: Annotated[Path, typer.Argument(help="tenant YAML (non-secret config)", exists=True, dir_okay=False)],
    private_key_file: Annotated[Path | None, typer.Option(help="PEM private key; else the YAML's "
                                                               "private_key_file")] = None,
    client_secret_env: Annotated[str | None, typer.Option(help="name of an environment variable holding the "
                                                               "client secret (never pass it as an argument)")] = None,
    refresh_token_env: Annotated[str | None, typer.Option(help="name of an environment variable holding a "
                                                               "refresh token (user-facing vendor apps only)")] = None,
    restore_credentials: Annotated[bool, typer.Option(
        "--restore-credentials", help="the tenant was removed and its credentials secret is scheduled for "
                                      "deletion: restore it (old keys kept, a new key is added on top)")] = False,
    replace_credentials: Annotated[bool, typer.Option(
        "--replace-credentials", help="the tenant was removed and its credentials secret is scheduled for "
                                      "deletion: delete it for good now and store new credentials")] = False,
    state_table: StateTable = None,
    as_json: AsJson = False,
) -> None:
    """Validate TENANT.yaml, store its credentials in Secrets Manager (KMS) and its config in the tenant store."""
    with _errors(as_json):
        from ehrbridge.auth.credentials import SecretPendingDeletion, SecretsManagerCredentialStore
        from ehrbridge.auth.tokens import SecretsManagerTokenStore
        from ehrbridge.cli.common import OperatorError
        from ehrbridge.contracts.tenant import TenantConfig
        from ehrbridge.tenants.onboarding import onboard

        if restore_credentials and replace_credentials:
            raise OperatorError("--restore-credentials and --replace-credentials exclude each other")
        tenant = TenantConfig.from_yaml(config)
        pem = private_key_file.read_text(encoding="ascii") if private_key_file else None
        secret = _from_env(client_secret_env)
        refresh = _from_env(refresh_token_env)
        pending = "restore" if restore_credentials else "replace" if replace_credentials else "fail"
        try:
            result = onboard(tenant, tenants=_store(state_table), credentials=SecretsManagerCredentialStore(),
                             private_key_pem=pem, client_secret=secret, refresh_token=refresh,
                             tokens=SecretsManagerTokenStore(), pending=pending)  # type: ignore[arg-type]
        except SecretPendingDeletion as err:
            raise OperatorError(f"{err}. Pass --restore-credentials to bring it back (its keys stay registered "
                                f"with the vendor) or --replace-credentials to delete it now and store new "
                                f"credentials; see docs/runbooks/onboarding-a-tenant.md") from None
        out = {"tenant_id": result.tenant.tenant_id, "vendor": result.tenant.vendor, "key_id": result.kid,
               "scopes": result.scopes, "resource_types": result.resource_types,
               "credentials_secret": result.tenant.credentials_secret if result.credentials_stored else None,
               "credentials_action": result.credentials_action}
        if as_json:
            _print(out)
        else:
            _echo(f"tenant {out['tenant_id']} ({out['vendor']}) stored")
            _echo(f"  scopes: {' '.join(out['scopes']) or '(none: no workflows)'}")
            _echo(f"  credentials: {out['credentials_secret'] or 'unchanged'}"
                  + (f" (secret scheduled for deletion was {result.credentials_action})"
                     if result.credentials_action else ""))


@tenants_app.command("list")
def tenants_list(state_table: StateTable = None, as_json: AsJson = False) -> None:
    """List configured tenants."""
    with _errors(as_json):
        rows = [{"tenant_id": t.tenant_id, "vendor": t.vendor, "workflows": list(t.workflows),
                 "fhir_base_url": str(t.fhir_base_url) if t.fhir_base_url else None}
                for t in _store(state_table).list()]
        if as_json:
            _print(rows)
            return
        if not rows:
            _echo("no tenants")
        for row in rows:
            _echo(f"{row['tenant_id']:<32} {row['vendor']:<14} {','.join(row['workflows']) or '-'}")


@tenants_app.command("show")
def tenants_show(tenant_id: str, state_table: StateTable = None, as_json: AsJson = False) -> None:
    """Config, scopes, token status (expiry, granted/denied, failures) and key ids; never secrets."""
    with _errors(as_json):
        from ehrbridge.auth.credentials import CredentialsError, SecretsManagerCredentialStore
        from ehrbridge.auth.scopes import scopes_for
        from ehrbridge.auth.state import DynamoRefreshState
        from ehrbridge.auth.tokens import SecretsManagerTokenStore, kept_warm

        store = _store(state_table)
        tenant = store.get(tenant_id)
        status = DynamoRefreshState(store.table_name).status(tenant_id)
        token = SecretsManagerTokenStore().get(tenant_id, fresh=True)
        try:
            creds: dict[str, Any] | None = SecretsManagerCredentialStore().get(tenant_id).describe()
        except CredentialsError:
            creds = None
        out = {"config": tenant.model_dump(mode="json", exclude_none=True),
               "scopes": scopes_for(tenant.workflows) if tenant.workflows else [],
               "token": None if token is None else {
                   "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(token.expires_at)),
                   "seconds_remaining": round(token.remaining()), "granted_scope": token.granted_scope,
                   "key_id": token.kid, "lifetime_s": round(token.lifetime_s),
                   "remaining_ratio": round(token.remaining_ratio(), 3),
                   "refresh": "scheduled" if kept_warm(token.lifetime_s) else "on demand (FHIR client)"},
               "refresh": {"consecutive_failures": status.consecutive_failures,
                           "last_failure_reason": status.last_failure_reason,
                           "denied_types": status.denied_types, "server_denied_types": status.server_denied_types},
               "recorded_denials": _recorded_denials(store.table_name, tenant_id),
               "credentials": creds}
        _print(out) if as_json else _print_show(out)


@tenants_app.command("remove")
def tenants_remove(
    tenant_id: str,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
    keep_credentials: Annotated[bool, typer.Option(help="keep the credentials secret")] = False,
    recovery_days: Annotated[int, typer.Option(min=7, max=30, help="Secrets Manager recovery window")] = 7,
    state_table: StateTable = None,
    as_json: AsJson = False,
) -> None:
    """Remove a tenant: revoke (where the vendor allows) and delete its access token, schedule the
    credentials' deletion (recoverable), drop its config and refresh state."""
    with _errors(as_json):
        from ehrbridge.auth.credentials import SecretsManagerCredentialStore
        from ehrbridge.auth.state import DynamoRefreshState
        from ehrbridge.auth.token_endpoint import TokenClient
        from ehrbridge.auth.tokens import SecretsManagerTokenStore
        from ehrbridge.tenants.onboarding import remove

        if not yes and not typer.confirm(f"remove tenant {tenant_id}?"):
            raise typer.Exit(1)
        store = _store(state_table)
        token_client = TokenClient(max_attempts=2, budget_s=10.0)
        try:
            result = remove(tenant_id, tenants=store, credentials=SecretsManagerCredentialStore(),
                            tokens=SecretsManagerTokenStore(), revoke=token_client.revoke,
                            delete_credentials=not keep_credentials, recovery_days=recovery_days)
        finally:
            token_client.close()
        DynamoRefreshState(store.table_name).clear(tenant_id)
        token_text = {"revoked": "revoked at the vendor and deleted",
                      "not_supported": "deleted (the vendor offers no revocation; it expires on its own)",
                      "revoke_failed": "deleted, but revocation failed (it expires on its own)",
                      "not_attempted": "deleted", "none": "none live"}.get(result.revocation, result.revocation)
        if as_json:
            _print({"tenant_id": tenant_id, "found": result.found, "token": result.revocation,
                    "token_deleted": result.token_deleted, "credentials_scheduled_for_deletion":
                    result.credentials_scheduled, "recovery_days": recovery_days if result.credentials_scheduled
                    else None, "notes": result.notes})
            return
        _echo(f"tenant {tenant_id} removed" if result.found else f"tenant {tenant_id} was not configured")
        _echo(f"  access token: {token_text}")
        _echo("  credentials: " + (f"scheduled for deletion in {recovery_days} days (tenants add "
                                   f"--restore-credentials brings them back)" if result.credentials_scheduled
                                   else "kept"))
        for note in result.notes:
            _echo(f"  note: {note}")


@tenants_app.command("check")
def tenants_check(
    tenant: Annotated[str, typer.Argument(help="TENANT.yaml (with private_key_file) or a configured tenant id")],
    as_json: AsJson = False,
    state_table: StateTable = None,
) -> None:
    """Get a token, print requested vs granted scopes and probe each workflow's resource types.

    Exit code 0: all ok; 2: degraded (denied or unsupported types); 1: no token / error.
    With --json, stdout always carries exactly one JSON object (``ok: false`` and ``error`` on failure).
    """
    with _errors(as_json):
        from ehrbridge.auth.credentials import (
            CredentialsError,
            InMemoryCredentialStore,
            SecretsManagerCredentialStore,
            credentials_from_file,
        )
        from ehrbridge.auth.refresher import TokenRefresher
        from ehrbridge.auth.state import InMemoryRefreshState
        from ehrbridge.auth.tokens import InMemoryTokenStore
        from ehrbridge.contracts.tenant import TenantConfig
        from ehrbridge.tenants.check import check_tenant
        from ehrbridge.tenants.onboarding import validate

        path = Path(tenant)
        deployed = not (path.suffix in (".yaml", ".yml") or path.exists())
        config = _store(state_table).get(tenant) if deployed else TenantConfig.from_yaml(path)
        problems = validate(config)
        if problems:
            from ehrbridge.contracts.envelope import ContractError

            raise ContractError("tenant config", problems)
        credentials = InMemoryCredentialStore()
        if config.private_key_file is not None:
            credentials.put(config.tenant_id, credentials_from_file(config))
        else:
            try:
                credentials.put(config.tenant_id, SecretsManagerCredentialStore().get(config.tenant_id))
            except CredentialsError as err:
                raise CredentialsError(f"{err}; or set private_key_file in the YAML") from None
        # A private token cache and state: a check never disturbs the production token.
        refresher = TokenRefresher(credentials=credentials, tokens=InMemoryTokenStore(), state=InMemoryRefreshState())
        try:
            report = check_tenant(config, refresher)
        finally:
            refresher.token_client.close()
        # What the deployed poller has on record (a check's own probes use a private state): 403 denials
        # and when each is asked again.
        recorded = _recorded_denials(_store(state_table).table_name, config.tenant_id) \
            if deployed or state_table else None
        if as_json:
            _print({"ok": report.token_obtained, **report.to_dict(), "recorded_denials": recorded})
        else:
            _print_check(report)
            _print_denials(recorded)
        if not report.token_obtained:
            raise typer.Exit(1)
        if not report.healthy:
            raise typer.Exit(2)


# ---- keys -------------------------------------------------------------------------------
@keys_app.command("generate")
def keys_generate(
    out: Annotated[Path, typer.Option("--out", help="where to write the private key (PEM, mode 0600)")],
    alg: Annotated[str, typer.Option("--alg", help="RS384 or ES384")] = "RS384",
    kid: Annotated[str | None, typer.Option(help="key id (default: RFC 7638 thumbprint)")] = None,
    bits: Annotated[int, typer.Option(help="RSA key size")] = 3072,
    force: Annotated[bool, typer.Option(help="overwrite an existing file")] = False,
) -> None:
    """Write a new private key and print the public JWKS to register with the vendor."""
    with _errors():
        from ehrbridge.auth.keys import KeyMaterialError, generate_private_key, jwks, load_private_key, public_jwk
        from ehrbridge.auth.keys import thumbprint_kid as _thumb

        if alg not in ("RS384", "ES384"):
            raise KeyMaterialError("--alg must be RS384 or ES384")
        if out.exists() and not force:
            raise KeyMaterialError(f"{out} exists; pass --force to overwrite")
        pem = generate_private_key(alg, bits)  # type: ignore[arg-type]
        key = load_private_key(pem, alg)
        key_id = kid or _thumb(key)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(pem)
        typer.echo(f"private key written to {out} (kid {key_id}); register this JWKS:", err=True)
        _print(jwks([public_jwk(key, key_id, alg)]))


@keys_app.command("rotate")
def keys_rotate(
    tenant_id: str,
    cutover: Annotated[bool, typer.Option("--cutover", help="step 2: sign with the new key, keep the old "
                                                            "published")] = False,
    retire: Annotated[bool, typer.Option("--retire", help="step 3: drop the old key from credentials and "
                                                          "JWKS")] = False,
    alg: Annotated[str | None, typer.Option("--alg", help="algorithm of the new key (default: as now)")] = None,
    jwks_bucket: Annotated[str | None, typer.Option(help="S3 bucket serving the JWKS (default: "
                                                         "EHRBRIDGE_JWKS_BUCKET)")] = None,
    jwks_base_url: Annotated[str | None, typer.Option(help="HTTPS base URL the bucket is served at")] = None,
    state_table: StateTable = None,
) -> None:
    """Step 1 (default): add a new key and publish old+new; then --cutover; then --retire."""
    with _errors():
        from ehrbridge.auth.credentials import SecretsManagerCredentialStore
        from ehrbridge.tenants.keys import RotationError, S3JwksPublisher, rotate

        if cutover and retire:
            raise RotationError("--cutover and --retire are separate steps")
        phase = "cutover" if cutover else "retire" if retire else "add"
        result = rotate(tenant_id, phase, credentials=SecretsManagerCredentialStore(),  # type: ignore[arg-type]
                        publisher=S3JwksPublisher(jwks_bucket, base_url=jwks_base_url),
                        tenants=_store(state_table), algorithm=alg)  # type: ignore[arg-type]
        _print(vars(result))


# ---- sandbox ----------------------------------------------------------------------------
@sandbox_app.command("serve")
def sandbox_serve(
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 8790,
    vendor: Annotated[str, typer.Option(help="vendor profile: generic, epic, oracle_health, athena")] = "generic",
    register: Annotated[list[Path] | None, typer.Option(help="tenant YAML whose private_key_file's public key "
                                                             "to register (repeatable)")] = None,
    deny: Annotated[list[str] | None, typer.Option(help="resource type never granted (repeatable)")] = None,
    token_lifetime: Annotated[int | None, typer.Option(help="expires_in of issued tokens, seconds")] = None,
    token_limit: Annotated[int | None, typer.Option(help="token requests per minute per client")] = None,
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    paging: Annotated[str | None, typer.Option(help="next_link (server sessions), offset or page_token")] = None,
    fault: Annotated[list[str] | None, typer.Option(help="fault injection NAME=VALUE (repeatable), e.g. "
                                                         "throttle_rate=0.1, mutate_per_page=1; 'all' switches "
                                                         "every fault on (ehrbridge.sandbox.faults)")] = None,
) -> None:
    """Run the sandbox EHR until Ctrl-C (or --duration)."""
    with _errors():
        from ehrbridge.auth.keys import jwks, public_jwk_from_pem
        from ehrbridge.auth.scopes import resource_types_for
        from ehrbridge.contracts.tenant import TenantConfig
        from ehrbridge.contracts.vendors import VENDOR_PROFILES
        from ehrbridge.sandbox.server import SandboxEHR

        if vendor not in VENDOR_PROFILES:
            raise typer.BadParameter(f"unknown vendor; use one of {', '.join(VENDOR_PROFILES)}")
        from ehrbridge.sandbox.faults import parse_faults

        if paging not in (None, "next_link", "offset", "page_token"):
            raise typer.BadParameter("--paging: next_link, offset or page_token")
        try:
            faults = parse_faults(fault or [])
        except ValueError as err:
            raise typer.BadParameter(str(err)) from None
        sandbox = SandboxEHR(vendor, port=port, token_lifetime_s=token_lifetime,  # type: ignore[arg-type]
                             token_limit_per_min=token_limit, paging_style=paging,  # type: ignore[arg-type]
                             faults=faults)
        for path in register or []:
            tenant = TenantConfig.from_yaml(path)
            if tenant.private_key_file is None or not tenant.client_id or not tenant.key_id:
                raise typer.BadParameter(f"{path.name}: needs client_id, key_id and private_key_file")
            pem = tenant.private_key_file.read_text(encoding="ascii")
            grant = set(resource_types_for(tenant.workflows)) - set(deny or []) if deny else None
            sandbox.register_client(tenant.client_id, jwks=jwks([public_jwk_from_pem(pem, tenant.algorithm,
                                                                                     tenant.key_id)]),
                                    grant_types=grant)
            _echo(f"registered client {tenant.client_id} (tenant {tenant.tenant_id})")
        with sandbox:
            _echo(f"sandbox EHR ({vendor}) FHIR base {sandbox.fhir_base_url}  token {sandbox.token_url}")
            sys.stdout.flush()
            deadline = time.monotonic() + duration if duration else None
            try:
                while deadline is None or time.monotonic() < deadline:
                    time.sleep(0.2)
            except KeyboardInterrupt:
                pass


# ---- helpers ------------------------------------------------------------------------------
def _from_env(name: str | None) -> str | None:
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        from ehrbridge.auth.credentials import CredentialsError

        raise CredentialsError(f"environment variable {name} is empty or not set")
    return value


def _print_show(out: dict[str, Any]) -> None:
    config = out["config"]
    _echo(f"tenant {config['tenant_id']} ({config['vendor']})")
    _echo(f"  fhir_base_url: {config.get('fhir_base_url', '-')}")
    _echo(f"  workflows: {', '.join(config.get('workflows', [])) or '-'}")
    _echo(f"  requested scopes: {' '.join(out['scopes']) or '-'}")
    token = out["token"]
    if token:
        _echo(f"  token: expires {token['expires_at']} ({token['seconds_remaining']} s left of "
              f"{token['lifetime_s']} s; refreshed {token['refresh']}), "
              f"granted: {token['granted_scope'] or '(nothing)'}")
    else:
        _echo("  token: none yet")
    refresh = out["refresh"]
    _echo(f"  denied types: {', '.join(refresh['denied_types'] + refresh['server_denied_types']) or 'none'}")
    _print_denials(out.get("recorded_denials"))
    _echo(f"  consecutive refresh failures: {refresh['consecutive_failures']}"
               + (f" (last: {refresh['last_failure_reason']})" if refresh["last_failure_reason"] else ""))
    creds = out["credentials"]
    if creds:
        kids = ", ".join(f"{k['kid']} [{k['status']}, {k['algorithm']}]" for k in creds["keys"]) or "none"
        _echo(f"  keys: {kids}")


def _recorded_denials(table: str, tenant_id: str) -> list[dict[str, Any]]:
    from ehrbridge.auth.state import DynamoRefreshState
    from ehrbridge.poll.cursor import DynamoCursorStore
    from ehrbridge.poll.jobs import recorded_denials, reprobe_after_s

    return recorded_denials(DynamoRefreshState(table).status(tenant_id), DynamoCursorStore(table), tenant_id,
                            reprobe_after_s=reprobe_after_s())


def _print_denials(recorded: list[dict[str, Any]] | None) -> None:
    for denial in recorded or []:
        _echo(f"  recorded 403 denial: {denial['resource_type']} (since {denial['denied_since'] or 'unknown'}; "
              f"re-probed at {denial['next_reprobe']}, or sooner {denial['also_reprobed']})")


def _print_check(report: Any) -> None:
    _echo(f"tenant {report.tenant_id} ({report.vendor})")
    if report.requested_scopes is not None:
        _echo(f"  requested: {' '.join(report.requested_scopes)}")
    if not report.token_obtained:
        _echo(f"  token: FAILED ({report.error})")
        return
    _echo(f"  token: obtained, expires_in {report.expires_in:.0f} s")
    for warning in report.warnings:
        _echo(f"  warning: {warning}")
    _echo(f"  granted:   {report.granted_raw or '(nothing)'}")
    for probe in report.probes:
        _echo(f"  {probe.resource_type:<20} {probe.status.upper():<12} {probe.detail}")
    if report.denied_types:
        _echo(f"  denied resource types: {', '.join(report.denied_types)}")
    if report.unsupported_types:
        _echo(f"  unsupported resource types: {', '.join(report.unsupported_types)}")
    _echo("  result: " + ("ok" if report.healthy else "DEGRADED"))
