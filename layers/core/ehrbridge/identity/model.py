"""The frozen Fellegi–Sunter model: m/u per comparison level, term frequencies, thresholds; scoring.

A model is a versioned JSON file (``format``/``version``/``schema_version``) produced offline by
``ehrbridge identity train`` (EM, label-free) and read-only at run time. The default model ships as
package data (``identity/models/default.json``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ehrbridge.identity import comparisons as cmp
from ehrbridge.identity.names import is_given_name, sex_of_name
from ehrbridge.identity.nicknames import is_listed
from ehrbridge.identity.normalize import Person

MODEL_FORMAT = "ehrbridge-identity-model"
Grade = Literal["certain", "probable", "possible", "certainly-not"]
# Term-frequency adjustments are bounded so one rare (or typo'd) name can't dominate a score.
TF_BOUND_BITS = 5.0
_GIVEN, _FAMILY, _DOB, _ID, _SSN, _EMAIL = (cmp.INDEX["given"], cmp.INDEX["family"], cmp.INDEX["dob"],
                                            cmp.INDEX["identifier"], cmp.INDEX["ssn"], cmp.INDEX["email"])


class ModelError(ValueError):
    pass


class Thresholds(BaseModel):
    """Per-tenant decision thresholds on the match probability (0..1), plus the runner-up margin."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    link: float = Field(default=0.95, gt=0, lt=1)  # auto-link at or above (grade certain)
    review: float = Field(default=0.20, gt=0, lt=1)  # review band [review, link); below: new patient
    # The best enterprise must beat the runner-up by this many bits (log2 Bayes factor) to auto-link.
    margin_bits: float = Field(default=6.0, ge=0)
    # Same DOB, surname and home but a different first name is read as twins (never linked) unless a
    # personal identifier agrees. A tenant whose sources replace first names wholesale may turn it off.
    twin_guard: bool = True
    # Same first and last name, birth years a generation apart: father and son (no suffix recorded).
    generation_guard: bool = True
    # Auto-linking needs the first name, the birth date or a personal identifier to agree: surname and
    # address alone describe a household (and thin registrations score high on them).
    thin_guard: bool = True
    # Off (the default): "never auto-link when first name and birth date both disagree" holds even if
    # the SSN agrees (a guarantor's SSN on a child's registration is a known error). On: an agreeing
    # SSN or same-system identifier lifts that gate, the pair is then scored like any other.
    identifier_lifts_gate: bool = False
    # How many distinct people this tenant's MPI holds (None: the model file's). The prior odds that a
    # record and one stored record are the same person are 1 : population, so a birth date shared with
    # a stranger weighs what it should in a population of that size.
    population_size: int | None = Field(default=None, ge=2)


@dataclass(slots=True)
class PairScore:
    weight: float  # total log2 Bayes factor, prior included
    probability: float
    levels: list[int]
    swapped: bool
    gate: str | None  # why this pair may not be auto-linked, if anything

    @property
    def household_only(self) -> bool:
        """Gated as another member of the household, with nothing personal agreeing."""
        return self.gate in HOUSEHOLD_GATES and not personal_id_agrees(self.levels)

    def grade(self, thresholds: Thresholds) -> Grade:
        if self.household_only:
            return "certainly-not"
        if self.probability >= thresholds.link and self.gate is None:
            return "certain"
        if self.probability >= max(0.5, thresholds.review):
            return "probable"
        if self.probability >= thresholds.review or self.gate in HOUSEHOLD_GATES:
            # A household-type gate with a personal identifier agreeing (an SSN on a dependant's record?)
            # is always put in front of a person, whatever the score.
            return "possible"
        return "certainly-not"


