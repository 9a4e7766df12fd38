"""UCUM unit validation: the full UCUM expression grammar over a documented subset of atoms.

Why not ``ucumvert`` (the maintained full validator): it pulls in ``lark`` and ``pint`` and needs
~0.9 s to build its parser, which does not fit the normalizer's cold-start budget (the handler
must import in <= 450 ms). The grammar here is UCUM's (§§ 1-7: ``.`` and ``/`` terms, parentheses,
exponents, integer factors, ``{annotations}``, metric prefixes on metric atoms only); the atom
table below is the subset clinical messages use (SI base and derived units, clinical and
customary units, arbitrary units). A valid UCUM unit built from an atom not listed here is
reported as unknown, never silently accepted. docs/normalization.md lists the subset.
"""

from __future__ import annotations

import re
from functools import lru_cache

PREFIXES = ("da", "Ki", "Mi", "Gi", "Ti", "Y", "Z", "E", "P", "T", "G", "M", "k", "h", "d", "c", "m", "u", "n",
            "p", "f", "a", "z", "y")

# Atoms that take metric prefixes.
METRIC_ATOMS = frozenset({
    "m", "s", "g", "rad", "K", "C", "cd", "mol", "sr", "Hz", "N", "Pa", "J", "W", "A", "V", "F", "Ohm", "S",
    "Wb", "Cel", "T", "H", "lm", "lx", "Bq", "Gy", "Sv", "l", "L", "ar", "t", "bar", "u", "eV", "pc", "gf", "Ky",
    "Gal", "dyn", "erg", "P", "St", "Mx", "G", "Oe", "Gb", "sb", "Lmb", "ph", "Ci", "R", "RAD", "REM", "cal",
    "[iU]", "[IU]", "eq", "osm", "mho", "U", "kat", "B", "B[SPL]", "B[V]", "B[mV]", "B[uV]", "B[W]", "B[kW]",
    "m[Hg]", "m[H2O]", "bit", "By", "Bd", "[CFU]", "[PFU]", "[FFU]", "[BAU]", "[AU]", "[Amb'a'1'U]", "[tb'U]",
    "g%", "[car_m]", "[car_Au]", "AU", "[c]", "[h]", "[k]", "[e]", "[G]", "[g]", "[ly]",
})
# Atoms that do not take prefixes.
PLAIN_ATOMS = frozenset({
    "10*", "10^", "%", "[pi]", "[ppth]", "[ppm]", "[ppb]", "[pptr]", "mo", "mo_j", "mo_g", "mo_s", "a", "a_j",
    "a_t", "a_g", "wk", "d", "h", "min", "'", "''", "deg", "gon", "[in_i]", "[ft_i]", "[yd_i]", "[mi_i]",
    "[lb_av]", "[oz_av]", "[gr]", "[dr_av]", "[ston_av]", "[degF]", "[degR]", "[gal_us]", "[qt_us]",
    "[pt_us]", "[foz_us]", "[tbs_us]", "[tsp_us]", "[cup_us]", "[gal_br]", "[pt_br]", "[in_us]", "[ft_us]",
    "[lb_tr]", "[oz_tr]", "[pH]", "[drp]", "[HPF]", "[LPF]", "[arb'U]", "[USP'U]", "[GPL'U]", "[MPL'U]",
    "[APL'U]", "[beth'U]", "[anti'Xa'U]", "[todd'U]", "[dye'U]", "[smgy'U]", "[bdsk'U]", "[ka'U]", "[knk'U]",
    "[mclg'U]", "[tb'U]", "[hnsf'U]", "[MET]", "[mesh_i]", "[Ch]", "[diop]", "[p'diop]", "[D'ag'U]",
    "[FEU]", "[ELU]", "[EU]", "[S]", "[HP]", "[wood'U]", "[Lf]", "[IR]", "[CCID_50]", "[TCID_50]", "[EID_50]",
    "[PNU]", "[kp_C]", "[psi]", "atm", "[atm]", "[mi_br]", "[nmi_i]", "[kn_i]", "[sin_i]", "[cr_i]", "[cml_i]",
    "[mil_i]", "[hd_i]", "[Btu]", "[den]", "[hp'_X]", "[hp'_C]", "[hp'_M]", "[hp'_Q]", "[hp_X]",
    "[hp_C]", "[hp_M]", "[hp_Q]", "[m/s2/Hz^(1/2)]", "circ", "sph", "[rch_us]", "[srd_us]", "[fth_i]",
    "[fur_us]", "[acr_us]", "[cicero]", "[pied]", "[pouce]", "[ligne]", "[didot]", "[pca]", "[pnt]",
    "[lne]", "[twip]", "[dqt_us]", "[gil_us]", "[min_us]", "[fdr_us]", "[crd_us]", "[bu_us]", "[pk_us]",
    "[bbl_us]", "[lcwt_av]", "[scwt_av]", "[lton_av]", "[pwt_tr]", "[sc_ap]", "[dr_ap]",
    "[oz_ap]", "[lb_ap]", "[oz_m]", "[CFU]", "[iU]", "[IU]", "Np", "[stone_av]",
})

