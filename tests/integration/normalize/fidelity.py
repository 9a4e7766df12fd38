"""Per defect class of issue 11, how often the corpus shows it: the corpus-agreement report's fidelity part.

Run: ``.venv/bin/python -m tests.integration.normalize.fidelity [--details] [--mutations N]``
(``--mutations``: also N seeded mutations of corpus messages, as the property test makes them, where
the invalid-output classes show; the corpus itself has no year-0000 date or bad check digit).

Every count is "a clinical value lost or an invalid output", measured on the inputs and the bundles
(never on our own bookkeeping alone), so the same script measures any version of the normalizer:

1. coded fields whose code is only in the alternate triplet (CWE.4-6/10-12) or only text, with the
   code/text absent from the bundle; OBX with a value and no Observation (``OBX(no OBX-3)``) in an
   ``ok`` result;
2. ``ok`` bundles the R4B models reject;
3. OBX with an empty OBX-11 whose Observation claims a status other than ``unknown``;
4. OBX-6 units coded in a non-UCUM system (CWE.3) emitted under the UCUM system with a code that is
   not the sent text;
5. codings under LOINC/SNOMED/RxNorm/CVX whose code fails its check;
6. date/time fields (TS/DTM) holding a valid value that appears nowhere in the bundle and is not
   listed in ``unmapped``;
7. IG-mapped fields (OBX-15/23/25, ORC-4/21, PD1-3, NK1-13, XTN.12 of PID-13/14) whose value appears
   nowhere in the bundle (listed in ``unmapped`` or not: the IG maps them).
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from typing import Any

from ehrbridge.hl7.message import ParseError, parse, split_messages
from ehrbridge.hl7.timefmt import TsError, parse_ts
from ehrbridge.terminology.checks import CVX, LOINC, RXNORM, SNOMED, UCUM, check_code
from tests.integration.normalize.corpus_run import corpus_files

CLASSES = {1: "coded value only in the alternate triplet/text lost; OBX with a value dropped",
           2: "ok bundle rejected by the R4B models",
           3: "empty OBX-11 given a known status",
           4: "non-UCUM unit emitted as a UCUM code",
           5: "code failing its check digit under the standard system",
           6: "valid date/time lost without being listed",
           7: "IG-mapped field (OBX-15/23/25, ORC-4/21, PD1-3, NK1-13, XTN.12) not mapped"}
# TS/DTM fields our segment maps read (IG segment maps); a valid value must reach the bundle or be listed.
DTM_FIELDS = {"PID": (7, 29), "PV1": (44, 45), "ORC": (9,), "OBR": (7, 8, 22), "OBX": (14,), "SPM": (18,),
              "AL1": (6,), "DG1": (5,), "PR1": (5,), "RXA": (3, 16), "TXA": (4,), "EVN": (2,)}
# Coded (CWE/CE/CNE) fields the segment maps read: where an alternate-triplet-only code must survive.
CODED_FIELDS = {"OBX": (3, 6, 17), "OBR": (4, 31), "SPM": (4,), "DG1": (3,), "AL1": (3,), "PR1": (3,),
                "RXA": (5, 18), "RXR": (1, 2), "RXE": (2,), "RXO": (1,), "PV2": (3,), "PID": (15,), "NK1": (3,),
                "PV1": (14, 36), "SCH": (7, 8), "AIS": (3,)}
UCUM_NAMES = {"UCUM", "ANS+", "ISO+", "HTTP://UNITSOFMEASURE.ORG"}


def _observations_with_code(bundle: dict[str, Any], code: str) -> list[dict[str, Any]]:
    out = []
    for e in bundle.get("entry", []):
        r = e["resource"]
        if r.get("resourceType") == "Observation" and (r.get("code") or {}).get("coding", [{}])[0].get("code") == code:
            out.append(r)
    return out


def _codings(node: Any) -> list[dict[str, Any]]:
    out = []
    if isinstance(node, dict):
        if "system" in node and "code" in node and isinstance(node.get("code"), str):
            out.append(node)
        for v in node.values():
            out.extend(_codings(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(_codings(v))
    return out


def _listed(unmapped: list[str], field: str) -> bool:
    """The field, or its whole segment (a segment no map reads), is listed in ``unmapped``."""
    segment = field.split("-")[0]
    return any(u in (field, segment) or u.startswith((field + " ", field + "(", segment + " x", segment + "("))
               for u in unmapped)


def mutate(rng: random.Random, message: bytes) -> bytes:
    """1-4 random edits of a message: a byte changed, bytes deleted or inserted, or a field swapped for a
    tricky value (impossible dates, Unicode digits, spaced codes, alternate-triplet codes, odd units)."""
    data = bytearray(message)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(data))
        op = rng.random()
        if op < 0.35:
            data[i] = rng.choice(b"|^~\\&\r0123456789AZaz \"")
        elif op < 0.6:
            del data[i:i + rng.randint(1, 20)]
        elif op < 0.85:
            data[i:i] = bytes(rng.choice(b"|^~\\&\r0123456789+-. ") for _ in range(rng.randint(1, 6)))
        else:  # a field swapped for a tricky value: impossible dates, Unicode digits, spaced codes
            tricky = rng.choice(["0000", "20231301", "20230230", "\xef\xbc\x92\xef\xbc\x90\xef\xbc\x92\xef\xbc\x93",
                                 "09990101120000", "A  B", "^^^2345-7^Glucose^LN", "1^ML^METRIC", "", "99991231235959",
                                 "440500555^Blood^SCT", "12333-0^Glucose^LN"])
            j = data.find(b"|", i)
            if j != -1:
                k = data.find(b"|", j + 1)
                data[j + 1:k if k != -1 else j + 1] = tricky.encode("latin-1")
    return bytes(data)


def _inputs(mutations: int) -> list[tuple[str, bytes]]:
    out = [(f"{p.parent.name}/{p.name}#{i}", m) for p in corpus_files() for i, m in enumerate(split_messages(
        p.read_bytes()))]
    if mutations:
        rng = random.Random(20261205)
        corpus = [m for _, m in out]
        out += [(f"mutation {n}", mutate(rng, rng.choice(corpus))) for n in range(mutations)]
    return out


def measure(mutations: int = 0) -> tuple[Counter, dict[int, list[str]], int]:
    from ehrbridge.contracts.tenant import TenantConfig
    from ehrbridge.normalize.engine import normalize_hl7
    from tests.integration.normalize.corpus_run import DEMO_TENANT

    tenant = TenantConfig.from_yaml(DEMO_TENANT)
    counts: Counter = Counter()
    details: dict[int, list[str]] = {n: [] for n in CLASSES}
    ok_count = 0
    for name, data in _inputs(mutations):
        r = normalize_hl7(data, tenant)
        if not r.ok:
            continue
        ok_count += 1
        bundle = r.bundle or {}
        text = json.dumps(bundle)
        try:
            msg = parse(data)
        except ParseError:
            continue

        def lost(n: int, what: str, _name: str = name) -> None:
            counts[n] += 1
            details[n].append(f"{_name}: {what}")

        # 2. model validity
        from ehrbridge.normalize.validate import validate_with_models

        if validate_with_models(bundle):
            lost(2, "bundle rejected by the R4B models")
        # 1. alternate-triplet-only and text-only coded values; OBX dropped
        for seg in msg.segments:  # an OBX with a value but no code/text anywhere in OBX-3, not a report line
            if seg.name == "OBX" and seg.reps(5) and not seg.raw(3).replace(seg.seps.component, "").strip() and not (
                    seg.value(2).upper() in ("TX", "FT", "ST") and any(x.name == "OBR" for x in msg.segments)):
                lost(1, f"OBX {seg.value(1)} with a value and no OBX-3 in an ok bundle")
        for seg in msg.segments:
            coded = CODED_FIELDS.get(seg.name, ())
            if seg.name == "OBX" and seg.value(2).upper() in ("CE", "CWE", "CNE", "CF"):
                coded = (*coded, 5)
            for n in coded:
                for rep in seg.reps(n):
                    parts = rep.split(seg.seps.component)
                    if len(parts) >= 6 and not parts[0] and parts[3] and parts[5] and not _listed(
                            r.unmapped, f"{seg.name}-{n}") and json.dumps(parts[3])[1:-1] not in text:
                        lost(1, f"{seg.name}-{n} alternate code {parts[3][:12]!r}")
        # 5. check digits under standard systems
        for c in _codings(bundle):
            if c["system"] in (LOINC, SNOMED, RXNORM, CVX):
                check = check_code(c["system"], c["code"])
                if check is not None and not check.ok:
                    lost(5, f"{c['system']} {c['code']}")
        for seg in msg.segments:
            if seg.name == "OBX":
                code = seg.value(3) or seg.value(3, 4)
                obs = _observations_with_code(bundle, code) if code else []
                # 3. empty OBX-11
                same_code = sum(1 for o in msg.segments if o.name == "OBX" and (o.value(3) or o.value(3, 4)) == code)
                if not seg.value(11) and (seg.value(5) or seg.value(3)) and same_code == 1 and any(
                        o.get("status") != "unknown" for o in obs):
                    lost(3, f"OBX {seg.value(1)} status {obs[0].get('status')}")
                # 4. units
                unit_system = seg.value(6, 3).upper()
                unit_code, unit_text = seg.value(6, 1), seg.value(6, 2)
                if unit_system and unit_system not in UCUM_NAMES:
                    for o in obs:
                        q = o.get("valueQuantity") or {}
                        if q.get("system") == UCUM and q.get("code") != unit_text:
                            lost(4, f"OBX {seg.value(1)} unit {unit_code!r}^{unit_text!r}^{unit_system} -> "
                                    f"UCUM {q.get('code')!r}")
            # 6. date/times
            for n in DTM_FIELDS.get(seg.name, ()):
                raw = seg.value(n)
                if not raw:
                    continue
                try:
                    ts = parse_ts(raw, "UTC")
                except (TsError, ValueError, OverflowError):
                    continue
                if ts.date not in text and not _listed(r.unmapped, f"{seg.name}-{n}"):
                    lost(6, f"{seg.name}-{n} ({ts.precision}) not in the bundle nor listed")
            # 7. IG-mapped fields
            for n, comp in {"OBX": ((15, 1), (23, 1), (23, 10), (25, 1)), "ORC": ((4, 1), (21, 1), (21, 10)),
                            "PD1": ((3, 1), (3, 10)), "NK1": ((13, 1), (13, 10)),
                            "PID": ((13, 12), (14, 12))}.get(seg.name, ()):
                # Every repetition where the FHIR target repeats (PD1-3, PID-13/14); else the first (the IG maps
                # one; further repetitions are listed in unmapped).
                reps = seg.reps(n) if (seg.name, n) in {("PD1", 3), ("PID", 13), ("PID", 14)} else seg.reps(n)[:1]
                for rep in reps:
                    parts = rep.split(seg.seps.component)
                    value = parts[comp - 1] if len(parts) >= comp else ""
                    value = value.split(seg.seps.subcomponent)[0].strip()
                    if value and json.dumps(value)[1:-1] not in text:  # listed or not: the IG maps it
                        lost(7, f"{seg.name}-{n}.{comp}")
    return counts, details, ok_count


def main(argv: list[str]) -> int:
    mutations = int(argv[argv.index("--mutations") + 1]) if "--mutations" in argv else 0
    counts, details, ok_count = measure(mutations)
    print(f"fidelity over {ok_count} ok bundles of the corpus" + (f" + {mutations} mutations" if mutations else "")
          + " (issue 11 classes)")
    for n, label in CLASSES.items():
        print(f"  class {n}: {counts[n]:>4}  {label}")
    if "--details" in argv:
        for n, items in details.items():
            for item in items:
                print(f"    [{n}] {item}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
