"""Offline, label-free estimation of the model (Fellegi–Sunter EM), as `ehrbridge identity train` runs it.

u: level frequencies among random pairs (almost all non-matches). m and lambda: EM over the pairs
the blocking keys produce, with u held fixed (the Splink recipe), regularised towards the priors so
rare levels do not collapse. Identical comparison vectors are grouped, so EM runs over a few
thousand patterns instead of millions of pairs, in pure Python.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from ehrbridge.identity import comparisons as cmp
from ehrbridge.identity.blocking import MAX_BUCKET, record_keys
from ehrbridge.identity.model import Model, Thresholds, prior_model
from ehrbridge.identity.normalize import Person

# Comparisons whose m stays at the prior: within one source every pair "conflicts" on the source's own
# MRN, so EM on it would learn that conflicts are normal. Its meaning is policy (the gate), not data.
FIXED = frozenset({"identifier"})
TF_FIELDS = ("given", "family")
TF_TOP = 3000


def blocked_pairs(persons: Sequence[Person], prefixes: tuple[str, ...] | None = None,
                  max_pairs: int = 3_000_000) -> set[tuple[int, int]]:
    """Pairs sharing a blocking key (only keys starting with one of ``prefixes``, if given)."""
    buckets: dict[str, list[int]] = {}
    for i, p in enumerate(persons):
        for key in record_keys(p):
            if prefixes is None or key.startswith(prefixes):
                buckets.setdefault(key, []).append(i)
    pairs: set[tuple[int, int]] = set()
    for members in buckets.values():
        if len(members) < 2 or len(members) > MAX_BUCKET:
            continue
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                pairs.add((members[x], members[y]))
        if len(pairs) >= max_pairs:
            break
    return pairs


def _patterns(persons: Sequence[Person], pairs: Iterable[tuple[int, int]]) -> Counter[tuple[int, ...]]:
    counts: Counter[tuple[int, ...]] = Counter()
    for i, j in pairs:
        levels, _ = cmp.compare(persons[i], persons[j])
        counts[tuple(levels)] += 1
    return counts


def estimate_u(persons: Sequence[Person], samples: int, rng: random.Random
               ) -> tuple[list[list[float]], list[list[float]]]:
    n = len(persons)
    pairs = ((i, j) for i, j in ((rng.randrange(n), rng.randrange(n)) for _ in range(samples)) if i != j)
    counts = _patterns(persons, pairs)
    u: list[list[float]] = []
    tallies: list[list[float]] = []
    base = prior_model().u
    for k, (_, levels) in enumerate(cmp.COMPARISONS):
        tally = [0.0] * len(levels)
        for pattern, c in counts.items():
            if pattern[k] >= 0:
                tally[pattern[k]] += c
        total = sum(tally)
        # Laplace-style smoothing towards the prior: one pseudo-pair spread like the prior.
        u.append([(tally[i] + base[k][i]) / (total + 1.0) for i in range(len(levels))])
        tallies.append(tally)
    return u, tallies


def em(patterns: Counter[tuple[int, ...]], u: list[list[float]], *, iterations: int = 40,
       prior_strength: float = 20.0, tol: float = 1e-6, blocked_on: frozenset[str] = frozenset(),
       m_start: list[list[float]] | None = None, update: bool = True
       ) -> tuple[list[list[float]], float, int, list[list[float]]]:
    """EM with u fixed. Comparisons in ``blocked_on`` (agreeing by construction in these pairs) and
    FIXED ones are left out of the likelihood and keep their m. Returns m, lambda, iterations and the
    expected match count per level (the evidence behind each m)."""
    prior = prior_model()
    m = [list(row) for row in (m_start or prior.m)]
    lam = 0.1
    total = float(sum(patterns.values()))
    items = list(patterns.items())
    skip = {cmp.INDEX[name] for name in FIXED | blocked_on}
    it = 0
    acc: list[list[float]] = [[0.0] * len(row) for row in m]
    for it in range(1, iterations + 1):  # noqa: B007 - the count is reported
        acc = [[0.0] * len(row) for row in m]
        matched = 0.0
        for pattern, count in items:
            pm, pu = lam, 1.0 - lam
            for k, level in enumerate(pattern):
                if level >= 0 and k not in skip:
                    pm *= m[k][level]
                    pu *= u[k][level]
            p = pm / (pm + pu) if pm + pu > 0 else 0.0
            w = p * count
            matched += w
            for k, level in enumerate(pattern):
                if level >= 0:
                    acc[k][level] += w
        new_lam = max(1e-6, min(0.999, matched / total))
        if not update:
            lam = new_lam
            continue
        new_m = []
        for k, (_name, _) in enumerate(cmp.COMPARISONS):
            if k in skip:
                new_m.append(m[k])
                continue
            row_total = sum(acc[k]) + prior_strength
            new_m.append([max(1e-6, min(1 - 1e-6, (acc[k][i] + prior_strength * prior.m[k][i]) / row_total))
                          for i in range(len(acc[k]))])
        delta = abs(new_lam - lam) + max(abs(a - b) for ra, rb in zip(m, new_m, strict=True)
                                         for a, b in zip(ra, rb, strict=True))
        m, lam = new_m, new_lam
        if delta < tol:
            break
    return m, lam, it, acc


def term_frequencies(persons: Sequence[Person]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in TF_FIELDS:
        counts = Counter(getattr(p, name) for p in persons if getattr(p, name))
        total = sum(counts.values())
        if not total:
            continue
        out[name] = {v: c / total for v, c in counts.most_common(TF_TOP) if c >= 2}
    dobs = Counter(p.dob for p in persons if p.dob and len(p.dob) == 8)
    total = sum(dobs.values())
    if total:
        # Birth-year shares, and the exact dates far more common than their year explains (1 January,
        # a registration default): both make a shared birth date weigh what it does in this population.
        years = Counter(d[:4] for d in dobs.elements())
        out["dob_year"] = {y: c / total for y, c in years.items()}
        out["dob"] = {d: c / total for d, c in dobs.most_common(TF_TOP)
                      if c >= 5 and c / total > 4 * years[d[:4]] / total / 365.25}
    return out


# (blocking key prefixes, comparisons those keys make agree) per EM session, as Splink trains: each
# comparison's m comes from a session that did not block on it. Blocking on name or on DOB (never on
# address or phone) keeps households from becoming the "match" class EM converges to.
SESSIONS: tuple[tuple[tuple[str, ...], frozenset[str]], ...] = (
    (("dob:",), frozenset({"dob"})),
    (("nm:",), frozenset({"given", "family"})),
    # Pairs sharing an SSN or e-mail are nearly all true matches: the cleanest view of how names,
    # dates and addresses vary within one person (where the data has those identifiers).
    (("ssn:", "em:"), frozenset({"ssn", "email"})),
)
MIN_EVIDENCE = 5.0
M_FLOOR = 0.002


def train(persons: Sequence[Person], *, seed: int = 0, u_samples: int = 300_000, iterations: int = 40,
          thresholds: Thresholds | None = None, label: str = "", population_size: int | None = None) -> Model:
    """``population_size``: distinct people in the MPI the model will serve (the prior odds of a pair are
    1 : population); None keeps lambda, the match share among the training data's blocked pairs."""
    if len(persons) < 50:
        raise ValueError("need at least 50 patients to estimate a model")
    rng = random.Random(seed)
    prior = prior_model()
    u, u_tally = estimate_u(persons, u_samples, rng)
    sums = [[0.0] * len(levels) for _, levels in cmp.COMPARISONS]
    evidence = [[0.0] * len(levels) for _, levels in cmp.COMPARISONS]
    sessions = 0
    iters: list[int] = []
    for prefixes, blocked_on in SESSIONS:
        patterns = _patterns(persons, blocked_pairs(persons, prefixes))
        if not patterns:
            continue
        m_s, _, it, acc = em(patterns, u, iterations=iterations, blocked_on=blocked_on)
        iters.append(it)
        sessions += 1
        for k, (name, _) in enumerate(cmp.COMPARISONS):
            if name in blocked_on:
                continue
            for i in range(len(m_s[k])):
                sums[k][i] += acc[k][i]
                evidence[k][i] += acc[k][i]
    if not sessions:
        raise ValueError("the blocking keys produced no candidate pairs")
    m: list[list[float]] = []
    for k, (name, levels) in enumerate(cmp.COMPARISONS):
        total = sum(sums[k])
        if name in FIXED or total < MIN_EVIDENCE:
            m.append(list(prior.m[k]))
            u[k] = list(prior.u[k]) if name in FIXED else u[k]
            continue
        row = [(sums[k][i] + 20.0 * prior.m[k][i]) / (total + 20.0) for i in range(len(levels))]
        for i in range(len(levels)):
            if evidence[k][i] < MIN_EVIDENCE or u_tally[k][i] < MIN_EVIDENCE:
                # Too few observations on one side to trust the ratio: keep the prior's for this level.
                row[i], u[k][i] = prior.m[k][i], prior.u[k][i]
        m.append([max(M_FLOOR, min(1 - 1e-6, x)) for x in row])
    # Lambda for the runtime question "is this candidate (from any blocking key) the same person?".
    all_pairs = blocked_pairs(persons)
    _, lam, _, _ = em(_patterns(persons, all_pairs), u, iterations=15, m_start=m, update=False)
    stamp = datetime.now(UTC).strftime("%Y%m%d")
    digest = hashlib.sha256(repr((m, u, lam)).encode()).hexdigest()[:8]
    return Model(version=f"{stamp}-{digest}", prior=lam, m=m, u=u, tf=term_frequencies(persons),
                 thresholds=thresholds or Thresholds(), population_size=population_size,
                 meta={"trained_on": label, "records": len(persons), "blocked_pairs": len(all_pairs),
                       "em_iterations": iters, "u_samples": u_samples,
                       "method": "EM sessions blocked on DOB and on names (m), random pairs (u), "
                                 "lambda over all blocked pairs; label-free"})
