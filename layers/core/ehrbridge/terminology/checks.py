"""Offline code checks: LOINC (format + mod-10), SNOMED CT (Verhoeff), RxNorm and CVX formats.

No licensed content is shipped, so these are structural checks: a code that passes can still be
unknown to the code system, but a code that fails is certainly wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
UCUM = "http://unitsofmeasure.org"

# LOINC Users' Guide: these deprecated codes were issued with invalid check digits; they are real codes.
LOINC_KNOWN_BAD_CHECK_DIGIT = frozenset({
    "11491-6", "11501-6", "5895-7", "5896-5", "5897-3", "5928-1", "6028-3", "6415-5", "6580-7",
    "6645-7", "6646-5", "6647-3", "6648-1", "6649-9"})

_LOINC = re.compile(r"^[1-9][0-9]{0,6}-[0-9]$")
_LOINC_PART = re.compile(r"^L[PAGL][0-9]{1,9}-[0-9]$")
_DASHES = str.maketrans({"\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2212": "-",
                         "_": "-"})


def mod10(digits: str) -> int:
    """LOINC check digit (Users' Guide 12.C; the same as Luhn)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return (10 - total % 10) % 10


@dataclass(frozen=True)
class CodeCheck:
    ok: bool
    code: str  # the (possibly repaired) code
    repair: str = ""  # what was repaired, e.g. "loinc: added hyphen"
    problem: str = ""  # why it fails, e.g. "loinc: invalid check digit"


def check_loinc(code: str) -> CodeCheck:
    """Validate a LOINC code and repair the formats facilities really send.

    Repairs: surrounding/inner spaces, unicode dashes, leading zeros (``0002345-7``), a missing
    hyphen (``23457`` -> ``2345-7``, only when the check digit then validates). A code whose check
    digit fails is never repaired into something else.
    """
    original = code
    c = code.strip().translate(_DASHES).replace(" ", "")
    repairs = []
    if c != original:
        repairs.append("whitespace/dash")
    if _LOINC_PART.match(c):
        return CodeCheck(True, c, "; ".join(repairs))
    if c.isdigit() and 2 <= len(c) <= 8:
        body, check = c[:-1].lstrip("0"), c[-1]
        if body and mod10(body) == int(check):
            return CodeCheck(True, f"{body}-{check}", "; ".join([*repairs, "added hyphen"]))
        return CodeCheck(False, original, problem="loinc: no hyphen and no valid check digit")
    if "-" in c:
        body, _, check = c.rpartition("-")
        stripped = body.lstrip("0")
        if stripped != body and stripped:
            repairs.append("leading zeros")
            body = stripped
        c = f"{body}-{check}"
    if not _LOINC.match(c):
        return CodeCheck(False, original, problem="loinc: not in the NNNNN-N format")
    body, check = c.split("-")
    if mod10(body) != int(check) and c not in LOINC_KNOWN_BAD_CHECK_DIGIT:
        return CodeCheck(False, original, problem="loinc: invalid check digit")
    return CodeCheck(True, c, "; ".join(repairs))


# Verhoeff tables (dihedral group D5), SNOMED CT Release File Specification 6.4.
_D = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
      [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
      [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
      [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
_P = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
      [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
      [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8]]


def verhoeff_valid(digits: str) -> bool:
    c = 0
    for i, ch in enumerate(reversed(digits)):
        c = _D[c][_P[i % 8][int(ch)]]
    return c == 0


def check_snomed(code: str) -> CodeCheck:
    """SCTID: 6-18 digits, no leading zero, partition 0x/1x (concept/description/relationship), Verhoeff."""
    c = code.strip()
    repair = "whitespace" if c != code else ""
    if not c.isdigit() or not 6 <= len(c) <= 18 or c[0] == "0":
        return CodeCheck(False, code, problem="snomed: not a 6-18 digit SCTID")
    if c[-3] not in "01" or c[-2] not in "012":
        return CodeCheck(False, code, problem="snomed: invalid partition identifier")
    if not verhoeff_valid(c):
        return CodeCheck(False, code, problem="snomed: invalid Verhoeff check digit")
    return CodeCheck(True, c, repair)


def check_rxnorm(code: str) -> CodeCheck:
    """RxCUI: a positive integer of at most 8 digits (no check digit exists)."""
    c = code.strip()
    if not c.isdigit() or len(c) > 8 or int(c) == 0:
        return CodeCheck(False, code, problem="rxnorm: RxCUI must be 1-8 digits")
    return CodeCheck(True, c, "whitespace" if c != code else "")


def check_cvx(code: str) -> CodeCheck:
    """CVX: 1-3 digits (CDC publishes them as up to three digits, e.g. 08, 141, 500)."""
    c = code.strip()
    if not c.isdigit() or not 1 <= len(c) <= 3:
        return CodeCheck(False, code, problem="cvx: must be 1-3 digits")
    return CodeCheck(True, c, "whitespace" if c != code else "")


CHECKS = {LOINC: check_loinc, SNOMED: check_snomed, RXNORM: check_rxnorm, CVX: check_cvx}


@lru_cache(maxsize=8192)
def check_code(system: str, code: str) -> CodeCheck | None:
    """Check a code under a standard system; None when the system has no offline check."""
    check = CHECKS.get(system)
    return check(code) if check else None
