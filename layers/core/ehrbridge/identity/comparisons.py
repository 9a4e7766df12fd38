"""Multi-level comparisons between two people, Fellegi–Sunter style.

``compare`` returns one level index per comparison (0 = strongest agreement; -1 = missing on either
side, which carries no weight). The level lists below are the model's schema: a model file is
only valid for the schema version it was trained with.
"""

from __future__ import annotations

from rapidfuzz.distance import DamerauLevenshtein, JaroWinkler

from ehrbridge.identity.names import is_given_name, name_counts, name_sex
from ehrbridge.identity.nicknames import are_nicknames, is_listed
from ehrbridge.identity.normalize import Person

# 2: given gained the "typo" level (a misspelling, not another name; counts as agreement for the gate).
# 3: given gained "alike" (two different real names spelled alike: ADRIAN/ADRIANA, a disagreement);
#    house/street/city/postcode/state became one "address" comparison (a move changes them together,
#    so scoring them as independent fields counted one move, or one shared home, five times);
#    a middle initial agreeing is "initial", not "exact".
SCHEMA_VERSION = 3

COMPARISONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("given", ("exact", "nickname", "jw92", "phonetic", "typo", "alike", "jw80", "initial", "else")),
    ("family", ("exact", "jw92", "phonetic", "token", "jw80", "else")),
    ("middle", ("exact", "initial", "else")),
    ("suffix", ("exact", "else")),
    ("dob", ("exact", "swap_day_month", "one_edit", "same_year", "else")),
    ("sex", ("exact", "else")),
    ("address", ("same_home", "same_street", "same_postcode", "same_city", "same_state", "else")),
    ("phone", ("exact", "one_edit", "else")),
    ("email", ("exact", "same_local", "else")),
    ("identifier", ("agree", "conflict")),
    ("ssn", ("exact", "one_edit", "else")),
)
NAMES = tuple(name for name, _ in COMPARISONS)
INDEX = {name: i for i, name in enumerate(NAMES)}
# Levels that count as "the first name agrees" / "the surname agrees" / "the DOB agrees" for the gates.
GIVEN_AGREES = frozenset({0, 1, 2, 3, 4})
FAMILY_AGREES = frozenset({0, 1, 2, 3})
DOB_AGREES = frozenset({0, 1, 2})
_TYPO = COMPARISONS[0][1].index("typo")
GIVEN_ALIKE = COMPARISONS[0][1].index("alike")
_JW80 = COMPARISONS[0][1].index("jw80")
GIVEN_ELSE = len(COMPARISONS[0][1]) - 1
# Address levels that mean "the same home" / "the same street" (a household, or the person).
ADDRESS_HOME = frozenset({0, 1})

_jw = JaroWinkler.similarity
_dl = DamerauLevenshtein.distance


def _given(a: str | None, b: str | None, a_sdx: str, b_sdx: str, a_mph: str, b_mph: str) -> int:
    if not a or not b:
        return -1
    if a == b:
        return 0
    if are_nicknames(a, b):
        return 1
    if len(a) == 1 or len(b) == 1:
        return 7 if a[0] == b[0] else 8
    sim = _jw(a, b)
    if _transposed(a, b):
        # Two neighbouring letters keyed the other way round (WILLAIM/WILLIAM): a keying error even when
        # the misspelling happens to be in the name list; parents do not tell twins apart that way.
        return 4
    if sim >= 0.80 and _two_names(a, b) and not (_rare_variant(a, b) and _typo(a, b)):
        # Two real names that look alike (ADRIAN/ADRIANA, JAYDEN/JADEN, MARIA/MARIO) are what parents
        # give twins and siblings: different people unless something personal says otherwise.
        return 5
    if sim >= 0.92:
        return 2
    # A keying error is checked before the phonetic codes: a misspelling that also sounds alike
    # (GXBRIELPA/GABRIELLA) is still a misspelling, and must not be scored as the weaker level.
    if sim >= 0.80 and _typo(a, b):
        return 4
    # Phonetic codes alone are too coarse for first names (TERESA ~ DORS in Metaphone, JOSE ~ JESSICA
    # in Soundex): they count only with some spelling similarity too.
    if sim >= 0.80 and (a_mph == b_mph or a_sdx == b_sdx):
        return 3
    if sim >= 0.80:
        return 6
    return 8


def _transposed(a: str, b: str) -> bool:
    """Same letters, same first letter, one adjacent pair swapped; from 5 letters (short names such as
    ALEC/ACLE are too few letters to tell a slip from another name)."""
    if len(a) != len(b) or len(a) < 5 or a[0] != b[0]:
        return False
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]


def _split_given(a: Person, b: Person) -> bool:
    """One first name keyed with a stray space (JAYDE N / JAYDEN, MARY ANN / MARYANN): the normalizer then
    reads the tail as a middle name, so first + middle of one record spell the other's first name."""
    for one, other in ((a, b), (b, a)):
        if one.given and one.middle and other.given and len(other.given) > len(one.given) \
                and (one.given + one.middle).replace(" ", "") == other.given:
            return True
    return False