@dataclass
class Model:
    version: str
    # Without a population size: lambda, the probability that two records sharing a blocking key are
    # the same person (as EM estimates it on the training data; only right for a population that size).
    prior: float
    m: list[list[float]]
    u: list[list[float]]
    tf: dict[str, dict[str, float]] = field(default_factory=dict)
    thresholds: Thresholds = field(default_factory=Thresholds)
    meta: dict[str, Any] = field(default_factory=dict)
    # Distinct people in the tenant's MPI: the prior odds of a pair are 1 : population_size, and u is the
    # level frequency among random pairs, so the score is P(same person | the pair's comparison levels).
    population_size: int | None = None

    def __post_init__(self) -> None:
        if len(self.m) != len(cmp.COMPARISONS) or len(self.u) != len(cmp.COMPARISONS):
            raise ModelError("model does not match the comparison schema")
        for (name, levels), m, u in zip(cmp.COMPARISONS, self.m, self.u, strict=True):
            if len(m) != len(levels) or len(u) != len(levels):
                raise ModelError(f"comparison {name}: expected {len(levels)} levels")
            if any(not (0 < x < 1) for x in (*m, *u)):
                raise ModelError(f"comparison {name}: m and u must be in (0, 1)")
        self.weights = [[math.log2(mi / ui) for mi, ui in zip(m, u, strict=True)] for m, u in zip(self.m, self.u,
                                                                                                   strict=True)]
        self.prior_weight = self._prior_weight(self.population_size)
        self._tf_adjust: dict[int, dict[str, float]] = {}
        self._tf_default: dict[int, float] = {}
        # Birth dates: exact-date frequencies (dates many people share, e.g. 1 January) and birth-year
        # frequencies (a date in a common birth year is shared by more strangers).
        self._dob_tf: dict[str, float] = {}
        self._year_tf: dict[str, float] = {}
        u_dob = self.u[_DOB][0]
        for value, f in self.tf.get("dob", {}).items():
            self._dob_tf[value] = _bound(math.log2(u_dob / f))
        for year, f in self.tf.get("dob_year", {}).items():
            self._year_tf[year] = _bound(math.log2(u_dob / (f / 365.25)))
        for name, table in self.tf.items():
            if name not in ("given", "family"):
                continue
            i = cmp.INDEX[name]
            u_exact = self.u[i][0]
            floor = min(table.values()) if table else u_exact
            self._tf_adjust[i] = {v: _bound(math.log2(u_exact / f)) for v, f in table.items()}
            self._tf_default[i] = _bound(math.log2(u_exact / floor))

    def _prior_weight(self, population: int | None) -> float:
        if population:
            return -math.log2(population - 1)
        return math.log2(self.prior / (1 - self.prior))

    # ---- scoring -------------------------------------------------------------------------------
    def score(self, a: Person, b: Person, policy: Thresholds | None = None) -> PairScore:
        levels, swapped = cmp.compare(a, b)
        policy = policy or self.thresholds
        total = self.prior_weight if policy.population_size is None else self._prior_weight(policy.population_size)
        weights = self.weights
        for i, level in enumerate(levels):
            if level >= 0:
                total += weights[i][level]
        total += self._tf(levels, b, swapped)
        # The weight stays unclipped (it ranks candidates); only the probability saturates.
        probability = 1.0 / (1.0 + 2.0 ** (-max(-60.0, min(60.0, total))))
        return PairScore(total, probability, levels, swapped, _gate(a, b, levels, policy))

    def _tf(self, levels: list[int], b: Person, swapped: bool) -> float:
        extra = 0.0
        for i, value in ((_GIVEN, b.family if swapped else b.given), (_FAMILY, b.given if swapped else b.family)):
            if levels[i] == 0 and i in self._tf_adjust and value:
                extra += self._tf_adjust[i].get(value, self._tf_default[i])
        if levels[_DOB] == 0 and b.dob and (self._dob_tf or self._year_tf):
            adjust = self._dob_tf.get(b.dob)
            extra += adjust if adjust is not None else self._year_tf.get(b.dob[:4], 0.0)
        return extra

    def explain(self, a: Person, b: Person, policy: Thresholds | None = None) -> dict[str, float]:
        """Per-comparison weights (bits) that make up a pair's score: what a reviewer sees."""
        levels, swapped = cmp.compare(a, b)
        population = policy.population_size if policy is not None else None
        prior = self.prior_weight if population is None else self._prior_weight(population)
        out: dict[str, float] = {"prior": round(prior, 3)}
        for i, level in enumerate(levels):
            if level >= 0:
                out[cmp.NAMES[i]] = round(self.weights[i][level], 3)
        tf = self._tf(levels, b, swapped)
        if tf:
            out["term_frequency"] = round(tf, 3)
        return out

    def level_names(self, levels: list[int]) -> dict[str, str]:
        return {cmp.NAMES[i]: cmp.COMPARISONS[i][1][lv] for i, lv in enumerate(levels) if lv >= 0}

    # ---- files ---------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({
            "format": MODEL_FORMAT, "schema_version": cmp.SCHEMA_VERSION, "version": self.version,
            "prior": self.prior, "population_size": self.population_size,
            "thresholds": self.thresholds.model_dump(exclude_none=True), "meta": self.meta,
            "comparisons": [
                {"name": name, "levels": [{"name": lv, "m": round(m, 8), "u": round(u, 8)}
                                          for lv, m, u in zip(levels, self.m[i], self.u[i], strict=True)]}
                for i, (name, levels) in enumerate(cmp.COMPARISONS)],
            "tf": {k: {n: round(f, 8) for n, f in v.items()} for k, v in self.tf.items()},
        }, indent=1, sort_keys=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Model:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ModelError(f"model file is not JSON (line {err.lineno})") from None
        if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
            raise ModelError(f"not an {MODEL_FORMAT} file")
        if data.get("schema_version") != cmp.SCHEMA_VERSION:
            raise ModelError(f"model schema {data.get('schema_version')} != {cmp.SCHEMA_VERSION}: retrain it")
        by_name = {c.get("name"): c for c in data.get("comparisons", []) if isinstance(c, dict)}
        m: list[list[float]] = []
        u: list[list[float]] = []
        for name, levels in cmp.COMPARISONS:
            comp = by_name.get(name)
            if comp is None:
                raise ModelError(f"model lacks comparison {name}")
            got = {lv.get("name"): lv for lv in comp.get("levels", [])}
            if set(got) != set(levels):
                raise ModelError(f"comparison {name}: levels differ from the schema")
            m.append([float(got[lv]["m"]) for lv in levels])
            u.append([float(got[lv]["u"]) for lv in levels])
        population = data.get("population_size")
        if population is not None and (not isinstance(population, int) or population < 2):
            raise ModelError("population_size must be an integer >= 2")
        return cls(version=str(data.get("version", "unversioned")), prior=float(data["prior"]), m=m, u=u,
                   population_size=population,
                   tf={k: {str(n): float(f) for n, f in v.items()} for k, v in (data.get("tf") or {}).items()},
                   thresholds=Thresholds(**(data.get("thresholds") or {})), meta=data.get("meta") or {})

    @classmethod
    def load(cls, path: str | Path | None = None) -> Model:
        if path is None:
            return default_model()
        return cls.from_json(Path(path).read_bytes())