# Non-UCUM spellings seen in real feeds -> UCUM. Only unambiguous ones (documented in docs/normalization.md).
ALIASES = {
    "mEq/L": "meq/L", "MEQ/L": "meq/L", "mEq/dL": "meq/dL", "mmHg": "mm[Hg]", "MMHG": "mm[Hg]", "mm Hg": "mm[Hg]",
    "cmH2O": "cm[H2O]", "MG/DL": "mg/dL", "G/DL": "g/dL", "MMOL/L": "mmol/L", "UMOL/L": "umol/L",
    "IU/L": "[IU]/L", "IU/mL": "[IU]/mL", "mIU/L": "m[IU]/L", "mIU/mL": "m[IU]/mL", "uIU/mL": "u[IU]/mL",
    "bpm": "/min", "beats/min": "/min", "breaths/min": "/min", "/MIN": "/min", "sec": "s", "hr": "h",
    "hrs": "h", "degF": "[degF]", "deg F": "[degF]", "degC": "Cel", "deg C": "Cel",
    "lbs": "[lb_av]", "lb": "[lb_av]", "in": "[in_i]", "inch": "[in_i]", "kg/m2": "kg/m2", "years": "a",
    "yr": "a", "yrs": "a", "months": "mo", "weeks": "wk", "days": "d", "cells/uL": "{cells}/uL",
    "x10E3/uL": "10*3/uL", "x10E6/uL": "10*6/uL", "K/uL": "10*3/uL", "M/uL": "10*6/uL", "fl": "fL", "FL": "fL",
    "PG": "pg", "ng/ml": "ng/mL", "pg/ml": "pg/mL", "mg/dl": "mg/dL", "g/dl": "g/dL", "U/l": "U/L",
}

_EXP = re.compile(r"^(.*?)([+-]?\d+)$")


def _split_terms(expr: str) -> list[str] | None:
    """Split on '.' and '/' at depth 0, keeping the operators; None when brackets don't balance."""
    parts: list[str] = []
    depth_paren = depth_square = 0
    in_brace = False
    current = ""
    for ch in expr:
        if in_brace:
            current += ch
            if ch == "}":
                in_brace = False
            elif ch == "{":
                return None
            continue
        if ch == "{":
            in_brace = True
        elif ch == "(":
            depth_paren += 1
        elif ch == ")":
            depth_paren -= 1
            if depth_paren < 0:
                return None
        elif ch == "[":
            depth_square += 1
        elif ch == "]":
            depth_square -= 1
            if depth_square < 0:
                return None
        elif ch in "./" and depth_paren == 0 and depth_square == 0:
            parts.append(current)
            parts.append(ch)
            current = ""
            continue
        current += ch
    if in_brace or depth_paren or depth_square:
        return None
    parts.append(current)
    return parts


def _simple(unit: str) -> bool:
    if unit in PLAIN_ATOMS or unit in METRIC_ATOMS:
        return True
    return any(unit.startswith(prefix) and unit[len(prefix):] in METRIC_ATOMS for prefix in PREFIXES)


def _component(comp: str) -> bool:
    if not comp:
        return False
    if comp.endswith("}"):
        start = comp.rfind("{")
        annotation, comp = comp[start:], comp[:start]
        if any((ord(c) < 33 and c != " ") or ord(c) > 126 for c in annotation):
            return False
        if not comp:
            return True
    if comp.startswith("(") and comp.endswith(")"):
        return _term(comp[1:-1])
    if comp.isdigit():
        return True
    if " " in comp:
        return False
    if _simple(comp):
        return True
    m = _EXP.match(comp)
    return bool(m and m.group(1) and _simple(m.group(1)))


def _term(expr: str) -> bool:
    parts = _split_terms(expr)
    if parts is None:
        return False
    if parts[0] == "" and len(parts) > 1 and parts[1] == "/":
        parts = parts[2:]  # leading "/" (e.g. "/min")
    return all(_component(p) for p in parts[::2]) and len(parts) % 2 == 1


@lru_cache(maxsize=2048)
def is_valid(unit: str) -> bool:
    """True when ``unit`` is a valid case-sensitive UCUM expression over the supported atoms."""
    return bool(unit) and unit == unit.strip() and _term(unit)


@lru_cache(maxsize=2048)
def repair(unit: str) -> tuple[str | None, str]:
    """(UCUM code or None, repair note). ``1`` stands for dimensionless."""
    u = unit.strip()
    if is_valid(u):
        return u, ("whitespace" if u != unit else "")
    alias = ALIASES.get(u)
    if alias and is_valid(alias):
        return alias, f"ucum alias {u!r}->{alias!r}"
    return None, ""
