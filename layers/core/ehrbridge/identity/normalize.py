"""FHIR Patient (a dict) -> the comparison features of one person, with placeholders as missing.

Works on plain dicts on purpose: the identity handler must not import fhir.resources (cold start).
Placeholder values (BABY BOY, 999-99-9999, 1900-01-01, TEST PATIENT, 555 numbers ...) are dropped
here, so every comparison treats them as missing instead of as strong agreement between strangers.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import jellyfish

SSN_SYSTEM = "http://hl7.org/fhir/sid/us-ssn"
# Identifier type codes (v2-0203) that carry a social security number.
SSN_TYPE_CODES = frozenset({"SS", "SSN", "NI", "SB"})

# Name tokens that are registration defaults, not names.
PLACEHOLDER_NAME_TOKENS = frozenset({
    "BABY", "BOY", "GIRL", "BB", "BG", "INFANT", "NEWBORN", "NB", "UNKNOWN", "UNK", "UNKNWN", "TEST", "PATIENT",
    "PT", "NONE", "NULL", "NA", "NAME", "NONAME", "TRAUMA", "ALIAS", "DECEASED", "MALE", "FEMALE", "XXX", "ZZZ",
    "ZZTEST", "TESTPATIENT", "BABYBOY", "BABYGIRL", "TWIN", "TRIPLET",
    # Household-form fillers: a relationship or a role written where the name goes.
    "RESIDENT", "OCCUPANT", "HOMEOWNER", "SISTER", "BROTHER", "MOM", "DAD", "MOTHER", "FATHER", "SON",
    "DAUGHTER", "KID", "CHILD", "GRANDMA", "GRANDPA", "WIFE", "HUSBAND", "SPOUSE", "ROOMMATE", "ANON",
    "ANONYMOUS", "DONT", "DK", "REFUSED", "DECLINED",
})
# Relationship and role words written where a first name goes (census and registration forms). Given
# names only: several are real surnames too (PERSON, FRIEND, MINOR).
PLACEHOLDER_GIVEN_TOKENS = frozenset({
    "NEPHEW", "NIECE", "COUSIN", "AUNT", "UNCLE", "GRANDSON", "GRANDDAUGHTER", "GRANDCHILD", "STEPSON",
    "STEPDAUGHTER", "YOUNGEST", "OLDEST", "ELDEST", "PERSON", "FRIEND", "BOARDER", "LODGER", "TENANT", "ADULT",
    "INMATE", "RESPONDENT",
})
# Phrases that mean "no name given" as a whole though their words may be names (LADY OF THE HOUSE).
_PLACEHOLDER_PHRASES = re.compile(
    r"\b(?:DONT KNOW|DO NOT KNOW|NOT KNOWN|NO NAME|HEAD OF (?:THE )?HOUSEHOLD|"
    r"(?:LADY|MAN|GENTLEMAN|WOMAN) (?:OF|IN) (?:THE )?(?:HOUSE|HOUSEHOLD)|(?:LADY|MAN|GENTLEMAN|WOMAN) OF THE|"
    r"OF THE HOUSE)\b")
# Whole names that are defaults even though each token is a real name.
PLACEHOLDER_FULL_NAMES = frozenset({("JOHN", "DOE"), ("JANE", "DOE"), ("BABY", "DOE"), ("JOHN", "SMITH-DOE")})
NAME_PREFIXES = frozenset({"MR", "MRS", "MS", "MISS", "DR", "PROF", "REV", "SR.", "MX"})
SUFFIXES = {"JR": "JR", "JUNIOR": "JR", "SR": "SR", "SENIOR": "SR", "II": "II", "2ND": "II", "III": "III",
            "3RD": "III", "IV": "IV", "4TH": "IV", "V": "V"}
# Birth-order markers in newborn names (Twin A, Baby B, BB1): the order itself is evidence.
_ORDER_TOKENS = {"A": 1, "B": 2, "C": 3, "D": 4, "1": 1, "2": 2, "3": 3, "4": 4, "BB1": 1, "BB2": 2, "BB3": 3}

PLACEHOLDER_DOBS = frozenset({"19000101", "18000101", "19010101", "20000101", "11111111", "00010101", "99991231",
                              "18991231", "19700101"})
PLACEHOLDER_SSNS = frozenset({"123456789", "987654321", "078051120", "219099999", "111223333"})
PLACEHOLDER_PHONES = frozenset({"1234567890", "0123456789", "9876543210"})
PLACEHOLDER_EMAIL_LOCAL = frozenset({"none", "noemail", "no", "na", "test", "unknown", "declined", "noreply",
                                     "no-reply", "nomail", "donotreply", "refused", "x", "xx", "xxx"})
PLACEHOLDER_ADDRESS = frozenset({"UNKNOWN", "UNK", "NONE", "NA", "HOMELESS", "NO ADDRESS", "GENERAL DELIVERY",
                                 "NOT GIVEN", "DECLINED", "TEST"})
_STREET_WORDS = {"STREET": "ST", "ST.": "ST", "AVENUE": "AVE", "AV": "AVE", "ROAD": "RD", "DRIVE": "DR",
                 "LANE": "LN", "COURT": "CT", "PLACE": "PL", "BOULEVARD": "BLVD", "CIRCLE": "CIR",
                 "HIGHWAY": "HWY", "PARKWAY": "PKWY", "TERRACE": "TER", "NORTH": "N", "SOUTH": "S", "EAST": "E",
                 "WEST": "W", "APARTMENT": "APT", "SUITE": "STE", "UNIT": "UNIT", "CRESCENT": "CRES",
                 "CLOSE": "CL", "SQUARE": "SQ"}
_NON_ALNUM = re.compile(r"[^A-Z0-9 ]+")
_NON_ALPHA = re.compile(r"[^A-Z ]+")
_SPACES = re.compile(r"\s+")
_DIGITS = re.compile(r"\D+")


def _ascii_upper(value: str) -> str:
    folded = unicodedata.normalize("NFKD", value)
    return "".join(c for c in folded if not unicodedata.combining(c)).upper()


# Digits keyed or OCR-read for the letters they look like (RANDA1, 4IDEN, FAI9Y): inside a name they are
# a misread letter, not a separator. A digit standing alone (NICK 4 BROTHERS) is still dropped.
_DIGIT_LOOKALIKES = str.maketrans("0123456789", "OLZEASGTBG")
_MIXED_TOKEN = re.compile(r"[A-Za-z0-9]*(?:[A-Za-z][0-9]|[0-9][A-Za-z])[A-Za-z0-9]*")


def _misread_digits(text: str) -> str:
    def fix(match: re.Match[str]) -> str:
        token = match.group(0).upper()
        letters = "".join(c for c in token if c.isalpha())
        # Newborn and suffix forms keep their digits' meaning (BB1, BABY2, 2ND, 3RD).
        if len(letters) < 2 or token in _ORDER_TOKENS or token in SUFFIXES or letters in PLACEHOLDER_NAME_TOKENS:
            return match.group(0)
        return token.translate(_DIGIT_LOOKALIKES)
    return _MIXED_TOKEN.sub(fix, text)


def clean_name(value: str | None) -> str:
    if not value:
        return ""
    text = _ascii_upper(value).replace("-", " ").replace("'", "")
    return _SPACES.sub(" ", _NON_ALPHA.sub(" ", text)).strip()


def clean_ssn(value: str | None, *, us: bool = True) -> str | None:
    """A social security / national insurance number; US rules for the US SSN system."""
    digits = _DIGITS.sub("", value or "")
    if not us:
        # Other countries' numbers (typed SS/NI under their own system): only fillers are dropped.
        return digits if 5 <= len(digits) <= 12 and len(set(digits)) > 1 and digits not in PLACEHOLDER_SSNS \
            else None
    if len(digits) != 9 or digits in PLACEHOLDER_SSNS or len(set(digits)) == 1:
        return None
    # SSA never issues area 000, 666 or 9xx, group 00 or serial 0000: such values are fillers.
    if digits[:3] in {"000", "666"} or digits[0] == "9" or digits[3:5] == "00" or digits[5:] == "0000":
        return None
    return digits


def clean_phone(value: str | None) -> str | None:
    digits = _DIGITS.sub("", value or "")
    if len(digits) == 11 and digits[0] == "1":
        digits = digits[1:]
    if len(digits) < 7 or len(set(digits)) == 1 or digits in PLACEHOLDER_PHONES:
        return None
    if len(digits) == 10 and digits[3:6] == "555" and digits[6:8] == "01":
        return None  # 555-01xx numbers are reserved for fiction
    return digits


def clean_email(value: str | None) -> str | None:
    text = (value or "").strip().lower()
    if "@" not in text:
        return None
    local, _, domain = text.partition("@")
    if not local or "." not in domain or local in PLACEHOLDER_EMAIL_LOCAL or domain.startswith(("example.",
                                                                                                "test.")):
        return None
    return text


def clean_dob(value: str | None, today: date | None = None) -> str | None:
    """YYYY[MM[DD]] without separators; None for placeholders, impossible and future dates."""
    if not value:
        return None
    digits = _DIGITS.sub("", value[:10])
    if len(digits) not in (4, 6, 8) or digits in PLACEHOLDER_DOBS:
        return None
    year = int(digits[:4])
    limit = (today or date.today()).year
    if year < 1880 or year > limit:
        return None
    if len(digits) == 8:
        try:
            born = date(year, int(digits[4:6]), int(digits[6:8]))
        except ValueError:
            return None
        if born > (today or date.today()):
            return None
    return digits


def _normalize_street(text: str) -> tuple[str | None, str | None]:
    """-> (house number, street line without the number)."""
    words = [_STREET_WORDS.get(w, w) for w in _NON_ALNUM.sub(" ", _ascii_upper(text)).split()]
    if not words or " ".join(words) in PLACEHOLDER_ADDRESS:
        return None, None
    house = None
    if words and any(ch.isdigit() for ch in words[0]):
        house = words.pop(0)
    return house, (" ".join(words) or None)


def soundex(value: str) -> str:
    return jellyfish.soundex(value) if value else ""


def metaphone(value: str) -> str:
    return jellyfish.metaphone(value) if value else ""


@dataclass(slots=True)
class Person:
    """The normalized demographics of one source Patient; None means missing (or a placeholder)."""

    given: str | None = None
    family: str | None = None
    middle: str | None = None
    suffix: str | None = None
    dob: str | None = None
    sex: str | None = None
    house: str | None = None
    street: str | None = None
    city: str | None = None
    postcode: str | None = None
    state: str | None = None
    phone: str | None = None
    email: str | None = None
    ssn: str | None = None
    birth_order: int | None = None
    identifiers: dict[str, str] = field(default_factory=dict)
    # Derived once here so scoring never recomputes phonetic codes.
    given_sdx: str = ""
    family_sdx: str = ""
    given_mph: str = ""
    family_mph: str = ""

    def __post_init__(self) -> None:
        # Stored records carry their codes (see to_dict): decoding a candidate recomputes nothing.
        if not self.given_sdx and self.given:
            self.given_sdx, self.given_mph = soundex(self.given), metaphone(self.given)
        if not self.family_sdx and self.family:
            self.family_sdx, self.family_mph = soundex(self.family), metaphone(self.family)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in _STORED_FIELDS:
            value = getattr(self, name)
            if value:
                out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Person:
        kwargs = {k: data[k] for k in _STORED_FIELDS if k in data}
        if "birth_order" in kwargs:
            kwargs["birth_order"] = int(kwargs["birth_order"])
        return cls(**kwargs)


_STORED_FIELDS = ("given", "family", "middle", "suffix", "dob", "sex", "house", "street", "city", "postcode",
                  "state", "phone", "email", "ssn", "birth_order", "identifiers", "given_sdx", "family_sdx",
                  "given_mph", "family_mph")


# Suffix and newborn tokens whose digits are their meaning (SMITH 2ND, BB1 JONES): clean_name would keep only
# the letters (ND, BB) and lose the suffix or the birth order.
# A bare 1-4 counts only as a newborn's birth order (BABY BOY 2) and is dropped everywhere else.
_DIGIT_TOKENS = frozenset(t for t in (*SUFFIXES, *_ORDER_TOKENS) if any(c.isdigit() for c in t))


def _name_tokens(value: str) -> str:
    """clean_name, word by word, keeping the suffix and newborn tokens that carry digits."""
    words = []
    for raw in _ascii_upper(value).split():
        word = raw.strip(".,")
        words.append(word if word in _DIGIT_TOKENS else clean_name(raw))
    return " ".join(w for w in words if w)


def _split_name(given_parts: list[str], family: str) -> tuple[str | None, str | None, str | None, str | None,
                                                               int | None]:
    """-> given, middle, family, suffix, birth order; placeholder tokens removed."""
    suffix = None
    order = None
    tokens: list[str] = []
    for part in given_parts:
        tokens.extend(_PLACEHOLDER_PHRASES.sub(" ", _name_tokens(_misread_digits(part))).split())
    fam_tokens = _PLACEHOLDER_PHRASES.sub(" ", _name_tokens(_misread_digits(family))).split()
    for bag in (tokens, fam_tokens):
        keep = []
        for i, tok in enumerate(bag):
            # Among given names a lone V is a middle initial, not "the fifth" (FHIR has name.suffix).
            if tok in SUFFIXES and (bag is fam_tokens or (i > 0 and tok != "V")):
                suffix = SUFFIXES[tok]
            elif tok in NAME_PREFIXES and i == 0 and len(bag) > 1:
                continue
            else:
                keep.append(tok)
        bag[:] = keep
    is_newborn = any(t in {"BABY", "BB", "BG", "INFANT", "NEWBORN", "NB", "TWIN", "TRIPLET", "BABYBOY",
                           "BABYGIRL", "BB1", "BB2", "BB3"} for t in tokens)
    if is_newborn:
        for tok in tokens:
            if tok in _ORDER_TOKENS:
                order = _ORDER_TOKENS[tok]
        tokens = [t for t in tokens if t not in _ORDER_TOKENS]
    given_tokens = [t for t in tokens if t not in PLACEHOLDER_NAME_TOKENS and t not in PLACEHOLDER_GIVEN_TOKENS
                    and not t.isdigit()]
    fam_clean = [t for t in fam_tokens if t not in PLACEHOLDER_NAME_TOKENS and not t.isdigit()]
    given = given_tokens[0] if given_tokens else None
    middle = " ".join(given_tokens[1:]) or None
    fam = " ".join(fam_clean) or None
    if given and fam and (given, fam) in PLACEHOLDER_FULL_NAMES:
        given = fam = middle = None
    return given, middle, fam, suffix, order


def _pick_name(names: list[dict[str, Any]]) -> dict[str, Any]:
    for wanted in ("official", "usual", None):
        for name in names:
            if isinstance(name, dict) and (wanted is None or name.get("use") == wanted) and name.get("use") != "old":
                return name
    return names[0] if names and isinstance(names[0], dict) else {}


def _identifier_is_ssn(identifier: dict[str, Any]) -> bool:
    if identifier.get("system") == SSN_SYSTEM:
        return True
    for coding in (identifier.get("type") or {}).get("coding", []) or []:
        if isinstance(coding, dict) and coding.get("code") in SSN_TYPE_CODES:
            return True
    return False


def person_from_patient(patient: dict[str, Any], *, today: date | None = None) -> Person:
    """Map a FHIR R4 Patient (dict) to comparison features."""
    name = _pick_name(patient.get("name") or [])
    given_parts = [g for g in (name.get("given") or []) if isinstance(g, str)]
    family = name.get("family") if isinstance(name.get("family"), str) else ""
    if not given_parts and not family and isinstance(name.get("text"), str):
        parts = name["text"].split()
        given_parts, family = parts[:-1], (parts[-1] if parts else "")
    given, middle, fam, suffix, order = _split_name(given_parts, family or "")
    for sfx in name.get("suffix") or []:
        if isinstance(sfx, str) and _name_tokens(sfx) in SUFFIXES:
            suffix = SUFFIXES[_name_tokens(sfx)]
    mb = patient.get("multipleBirthInteger")
    if isinstance(mb, int) and not isinstance(mb, bool) and 0 < mb < 10:
        order = mb

    gender = patient.get("gender")
    sex = {"male": "M", "female": "F", "other": "O"}.get(gender) if isinstance(gender, str) else None

    house = street = city = postcode = state = None
    addresses = [a for a in patient.get("address") or [] if isinstance(a, dict) and a.get("use") != "old"]
    if addresses:
        addr = next((a for a in addresses if a.get("use") == "home"), addresses[0])
        lines = [x for x in addr.get("line") or [] if isinstance(x, str)]
        if lines:
            # First line only: the second (apartment, building name) is often left out.
            house, street = _normalize_street(lines[0])
        city = clean_name(addr.get("city")) or None
        if city in PLACEHOLDER_ADDRESS or city == "ANYTOWN":
            city = None
        post = _NON_ALNUM.sub("", _ascii_upper(addr.get("postalCode") or ""))[:5]
        postcode = post if post and len(set(post)) > 1 else None
        state = clean_name(addr.get("state")) or None

    phone = email = None
    for telecom in patient.get("telecom") or []:
        if not isinstance(telecom, dict) or telecom.get("use") == "old":
            continue
        if telecom.get("system") == "phone" and phone is None:
            phone = clean_phone(telecom.get("value"))
        elif telecom.get("system") == "email" and email is None:
            email = clean_email(telecom.get("value"))

    ssn = None
    identifiers: dict[str, str] = {}
    for ident in patient.get("identifier") or []:
        if not isinstance(ident, dict) or not isinstance(ident.get("value"), str):
            continue
        if _identifier_is_ssn(ident):
            ssn = ssn or clean_ssn(ident["value"], us=ident.get("system") in (SSN_SYSTEM, None))
            continue
        system = ident.get("system")
        value = ident["value"].strip()
        if isinstance(system, str) and system and value and ident.get("use") != "old":
            identifiers.setdefault(system, value.upper())

    return Person(given=given, family=fam, middle=middle, suffix=suffix,
                  dob=clean_dob(patient.get("birthDate"), today), sex=sex, house=house, street=street, city=city,
                  postcode=postcode, state=state, phone=phone, email=email, ssn=ssn, birth_order=order,
                  identifiers=identifiers)