def _two_names(a: str, b: str) -> bool:
    """Both are first names in their own right (each given to 1,000+ babies in the SSA list) and not
    nicknames of each other. Spelling variants of one name (STEVEN/STEPHEN) land here too: from the
    names alone they cannot be told from twins' names (JAYDEN/JADEN), so they do not count as agreeing."""
    return is_given_name(a) and is_given_name(b)


# A spelling given to fewer babies than this share of the other's is rarer as a parent's choice (for a
# twin named after a sibling's name) than as a keying error of the common name.
RARE_VARIANT_SHARE = 0.02


def _rare_variant(a: str, b: str) -> bool:
    """One of two alike real names is a rare spelling of the other (KEVYN/KEVIN: 1 baby in 500; COLLEN/
    COLLEEN, DILAN/DYLAN), both given to the same sex: a misspelling that happens to be in the name list
    is far likelier than twins named that way. Spellings in common use (JADEN/JAYDEN, ELLE/ELLA, MARLA/
    MARIA) stay two names."""
    (fa, ma), (fb, mb) = name_counts(a), name_counts(b)
    sa, sb = name_sex(a), name_sex(b)
    if sa and sb and sa != sb:
        return False
    low, high = sorted((fa + ma, fb + mb))
    return high > 0 and low < RARE_VARIANT_SHARE * high


def _typo(a: str, b: str) -> bool:
    """A keying error in one of two first names, not two different names.

    Short names one edit apart are often different names (JOHN/JOAN, MARK/MARY, ERIN/ERIK): one edit counts
    from 4 letters, two from 5, the first letter must agree (siblings' rhyming names differ there: JAYDEN/
    KAYDEN), and two names that are both in the curated name list are two names, however close.
    """
    n = min(len(a), len(b))
    if n < 4 or a[0] != b[0] or (is_listed(a) and is_listed(b)):
        return False
    return _dl(a, b, score_cutoff=2) <= (1 if n == 4 else 2)


def _family(a: str | None, b: str | None, a_sdx: str, b_sdx: str, a_mph: str, b_mph: str) -> int:
    # One letter is an initial, not a surname: no evidence either way.
    if not a or not b or len(a) == 1 or len(b) == 1:
        return -1
    if a == b:
        return 0
    sim = _jw(a, b)
    if sim >= 0.92:
        return 1
    if min(len(a), len(b)) >= 5 and a[0] == b[0] and _dl(a, b, score_cutoff=1) <= 1:
        # One keying error in a surname of five letters or more (FEAST/FEDST, GEORGE/GEOER, PULLE/PILLE) is
        # the same surname mistyped, whatever Jaro-Winkler makes of a short word, and whether or not the
        # two spellings also sound alike (the phonetic level is weaker evidence).
        return 1
    if a_mph == b_mph or a_sdx == b_sdx:
        return 2
    # Hyphenated / compound / double-barrelled surnames, or one part of it kept after marriage.
    if (" " in a or " " in b) and set(a.split()) & set(b.split()):
        return 3
    if sim >= 0.80:
        return 4
    return 5


def _dob(a: str | None, b: str | None) -> int:
    if not a or not b:
        return -1
    if a == b:
        return 0
    if len(a) != 8 or len(b) != 8:
        # Partial dates compare at the lower precision of the two.
        n = min(len(a), len(b))
        if a[:n] == b[:n]:
            return 0 if n >= 6 else 3
        return 3 if a[:4] == b[:4] else 4
    if a[:4] == b[:4] and a[4:6] == b[6:8] and a[6:8] == b[4:6]:
        return 1
    if _dl(a, b) <= 1:
        return 2
    if a[:4] == b[:4]:
        return 3
    return 4


def _exact(a: str | None, b: str | None) -> int:
    if not a or not b:
        return -1
    return 0 if a == b else 1


def _jw3(a: str | None, b: str | None, cut: float = 0.90) -> int:
    if not a or not b:
        return -1
    if a == b:
        return 0
    return 1 if _jw(a, b) >= cut else 2


def _edit3(a: str | None, b: str | None) -> int:
    if not a or not b:
        return -1
    if a == b:
        return 0
    return 1 if len(a) == len(b) and _dl(a, b) <= 1 else 2


def _middle(a: str | None, b: str | None) -> int:
    if not a or not b:
        return -1
    if a == b and len(a) > 1:
        return 0
    # One letter in common says little (about 1 in 15 strangers share a middle initial).
    return 1 if a[0] == b[0] else 2


