"""`ehrbridge identity ...`: resolve patients as the function does, train a model, work the review queue.

Where the MPI lives: ``--state FILE`` keeps it in a local JSON snapshot (created if missing);
``--dynamodb`` uses the deployed (or local twin's) ``mpi`` table named by EHRBRIDGE_TABLE_MPI;
neither: a fresh in-memory MPI for this run only. Heavy imports stay inside the commands.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(help="Patient identity resolution (EMPI): resolve, train, review, merge.", no_args_is_help=True)
review_app = typer.Typer(help="The review queue: list items and decide them.", no_args_is_help=True)
app.add_typer(review_app, name="review")

_STATE = typer.Option(None, "--state", help="MPI snapshot file (JSON) to read and update.")
_DYNAMO = typer.Option(False, "--dynamodb", help="Use the mpi DynamoDB table (EHRBRIDGE_TABLE_MPI).")
_TENANT = typer.Option("local", "--tenant", help="Tenant id the records belong to.")
_MODEL = typer.Option(None, "--model", help="Model file (JSON); default: the shipped model.")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _read_ndjson(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        _fail(f"{path}: no such file")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                _fail(f"{path.name} line {lineno}: not valid JSON")
            if not isinstance(obj, dict) or obj.get("resourceType") != "Patient":
                _fail(f"{path.name} line {lineno}: expected a FHIR Patient resource")
            yield lineno, obj


class _Mpi:
    """The chosen store, saved back to the snapshot file on exit when there is one."""

    def __init__(self, state: Path | None, dynamodb: bool) -> None:
        from ehrbridge.identity.store import InMemoryMpiStore

        self.state = state
        if dynamodb:
            from ehrbridge.aws import settings
            from ehrbridge.identity.dynamo_store import DynamoMpiStore

            try:
                self.store: Any = DynamoMpiStore(settings.table_name("mpi"))
            except settings.MissingSetting as err:
                _fail(str(err))
        elif state is not None and state.exists():
            try:
                self.store = InMemoryMpiStore.load(json.loads(state.read_text(encoding="utf-8")))
            except (ValueError, KeyError, TypeError):
                _fail(f"{state}: not an MPI snapshot")
        else:
            self.store = InMemoryMpiStore()

    def publish(self, changes: list[Any]) -> None:
        """Manual decisions are link changes too: on the deployed MPI they go to EventBridge like the
        function's (locally there is no bus to tell)."""
        if changes and not hasattr(self.store, "dump"):
            from ehrbridge.identity.events import EventBridgeLinkEvents

            EventBridgeLinkEvents().publish(changes)

    def save(self) -> None:
        if self.state is not None and hasattr(self.store, "dump"):
            tmp = self.state.with_suffix(self.state.suffix + ".tmp")
            tmp.write_text(json.dumps(self.store.dump()), encoding="utf-8")
            tmp.replace(self.state)


def _load_model(path: Path | None) -> Any:
    from ehrbridge.identity.model import Model, ModelError

    try:
        return Model.load(path)
    except (OSError, ModelError) as err:
        _fail(f"model: {err}")


def _resolver(mpi: _Mpi, model: Any) -> Any:
    from ehrbridge.identity.resolver import Resolver
    from ehrbridge.identity.stage import TenantThresholds

    return Resolver(mpi.store, model, thresholds=TenantThresholds(mpi.store, model))


