"""`ehrbridge normalize PATH...` and `ehrbridge preflight DIR`: normalization from the command line.

Without ``--tenant-config`` the demo tenant's settings apply (``events/tenants/demo-health.yaml``
when it is found, else a built-in equivalent: tenant ``demo-health``, zone America/New_York,
invalid codes kept under the sender's local system). Heavy imports stay inside the commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

_DEMO = Path(__file__).resolve().parents[4] / "events" / "tenants" / "demo-health.yaml"
_DEFAULT_TENANT: dict[str, Any] = {"tenant_id": "demo-health", "vendor": "generic", "timezone": "America/New_York",
                                   "terminology": {"on_invalid_code": "keep_local"}}


def _tenant(path: Path | None) -> Any:
    from ehrbridge.contracts.envelope import ContractError
    from ehrbridge.contracts.tenant import TenantConfig

    try:
        if path is not None:
            if not path.is_file():
                raise ContractError("tenant config", [f"{path}: no such file"])
            return TenantConfig.from_yaml(path)
        if _DEMO.is_file():
            return TenantConfig.from_yaml(_DEMO)
        return TenantConfig.parse_obj(_DEFAULT_TENANT)
    except ContractError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


def normalize(paths: list[Path] = typer.Argument(..., metavar="PATH",
                                                 help="HL7 v2 files (batches allowed) or vendor FHIR .json"),
              tenant_config: Path | None = typer.Option(None, "--tenant-config", help="Tenant YAML"),
              as_json: bool = typer.Option(False, "--json", help="One JSON line per message"),
              strict: bool = typer.Option(False, "--strict",
                                          help="Also validate each bundle with the R4B models")) -> None:
    """Normalize messages to canonical FHIR R4 bundles. Exit 0 all ok, 1 any quarantined, 2 usage error."""
    from ehrbridge.normalize.preflight import normalize_file

    tenant = _tenant(tenant_config)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        typer.echo(f"error: not a file: {', '.join(missing)}", err=True)
        raise typer.Exit(2)
    any_quarantined = False
    rows = []
    for path in paths:
        for result in normalize_file(path, tenant):
            if result.ok and strict:
                from ehrbridge.normalize.validate import validate_with_models

                problems = validate_with_models(result.bundle or {})
                if problems:
                    result.status, result.reasons = "quarantined", [f"invalid FHIR: {p}" for p in problems]
            any_quarantined |= not result.ok
            if as_json:
                line: dict[str, Any] = {"status": result.status, "source": str(path),
                                        "message_control_id": result.control_id, "kind": result.kind}
                if result.ok:
                    line.update(bundle=result.bundle, unmapped=result.unmapped, repairs=result.repairs,
                                issues=result.issues)
                else:
                    line["reasons"] = result.reasons
                sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
            else:
                rows.append((str(path), result))
    if not as_json:
        _table(rows)
    raise typer.Exit(1 if any_quarantined else 0)


def _table(rows: list[tuple[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ehrbridge normalize")
    for col in ("source", "type", "control id", "status", "resources", "unmapped", "repairs", "reasons"):
        table.add_column(col)
    for source, r in rows:
        table.add_row(source, r.kind, r.control_id, "[green]ok[/]" if r.ok else "[red]quarantined[/]",
                      str(len(r.bundle["entry"])) if r.ok else "-", str(len(r.unmapped)), str(len(r.repairs)),
                      "; ".join(r.reasons))
    Console().print(table)


def preflight(directory: Path = typer.Argument(..., metavar="DIR", help="Directory of de-identified sample messages"),
              tenant_config: Path | None = typer.Option(None, "--tenant-config", help="Tenant YAML"),
              html_out: Path | None = typer.Option(None, "--html", help="Write the HTML report here"),
              json_out: Path | None = typer.Option(None, "--json-out", help="Write the JSON report here")) -> None:
    """Go-live preflight: per message type, what maps, what does not, and why. Prints the JSON report."""
    from ehrbridge.normalize import preflight as pf

    tenant = _tenant(tenant_config)
    if not directory.is_dir():
        typer.echo(f"error: not a directory: {directory}", err=True)
        raise typer.Exit(2)
    report = pf.run([directory], tenant)
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if json_out:
        json_out.write_text(text, encoding="utf-8")
    if html_out:
        pf.write_html(report, html_out)
    sys.stdout.write(text + "\n")
    raise typer.Exit(0)