def _bound(x: float) -> float:
    return max(-TF_BOUND_BITS, min(TF_BOUND_BITS, x))


# Gate reasons that mean "a different person of the same household" unless a personal identifier
# agrees: such a pair is certainly-not (no review item), never merely a weak match.
TWIN_GATE = "same birth date and surname, different first name (twins)"
HOUSEHOLD_GATE = "first name and birth date both disagree"
# Neither name agrees (after nickname, typo and swap handling): whatever else agrees (a birth date, a
# city, a middle initial), that describes two people who share those values, not one person.
NO_NAME_GATE = "neither the first name nor the surname agrees"
# Same birth date and surname, two different real first names that look alike (ADRIAN/ADRIANA): twins
# are often named so. Not certainly-not: the same name spelled two ways (STEVEN/STEPHEN) looks the same.
ALIKE_TWIN_GATE = "same birth date and surname, alike but different first names (twins?)"
# Same name a generation apart (father and son without a recorded suffix).
GENERATION_GATE = "same name, born a generation apart (junior/senior)"
GENERATION_YEARS = 14
NAMESAKE_GATE = "same name, birth dates disagree"
THIN_GATE = "neither first name, birth date nor a personal identifier agrees"
ONE_NAME_GATE = "only one name agrees and the birth dates are unrelated"
SURNAME_GATE = "surname differs and no home, phone or personal identifier agrees"
# SSNs closer than this numerically were probably issued in one sequence (twins, siblings), not mistyped.
SSN_SEQUENCE = 10
_FAMILY_ELSE = len(cmp.COMPARISONS[_FAMILY][1]) - 1
_ADDRESS, _PHONE, _MIDDLE = cmp.INDEX["address"], cmp.INDEX["phone"], cmp.INDEX["middle"]
_ADDRESS_SAME_POSTCODE = cmp.COMPARISONS[_ADDRESS][1].index("same_postcode")
SAME_SYSTEM_GATE = "another number from the same system and no first name in common"
HOUSEHOLD_GATES = frozenset({HOUSEHOLD_GATE, GENERATION_GATE, "different birth order", TWIN_GATE,
                             "different name suffix", NO_NAME_GATE, SAME_SYSTEM_GATE})