@app.command("resolve")
def resolve(patients: Path = typer.Argument(..., help="NDJSON file of FHIR Patient resources."),
            model_file: Path | None = _MODEL,
            as_json: bool = typer.Option(False, "--json", help="One JSON object per input line."),
            tenant: str = _TENANT, state: Path | None = _STATE, dynamodb: bool = _DYNAMO) -> None:
    """Resolve each Patient in input order, one at a time, exactly as the identity function does."""
    from ehrbridge.identity.resolver import ResolveError

    model = _load_model(model_file)
    mpi = _Mpi(state, dynamodb)
    resolver = _resolver(mpi, model)
    counts: dict[str, int] = {}
    try:
        for lineno, patient in _read_ndjson(patients):
            try:
                res = resolver.resolve(tenant, patient)
            except ResolveError as err:
                _fail(f"{patients.name} line {lineno}: {err}")
            mpi.publish(res.changes)
            counts[res.decision] = counts.get(res.decision, 0) + 1
            if as_json:
                sys.stdout.write(json.dumps(res.as_json()) + "\n")
            else:
                typer.echo(f"{res.patient_id:24s} -> {res.enterprise_id}  {res.decision:6s} {res.grade:13s} "
                           f"{res.score:.4f}" + (f"  review {res.review_id}" if res.review_id else ""))
    finally:
        mpi.save()
    if not as_json:
        typer.echo("summary: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), err=True)


@app.command("train")
def train_cmd(patients: Path = typer.Argument(..., help="NDJSON file of FHIR Patient resources."),
              out: Path = typer.Option(..., "--out", help="Where to write the model (JSON)."),
              link: float | None = typer.Option(None, help="Auto-link threshold (probability)."),
              review: float | None = typer.Option(None, help="Review threshold (probability)."),
              seed: int = typer.Option(0, help="Random seed for the u sample."),
              population_size: int | None = typer.Option(
                  None, min=2, help="Distinct people in the MPI the model serves (sets the prior odds 1:N); "
                                    "default: the number of records trained on.")) -> None:
    """Estimate m/u by EM (label-free) on a tenant's own patients and freeze them into a model file."""
    from ehrbridge.identity.model import Thresholds, default_model
    from ehrbridge.identity.normalize import person_from_patient
    from ehrbridge.identity.train import train

    persons = [person_from_patient(p) for _, p in _read_ndjson(patients)]
    base = default_model().thresholds.model_dump()
    if link is not None:
        base["link"] = link
    if review is not None:
        base["review"] = review
    try:
        model = train(persons, seed=seed, thresholds=Thresholds(**base), label=patients.name,
                      population_size=population_size or max(2, len(persons)))
    except ValueError as err:
        _fail(str(err))
    out.write_text(model.to_json() + "\n", encoding="utf-8")
    typer.echo(f"wrote {out}: version {model.version}, {len(persons)} records, "
               f"{model.meta['blocked_pairs']} blocked pairs, lambda {model.prior:.4f}")


@app.command("thresholds")
def thresholds_cmd(tenant: str = _TENANT, link: float | None = typer.Option(None),
                   review: float | None = typer.Option(None), margin_bits: float | None = typer.Option(None),
                   twin_guard: bool | None = typer.Option(None, "--twin-guard/--no-twin-guard"),
                   identifier_lifts_gate: bool | None = typer.Option(None,
                                                                     "--identifier-lifts-gate/--strict-gate"),
                   population_size: int | None = typer.Option(
                       None, min=2, help="Distinct people in the tenant's MPI (the prior odds of a pair are 1:N)."),
                   state: Path | None = _STATE, dynamodb: bool = _DYNAMO) -> None:
    """Show or set a tenant's decision thresholds (stored in the MPI, read by the function)."""
    from ehrbridge.identity.model import Thresholds

    mpi = _Mpi(state, dynamodb)
    current = (mpi.store.settings(tenant) or {}).get("thresholds", {})
    updates = {k: v for k, v in {"link": link, "review": review, "margin_bits": margin_bits,
                                  "twin_guard": twin_guard, "identifier_lifts_gate": identifier_lifts_gate,
                                  "population_size": population_size}.items()
               if v is not None}
    if updates:
        try:
            merged = Thresholds(**{**_load_model(None).thresholds.model_dump(), **current, **updates})
        except ValueError as err:
            _fail(f"invalid thresholds: {err}")
        if merged.review >= merged.link:
            _fail("the review threshold must be below the link threshold")
        mpi.store.put_settings(tenant, {"thresholds": {**current, **updates}})
        mpi.save()
        current = {**current, **updates}
    typer.echo(json.dumps({"tenant": tenant, "thresholds": current}, sort_keys=True))


@review_app.command("list")
def review_list(tenant: str = _TENANT, status: str = typer.Option("open", help="open | resolved"),
                limit: int = typer.Option(50), state: Path | None = _STATE, dynamodb: bool = _DYNAMO,
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Items awaiting a decision, with the per-field weights (bits) that explain each score."""
    mpi = _Mpi(state, dynamodb)
    items = mpi.store.reviews(tenant, status, limit)
    for item in items:
        if as_json:
            sys.stdout.write(json.dumps(item.to_dict(), sort_keys=True) + "\n")
            continue
        typer.echo(f"{item.review_id}  patient {item.source_key}  (now {item.provisional_eid})  "
                   f"since {item.created_at}")
        for cand in item.candidates:
            weights = " ".join(f"{k}={v:+.1f}" for k, v in cand["weights"].items())
            typer.echo(f"    -> {cand['eid']} via {cand['source_key']}  {cand['grade']} {cand['score']:.4f}"
                       + (f"  [{cand['reason']}]" if cand.get("reason") else "") + f"\n       {weights}")
    if not items and not as_json:
        typer.echo(f"no {status} review items for tenant {tenant}")


@review_app.command("resolve")
def review_resolve(review_id: str = typer.Argument(...),
                   decision: str = typer.Argument(..., help="link | new"),
                   eid: str | None = typer.Option(None, "--eid", help="Enterprise id to link to (default: the "
                                                                      "top candidate)."),
                   by: str = typer.Option("cli", "--by", help="Who decided (kept in the link history)."),
                   tenant: str = _TENANT, state: Path | None = _STATE, dynamodb: bool = _DYNAMO) -> None:
    """Decide a review item. Manual decisions are never overwritten by the algorithm."""
    from ehrbridge.identity.resolver import ResolveError

    if decision not in ("link", "new"):
        _fail("decision must be 'link' or 'new'")
    mpi = _Mpi(state, dynamodb)
    try:
        changes = _resolver(mpi, _load_model(None)).resolve_review(tenant, review_id, decision,  # type: ignore[arg-type]
                                                                   eid=eid, by=f"manual:{by}")
    except ResolveError as err:
        _fail(str(err))
    mpi.save()
    mpi.publish(changes)
    for change in changes:
        typer.echo(json.dumps(change.to_detail(), sort_keys=True))


@app.command("merge")
def merge_cmd(survivor: str, retired: str, tenant: str = _TENANT, state: Path | None = _STATE,
              dynamodb: bool = _DYNAMO) -> None:
    """Merge RETIRED into SURVIVOR (as ADT^A40 does). Never reversed."""
    _reconcile("merge", tenant, state, dynamodb, survivor, retired)


@app.command("unmerge")
def unmerge_cmd(patient_id: str, tenant: str = _TENANT, state: Path | None = _STATE,
                dynamodb: bool = _DYNAMO) -> None:
    """Undo a merge or detach a link; the record is then kept apart from its former enterprise patient."""
    _reconcile("unmerge", tenant, state, dynamodb, patient_id)


@app.command("history")
def history_cmd(enterprise_id: str, tenant: str = _TENANT, state: Path | None = _STATE,
                dynamodb: bool = _DYNAMO) -> None:
    """The append-only link history of an enterprise patient."""
    mpi = _Mpi(state, dynamodb)
    for event in mpi.store.history(tenant, enterprise_id):
        typer.echo(json.dumps({k: v for k, v in event.to_dict().items() if v not in (None, [])}, sort_keys=True))


def _reconcile(op: str, tenant: str, state: Path | None, dynamodb: bool, *args: str) -> None:
    from ehrbridge.identity.resolver import ResolveError

    mpi = _Mpi(state, dynamodb)
    resolver = _resolver(mpi, _load_model(None))
    try:
        changes = resolver.merge(tenant, *args, by="manual:cli") if op == "merge" else resolver.unmerge(
            tenant, *args, by="manual:cli")
    except ResolveError as err:
        _fail(str(err))
    mpi.save()
    mpi.publish(changes)
    for change in changes:
        typer.echo(json.dumps(change.to_detail(), sort_keys=True))
