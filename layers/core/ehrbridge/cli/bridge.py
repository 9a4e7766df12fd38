"""`ehrbridge bridge serve` (the MLLP/TLS bridge) and `ehrbridge send` (an MLLP/TLS client for operators)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="The HL7 v2 MLLP-over-TLS bridge.", no_args_is_help=True)

_ENV = "EHRBRIDGE_MLLP_"


@app.command("serve")
def serve(
    cert: Path = typer.Option(..., envvar=_ENV + "CERT_FILE", help="Server certificate chain (PEM)."),
    key: Path = typer.Option(..., envvar=_ENV + "KEY_FILE", help="Server private key (PEM)."),
    tenant: list[Path] = typer.Option(None, "--tenant", envvar=_ENV + "TENANT_FILES",
                                      help="Tenant config YAML (repeatable)."),
    tenants_from_store: bool = typer.Option(False, envvar=_ENV + "TENANTS_FROM_STORE",
                                            help="Load every tenant with MLLP sources from the state table."),
    client_ca: Path | None = typer.Option(None, envvar=_ENV + "CLIENT_CA_FILE",
                                          help="CA bundle for client certificates (enables mutual TLS)."),
    require_client_cert: bool = typer.Option(False, envvar=_ENV + "REQUIRE_CLIENT_CERT"),
    require_known_client_cert: bool = typer.Option(
        False, envvar=_ENV + "REQUIRE_KNOWN_CLIENT_CERT",
        help="Refuse client certificates no MLLP source is bound to (by SHA-256 fingerprint)."),
    host: str = typer.Option("0.0.0.0", envvar=_ENV + "HOST"),
    port: int = typer.Option(2575, envvar=_ENV + "PORT"),
    health_port: int = typer.Option(8080, envvar=_ENV + "HEALTH_PORT", help="HTTP /healthz /readyz /metrics."),
    max_message_bytes: int = typer.Option(16 * 1024 * 1024, envvar=_ENV + "MAX_MESSAGE_BYTES"),
    read_timeout: float = typer.Option(30.0, envvar=_ENV + "READ_TIMEOUT_S", help="Deadline for a started frame."),
    idle_timeout: float = typer.Option(3600.0, envvar=_ENV + "IDLE_TIMEOUT_S"),
    ack_timeout: float = typer.Option(10.0, envvar=_ENV + "ACK_TIMEOUT_S",
                                      help="Answer AE if the queue has not confirmed by then."),
    drain_timeout: float = typer.Option(30.0, envvar=_ENV + "DRAIN_TIMEOUT_S"),
    linger_ms: float = typer.Option(2.0, envvar=_ENV + "LINGER_MS", help="Group-commit linger."),
    max_connections: int = typer.Option(2000, envvar=_ENV + "MAX_CONNECTIONS"),
    metrics_interval: float = typer.Option(60.0, envvar=_ENV + "METRICS_INTERVAL_S"),
    tenant_refresh: float = typer.Option(300.0, envvar=_ENV + "TENANT_REFRESH_S",
                                         help="Re-read tenants this often; new senders need no restart."),
    workers: int = typer.Option(1, envvar=_ENV + "WORKERS", min=1, max=64,
                                help="Worker processes sharing the ports (one per vCPU)."),
    loop: str = typer.Option("auto", envvar=_ENV + "LOOP",
                             help="Event loop: auto (uvloop when installed, else asyncio), uvloop, asyncio."),
    ack_store_ttl: int = typer.Option(7 * 24 * 3600, envvar=_ENV + "ACK_STORE_TTL_S", min=60,
                                      help="Keep ACKs for resend replay (state table) this long."),
    ack_store_timeout: float = typer.Option(1.0, envvar=_ENV + "ACK_STORE_TIMEOUT_S",
                                            help="Skip (and count) an ACK-store lookup/write slower than this."),
    ack_store_lookup_first: int = typer.Option(
        8, envvar=_ENV + "ACK_STORE_LOOKUP_FIRST", min=0,
        help="Look up this many first messages per connection in the ACK store before committing."),
    ack_store_write_behind: bool = typer.Option(
        True, "--ack-store-write-behind/--ack-store-write-through", envvar=_ENV + "ACK_STORE_WRITE_BEHIND",
        help="Write-behind: AA right after the queue confirmed, the ACK stored in the background (a resend "
             "that beats the write gets a fresh ACK, same MSH-10/MSA-2). Write-through: stored before the AA "
             "(one DynamoDB round trip more per ACK)."),
) -> None:
    """Run the bridge until SIGTERM/SIGINT (then drain: stop accepting, finish in-flight ACKs, exit)."""
    from ehrbridge.aws.settings import MissingSetting
    from ehrbridge.contracts.envelope import ContractError
    from ehrbridge.contracts.tenant import TenantConfig
    from ehrbridge.mllp import loops
    from ehrbridge.mllp.app import AwsTargets, build_bridge
    from ehrbridge.mllp.server import BridgeSettings
    from ehrbridge.mllp.tls import server_context

    def load_tenants() -> list[TenantConfig]:
        loaded = [TenantConfig.from_yaml(path) for path in tenant or []]
        if tenants_from_store:
            from ehrbridge.aws import settings as aws_settings
            from ehrbridge.contracts.tenant_store import DynamoTenantStore

            loaded.extend(DynamoTenantStore(aws_settings.table_name("state"), max_age_s=0).list())
        return loaded

    try:
        tenants = load_tenants()
    except ContractError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    tenants = [t for t in tenants if t.mllp_sources]
    if not tenants:
        typer.echo("error: no tenant with mllp_sources (use --tenant FILE or --tenants-from-store)", err=True)
        raise typer.Exit(2)
    settings = BridgeSettings(
        certfile=cert, keyfile=key, host=host, port=port, health_host=host, health_port=health_port or None,
        client_ca=client_ca, require_client_cert=require_client_cert,
        require_known_client_cert=require_known_client_cert, max_message_bytes=max_message_bytes,
        read_timeout_s=read_timeout, idle_timeout_s=idle_timeout, ack_timeout_s=ack_timeout,
        linger_s=linger_ms / 1000, max_connections=max_connections, drain_timeout_s=drain_timeout,
        metrics_interval_s=metrics_interval, tenant_refresh_s=tenant_refresh, ack_store_ttl_s=ack_store_ttl,
        ack_store_timeout_s=ack_store_timeout, ack_store_lookup_first=ack_store_lookup_first,
        ack_store_write_behind=ack_store_write_behind)
    if workers > 1 and (port == 0 or health_port == 0):
        typer.echo("error: --workers > 1 needs fixed --port and --health-port", err=True)
        raise typer.Exit(2)
    settings.reuse_port = workers > 1
    try:
        # Fail fast, before any fork: unreadable certificate/key, missing queue settings.
        targets = AwsTargets.from_env()
        server_context(cert, key, client_ca=client_ca, require_client_cert=require_client_cert)
        loops.resolve(loop)
    except (OSError, ValueError, MissingSetting, loops.LoopUnavailable) as err:
        typer.echo(f"error: {type(err).__name__}: {err}", err=True)
        raise typer.Exit(2) from None

    def run_one(_index: int = 0) -> int:
        bridge = build_bridge(settings, tenants, targets, tenant_loader=load_tenants)

        def reload_tls() -> None:
            # SIGHUP: new certificate/key (rotated in Secrets Manager and rewritten) for new connections.
            bridge.ssl_context.load_cert_chain(str(cert), str(key))
            if client_ca:
                bridge.ssl_context.load_verify_locations(cafile=str(client_ca))

        loops.run(bridge.serve_forever(reload_tls=reload_tls), loop)
        bridge.committer.sink.close()  # type: ignore[attr-defined]
        return 0

    if workers > 1:
        from ehrbridge.mllp.workers import run_workers

        raise typer.Exit(run_workers(workers, run_one))
    run_one()


def send(
    files: list[Path] = typer.Argument(..., exists=True, dir_okay=False, help="HL7 files (one or more messages each)."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(2575, "--port"),
    ca: Path | None = typer.Option(None, "--ca", help="CA bundle that signed the bridge's certificate."),
    cert: Path | None = typer.Option(None, "--cert", help="Client certificate (mutual TLS)."),
    key: Path | None = typer.Option(None, "--key", help="Client private key (mutual TLS)."),
    server_name: str | None = typer.Option(None, "--server-name", help="Name to verify (default: --host)."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds to wait for each ACK."),
    silent_wait: float = typer.Option(3.0, "--silent-wait",
                                      help="With MSH-15 ER/SU, seconds to wait for an ACK that may not come."),
) -> None:
    """Send HL7 v2 messages over MLLP/TLS, one at a time on one connection, and print each ACK."""
    import asyncio
    import ssl

    from ehrbridge.mllp.client import MllpClient, MllpClientError
    from ehrbridge.mllp.local import read_messages
    from ehrbridge.mllp.tls import client_context

    try:
        ctx = client_context(ca, certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as err:
        typer.echo(f"error: cannot load TLS files: {err}", err=True)
        raise typer.Exit(2) from None

    async def run() -> int:
        failures = 0
        async with MllpClient(host, port, ssl_context=ctx, server_hostname=server_name or host,
                              timeout=timeout) as client:
            for path in files:
                for index, message in enumerate(read_messages(path), start=1):
                    ack = await client.send_per_msh15(message, silent_wait=silent_wait)
                    failures += not ack.ok
                    detail = f"  {ack.text}" if ack.text else ""
                    typer.echo(f"{path.name}#{index}\tMSA-2={ack.control_id}\t{ack.code or '-'}{detail}")
        return failures

    try:
        failures = asyncio.run(run())
    except (OSError, ssl.SSLError, MllpClientError, TimeoutError) as err:
        typer.echo(f"error: {type(err).__name__}: {err}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(1 if failures else 0)