def _gate(a: Person, b: Person, levels: list[int], policy: Thresholds) -> str | None:
    """Evidence that forbids an automatic link whatever the score (households, twins, juniors)."""
    given, dob = levels[_GIVEN], levels[_DOB]
    if given >= 0 and dob >= 0 and given not in cmp.GIVEN_AGREES and dob not in cmp.DOB_AGREES \
            and not (policy.identifier_lifts_gate and identifier_agrees(levels)):
        return HOUSEHOLD_GATE
    if given not in cmp.GIVEN_AGREES and levels[_FAMILY] not in cmp.FAMILY_AGREES:
        # A missing name does not agree either: a pair with no name in common is never auto-linked.
        return NO_NAME_GATE
    if a.birth_order and b.birth_order and a.birth_order != b.birth_order:
        return "different birth order"
    if levels[cmp.INDEX["suffix"]] == 1:
        return "different name suffix"
    if policy.twin_guard and dob in cmp.DOB_AGREES and given == cmp.GIVEN_ELSE \
            and levels[_FAMILY] in cmp.FAMILY_AGREES and not guard_lifted(a, b, levels, twins=True) \
            and not _first_name_replaced(a, b, levels):
        return TWIN_GATE
    family_agrees = 0 <= levels[_FAMILY] < len(cmp.COMPARISONS[_FAMILY][1]) - 1
    if given == cmp.GIVEN_ALIKE and dob in cmp.DOB_AGREES and levels[_FAMILY] in cmp.FAMILY_AGREES \
            and not guard_lifted(a, b, levels, twins=True):
        return ALIKE_TWIN_GATE
    dob_else = dob == len(cmp.COMPARISONS[_DOB][1]) - 1
    # Same year but another day counts as disagreeing here: strangers with a common name are often born
    # the same year (EDWARD PRICE, 1961), and a keyed-wrong day is caught by the one-edit/swap levels.
    dob_differs = dob_else or dob == cmp.COMPARISONS[_DOB][1].index("same_year")
    if policy.generation_guard and given in cmp.GIVEN_AGREES and family_agrees and dob_differs \
            and not guard_lifted(a, b, levels, namesakes=True):
        # Same name, unrelated birth dates: a generation apart it is father and son (not mother and
        # daughter: see below); closer, a person must look (a namesake relative, or one badly keyed date;
        # namesakes at one home exist).
        if _years_apart(a.dob, b.dob) < GENERATION_YEARS:
            if not _same_person_at_home(levels):
                return NAMESAKE_GATE
        elif not _daughter_named_for_mother_unlikely(a, b, levels):
            return GENERATION_GATE
    if levels[_ID] == 1:
        # Two records of one system with their own numbers and no first name in common: two members of
        # a household that registers together, not one patient registered twice.
        return SAME_SYSTEM_GATE if given not in cmp.GIVEN_AGREES else "conflicting identifier from the same system"
    if levels[_FAMILY] == _FAMILY_ELSE and not guard_lifted(a, b, levels) \
            and not (0 <= levels[_ADDRESS] <= _ADDRESS_SAME_POSTCODE or levels[_PHONE] in (0, 1)):
        # Another surname and nothing placing the two together (home, phone, a personal identifier): a
        # married name needs one of those; a first name and birth date alone are shared by strangers.
        return SURNAME_GATE
    if policy.thin_guard and not guard_lifted(a, b, levels):
        if given not in cmp.GIVEN_AGREES and dob not in cmp.DOB_AGREES:
            # Surname and address alone describe a household, not a person (thin registrations score high).
            return THIN_GATE
        if dob_else and not (given in cmp.GIVEN_AGREES and family_agrees):
            # One name and a home in common, the birth date unrelated: relatives more often than typos.
            return ONE_NAME_GATE
    return None