def _address(a: Person, b: Person) -> int:
    """The most specific part of the address that agrees: home, street, postcode, city, state."""
    street = _jw3(a.street, b.street)
    if street == 2 and a.house and a.house == b.house and _street_name_typo(a.street or "", b.street or ""):
        street = 1
    postcode = _exact(a.postcode, b.postcode)
    city = _jw3(a.city, b.city)
    state = _exact(a.state, b.state)
    if street < 0 and postcode < 0 and city < 0 and state < 0:
        return -1
    area = postcode == 0 or city == 0 or (postcode < 0 and city < 0)
    if street in (0, 1) and area:
        return 0 if a.house and a.house == b.house else 1
    if postcode == 0:
        return 2
    if city in (0, 1):
        return 3
    if state == 0:
        return 4
    return 5


def _street_name_typo(a: str, b: str) -> bool:
    """The street's name (its first word) one keying error apart, 6 letters or more, with the house number
    agreeing (2242 YERTRUDE STTEET / 2242 GERTRUDE ST): Jaro-Winkler weighs a wrong first letter and a
    mangled street type heavily. The street type is left out: MAIN ST and MAIN AVE are two streets, but
    the same name with one letter wrong and the same house number is one address keyed twice."""
    wa, wb = a.split(), b.split()
    if not wa or not wb or wa[0] == wb[0] or min(len(wa[0]), len(wb[0])) < 6:
        return False
    return _dl(wa[0], wb[0], score_cutoff=1) <= 1


def _suffix(a: str | None, b: str | None) -> int:
    # A suffix on one side only is usually just not recorded: missing, not disagreement.
    if not a or not b:
        return -1
    return 0 if a == b else 1


def _email(a: str | None, b: str | None) -> int:
    if not a or not b:
        return -1
    if a == b:
        return 0
    return 1 if a.partition("@")[0] == b.partition("@")[0] else 2


def _identifiers(a: dict[str, str], b: dict[str, str]) -> int:
    if not a or not b:
        return -1
    verdict = -1
    for system, value in a.items():
        other = b.get(system)
        if other is None:
            continue
        if other != value:
            return 1  # same assigning authority, different value: strong evidence of two people
        verdict = 0
    return verdict


def names_swapped(a: Person, b: Person) -> bool:
    """Given and family recorded the other way round on one side."""
    if not (a.given and a.family and b.given and b.family) or a.given == b.given:
        return False
    return _jw(a.given, b.family) >= 0.92 and _jw(a.family, b.given) >= 0.92


def _one_name_crossed(a: Person, b: Person) -> bool:
    """Names recorded the other way round, and one of them then mistyped or replaced (RAQUEL LODGE /
    GARNETT RAQUEL): one name agrees crosswise. The other name still disagrees, and every gate still
    applies to the swapped comparison (the surname crossing alone is the twin pattern)."""
    if not (a.given and a.family and b.given and b.family):
        return False
    if _jw(a.given, b.family) >= 0.92 or _jw(a.family, b.given) >= 0.92:
        return True
    return bool(b.middle and a.family == f"{b.given} {b.middle}") \
        or bool(a.middle and b.family == f"{a.given} {a.middle}")


def compare(a: Person, b: Person) -> tuple[list[int], bool]:
    """-> (levels per comparison, whether the names were compared swapped)."""
    given = _given(a.given, b.given, a.given_sdx, b.given_sdx, a.given_mph, b.given_mph)
    family = _family(a.family, b.family, a.family_sdx, b.family_sdx, a.family_mph, b.family_mph)
    swapped = False
    # Only when neither name agrees as recorded is it worth trying them the other way round.
    if given not in GIVEN_AGREES and family >= 4 and (names_swapped(a, b) or _one_name_crossed(a, b)):
        swapped = True
        given = _given(a.given, b.family, a.given_sdx, b.family_sdx, a.given_mph, b.family_mph)
        family = _family(a.family, b.given, a.family_sdx, b.given_sdx, a.family_mph, b.given_mph)
        if family >= 4 and b.middle and a.family == f"{b.given} {b.middle}":
            # A two-word surname moved into the given field is read as first + middle name.
            family = 0
    if given not in GIVEN_AGREES and not swapped and _split_given(a, b):
        given = _TYPO
    middle = _middle(a.middle, b.middle)
    if given == _TYPO and middle == 2 and not swapped and a.given and b.given and _transposed(a.given, b.given) \
            and _two_names(a.given, b.given):
        # MICHAEL J / MICHEAL R: two spellings in use and two middle names read as two people (twins).
        given = GIVEN_ALIKE
    sex = _exact(a.sex, b.sex)
    if given == _TYPO and sex == 1:
        # A keying error does not change the recorded sex: CAROL/CARLOS, MARY/MARL(K) are two names.
        given = _JW80
    levels = [
        given,
        family,
        middle,
        _suffix(a.suffix, b.suffix),
        _dob(a.dob, b.dob),
        sex,
        _address(a, b),
        _edit3(a.phone, b.phone),
        _email(a.email, b.email),
        _identifiers(a.identifiers, b.identifiers),
        _edit3(a.ssn, b.ssn),
    ]
    return levels, swapped