def _same_person_at_home(levels: list[int]) -> bool:
    """Same first name exactly, surname, middle initial, sex and home, birth dates under a generation apart:
    parents do not give two children one first and middle name, so one of the two dates is wrong."""
    return levels[_GIVEN] == 0 and levels[_FAMILY] in (0, 1) and levels[_MIDDLE] in (0, 1) \
        and levels[cmp.INDEX["sex"]] == 0 and levels[_ADDRESS] == 0


def _first_name_replaced(a: Person, b: Person, levels: list[int]) -> bool:
    """One first name is no real name (not in the SSA list: a filler such as ADULT or INMATE, a stray
    letter) and the middle names agree: one person whose first name was not recorded, not twins (twins
    have two real names and, usually, two middle names)."""
    for one, other in ((a, b), (b, a)):
        # The middle initial keyed into the first-name field (Z / LEIA Z).
        if one.given and len(one.given) == 1 and not one.middle and other.middle and other.middle[0] == one.given:
            return True
    if levels[_MIDDLE] not in (0, 1):
        return False
    for one, other in ((a, b), (b, a)):
        # A first name given (almost) only to the other sex than the record's own, where the other record's
        # name fits that same sex (NINO on a female record against KIMBERLY): the name, not the person,
        # is wrong. Boy-girl twins each carry a name of their own sex.
        if one.given and other.given and one.sex in ("F", "M") and one.sex == other.sex \
                and sex_of_name(one.given) not in (None, one.sex) and sex_of_name(other.given) == other.sex:
            return True
    return any(g and (len(g) == 1 or not (is_given_name(g) or is_listed(g))) for g in (a.given, b.given))


def _daughter_named_for_mother_unlikely(a: Person, b: Person, levels: list[int]) -> bool:
    """Same first, middle and last name, both recorded female: juniors are sons. A daughter given her
    mother's first and middle name is rare enough that the score (with its birth-date penalty) decides."""
    return a.sex == "F" and b.sex == "F" and levels[_MIDDLE] in (0, 1)


def _years_apart(a: str | None, b: str | None) -> int:
    if not a or not b:
        return 0
    return abs(int(a[:4]) - int(b[:4]))


def identifier_agrees(levels: list[int]) -> bool:
    # One edit away still counts: a relative's SSN is a different number, not a typo of this one.
    return levels[_SSN] in (0, 1) or levels[_ID] == 0


def guard_lifted(a: Person, b: Person, levels: list[int], *, twins: bool = False, namesakes: bool = False) -> bool:
    """What lets the twin, namesake and thin-evidence guards (never the first-name/DOB gate) yield.

    A personal identifier: the SSN (exact, or one keying error away unless the two numbers are numerically
    adjacent: twins' and siblings' numbers are often issued in sequence), a same-system identifier, or an
    e-mail address, which for twins counts only when it names one of the two (a parent's address on both
    children's registrations is routine) and never for namesakes (a junior uses his father's address, which
    names them both). Something else about the person must agree too (surname, home or phone), so a lone
    identifier, mistyped or reused, does not carry a pair on its own.
    """
    ssn = levels[_SSN]
    personal = ssn == 0 or levels[_ID] == 0 or (ssn == 1 and not _adjacent(a.ssn, b.ssn)) \
        or (levels[_EMAIL] == 0 and not namesakes and (not twins or _email_names(a, b)))
    if not personal:
        return False
    # With the first name and the birth date also agreeing the identifier is not lone: that is the
    # person under another surname (a married name), not a guarantor's number on a dependant.
    return 0 <= levels[_FAMILY] < _FAMILY_ELSE or 0 <= levels[_ADDRESS] <= _ADDRESS_SAME_POSTCODE \
        or levels[_PHONE] in (0, 1) or (levels[_GIVEN] in cmp.GIVEN_AGREES and levels[_DOB] in cmp.DOB_AGREES)


def _email_names(a: Person, b: Person) -> bool:
    local = (a.email or "").partition("@")[0]
    return any(g and len(g) >= 3 and g.lower() in local for g in (a.given, b.given))


def _adjacent(a: str | None, b: str | None) -> bool:
    return bool(a and b and a.isdigit() and b.isdigit() and abs(int(a) - int(b)) < SSN_SEQUENCE)


def personal_id_agrees(levels: list[int]) -> bool:
    """SSN, a same-system identifier or an e-mail address agree: evidence about the person, not the home."""
    return identifier_agrees(levels) or levels[_EMAIL] == 0


_DEFAULT: Model | None = None


def default_model() -> Model:
    global _DEFAULT
    if _DEFAULT is None:
        text = importlib_resources.files("ehrbridge.identity").joinpath("models/default.json").read_bytes()
        _DEFAULT = Model.from_json(text)
    return _DEFAULT


def prior_model() -> Model:
    """Hand-set priors: the starting point of EM, and the fallback before any training."""
    m: list[list[float]] = []
    u: list[list[float]] = []
    for name, levels in cmp.COMPARISONS:
        m_row, u_row = _PRIORS[name]
        m.append(list(m_row))
        u.append(list(u_row))
        assert len(m_row) == len(levels), name
    return Model(version="priors", prior=1e-3, m=m, u=u)


# (m, u) per level, in schema order; u roughly from random pairs in a large population.
_PRIORS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "given": ((0.84, 0.03, 0.04, 0.02, 0.02, 0.01, 0.01, 0.01, 0.02),
              (0.01, 0.002, 0.005, 0.01, 0.002, 0.01, 0.018, 0.02, 0.923)),
    "family": ((0.88, 0.05, 0.02, 0.01, 0.02, 0.02), (0.005, 0.003, 0.01, 0.001, 0.03, 0.951)),
    "middle": ((0.3, 0.6, 0.1), (0.005, 0.07, 0.925)),
    "suffix": ((0.95, 0.05), (0.5, 0.5)),
    "dob": ((0.92, 0.01, 0.04, 0.02, 0.01), (0.0001, 0.00005, 0.002, 0.012, 0.98585)),
    "sex": ((0.98, 0.02), (0.5, 0.5)),
    "address": ((0.7, 0.05, 0.03, 0.07, 0.1, 0.05), (0.0005, 0.002, 0.01, 0.05, 0.4, 0.5375)),
    "phone": ((0.8, 0.05, 0.15), (0.0001, 0.0005, 0.9994)),
    "email": ((0.85, 0.05, 0.1), (0.00005, 0.0005, 0.99945)),
    "identifier": ((0.9, 0.1), (0.00001, 0.99999)),
    "ssn": ((0.9, 0.05, 0.05), (0.00001, 0.0001, 0.99989)),
}
