"""Synthetic US-style patients with households, for training the default model, tests and benchmarks.

Households share surname, address and phone; some hold twins; registrations carry the errors seen in
the field (typos, nicknames, day/month swaps, name changes after marriage, moves, newborn placeholder
names, swapped given/family, missing fields). Every generated Patient keeps its true person id in
``truth`` so evaluations can count pairs. Deterministic for a seed. No real person's data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import Any

MALE = (
    "JAMES", "JOHN", "ROBERT", "MICHAEL", "WILLIAM", "DAVID", "RICHARD", "JOSEPH", "THOMAS", "CHARLES",
    "CHRISTOPHER", "DANIEL", "MATTHEW", "ANTHONY", "MARK", "DONALD", "STEVEN", "PAUL", "ANDREW", "JOSHUA", "KENNETH",
    "KEVIN", "BRIAN", "GEORGE", "TIMOTHY", "RONALD", "EDWARD", "JASON", "JEFFREY", "RYAN", "JACOB", "GARY",
    "NICHOLAS", "ERIC", "JONATHAN", "STEPHEN", "LARRY", "JUSTIN", "SCOTT", "BRANDON", "BENJAMIN", "SAMUEL",
    "GREGORY", "ALEXANDER", "FRANK", "PATRICK", "RAYMOND", "JACK", "DENNIS", "JERRY", "TYLER", "AARON", "JOSE",
    "ADAM", "NATHAN", "HENRY", "DOUGLAS", "ZACHARY", "PETER", "KYLE", "ETHAN", "WALTER", "NOAH", "JEREMY",
    "CHRISTIAN", "KEITH", "ROGER", "TERRY", "GERALD", "HAROLD", "SEAN", "AUSTIN", "CARL", "ARTHUR", "LAWRENCE",
    "DYLAN", "JESSE", "JORDAN", "BRYAN", "BILLY", "JOE", "BRUCE", "GABRIEL", "LOGAN", "ALBERT", "WILLIE", "ALAN",
    "JUAN", "WAYNE", "ELIJAH", "RANDY", "ROY", "VINCENT", "RALPH", "EUGENE", "RUSSELL", "BOBBY", "MASON", "PHILIP",
    "LOUIS", "LUIS", "CARLOS", "MIGUEL", "OMAR", "AHMED", "WEI", "HIROSHI",
)
FEMALE = (
    "MARY", "PATRICIA", "JENNIFER", "LINDA", "ELIZABETH", "BARBARA", "SUSAN", "JESSICA", "SARAH", "KAREN", "LISA",
    "NANCY", "BETTY", "MARGARET", "SANDRA", "ASHLEY", "KIMBERLY", "EMILY", "DONNA", "MICHELLE", "CAROL", "AMANDA",
    "DOROTHY", "MELISSA", "DEBORAH", "STEPHANIE", "REBECCA", "SHARON", "LAURA", "CYNTHIA", "KATHLEEN", "AMY",
    "ANGELA", "SHIRLEY", "ANNA", "BRENDA", "PAMELA", "EMMA", "NICOLE", "HELEN", "SAMANTHA", "KATHERINE", "CHRISTINE",
    "DEBRA", "RACHEL", "CAROLYN", "JANET", "CATHERINE", "MARIA", "HEATHER", "DIANE", "RUTH", "JULIE", "OLIVIA",
    "JOYCE", "VIRGINIA", "VICTORIA", "KELLY", "LAUREN", "CHRISTINA", "JOAN", "EVELYN", "JUDITH", "MEGAN", "ANDREA",
    "CHERYL", "HANNAH", "JACQUELINE", "MARTHA", "GLORIA", "TERESA", "ANN", "SARA", "MADISON", "FRANCES", "KATHRYN",
    "JANICE", "JEAN", "ABIGAIL", "ALICE", "JULIA", "JUDY", "SOPHIA", "GRACE", "DENISE", "AMBER", "DORIS", "MARILYN",
    "DANIELLE", "BEVERLY", "ISABELLA", "THERESA", "DIANA", "NATALIE", "BRITTANY", "CHARLOTTE", "MARIE", "KAYLA",
    "ALEXIS", "LORI", "ROSA", "CARMEN", "FATIMA", "MEI", "YUKI", "PRIYA",
)
SURNAMES = (
    "SMITH", "JOHNSON", "WILLIAMS", "BROWN", "JONES", "GARCIA", "MILLER", "DAVIS", "RODRIGUEZ", "MARTINEZ",
    "HERNANDEZ", "LOPEZ", "GONZALEZ", "WILSON", "ANDERSON", "THOMAS", "TAYLOR", "MOORE", "JACKSON", "MARTIN", "LEE",
    "PEREZ", "THOMPSON", "WHITE", "HARRIS", "SANCHEZ", "CLARK", "RAMIREZ", "LEWIS", "ROBINSON", "WALKER", "YOUNG",
    "ALLEN", "KING", "WRIGHT", "SCOTT", "TORRES", "NGUYEN", "HILL", "FLORES", "GREEN", "ADAMS", "NELSON", "BAKER",
    "HALL", "RIVERA", "CAMPBELL", "MITCHELL", "CARTER", "ROBERTS", "GOMEZ", "PHILLIPS", "EVANS", "TURNER", "DIAZ",
    "PARKER", "CRUZ", "EDWARDS", "COLLINS", "REYES", "STEWART", "MORRIS", "MORALES", "MURPHY", "COOK", "ROGERS",
    "GUTIERREZ", "ORTIZ", "MORGAN", "COOPER", "PETERSON", "BAILEY", "REED", "KELLY", "HOWARD", "RAMOS", "KIM", "COX",
    "WARD", "RICHARDSON", "WATSON", "BROOKS", "CHAVEZ", "WOOD", "JAMES", "BENNETT", "GRAY", "MENDOZA", "RUIZ",
    "HUGHES", "PRICE", "ALVAREZ", "CASTILLO", "SANDERS", "PATEL", "MYERS", "LONG", "ROSS", "FOSTER", "JIMENEZ",
    "O'BRIEN", "SMITH-JONES", "VAN", "DYKE",
)
_SYL1 = (
    "AB", "AL", "AN", "AR", "BAR", "BEL", "BER", "BRAN", "CAL", "CAR", "COR", "DAL", "DEN", "DOR", "EL", "FAR",
    "FEL", "GAR", "GOL", "HAL", "HAR", "HEN", "KAL", "KEL", "LAN", "LAR", "MAL", "MAR", "MEL", "MOR", "NOR", "OL",
    "PAR", "PEL", "RAN", "REN", "SAL", "SAN", "SEL", "STAN", "TAL", "TOR", "VAL", "VAN", "WAL", "WEL", "WIN",
)
_SYL2 = (
    "BY", "DEN", "DER", "FORD", "GAN", "HAM", "KINS", "LAND", "LEY", "LING", "LOW", "MAN", "MER", "NER", "NEY",
    "RICK", "RIS", "SEN", "SON", "STEAD", "TON", "VILLE", "WAY", "WELL", "WICK", "WOOD",
)
STREETS = (
    "MAIN", "OAK", "PINE", "MAPLE", "CEDAR", "ELM", "WASHINGTON", "LAKE", "HILL", "PARK", "VIEW", "SUNSET", "RIVER",
    "CHURCH", "MILL", "SPRING", "HIGHLAND", "FOREST", "MEADOW", "RIDGE", "WILLOW", "JACKSON", "LINCOLN", "FRANKLIN",
    "MADISON", "CHESTNUT", "WALNUT", "BIRCH", "CHERRY", "DOGWOOD",
)
STREET_TYPES = ("ST", "AVE", "RD", "DR", "LN", "CT", "PL", "BLVD", "WAY")
CITIES = (
    "SPRINGFIELD", "RIVERTON", "FAIRVIEW", "GREENVILLE", "FRANKLIN", "CLINTON", "MADISON", "GEORGETOWN", "SALEM",
    "ARLINGTON", "ASHLAND", "BURLINGTON", "MANCHESTER", "OXFORD", "CLAYTON", "DAYTON", "JACKSON", "MILTON",
    "NEWPORT", "LEXINGTON",
)
STATES = ("NY", "NJ", "PA", "OH", "MA", "CT", "IL", "MI", "VA", "NC")
NICK = {"WILLIAM": "BILL", "ROBERT": "BOB", "RICHARD": "DICK", "JAMES": "JIM", "JOHN": "JACK", "MICHAEL": "MIKE",
        "ELIZABETH": "LIZ", "MARGARET": "PEGGY", "KATHERINE": "KATE", "JENNIFER": "JENNY", "CHRISTOPHER": "CHRIS",
        "JOSEPH": "JOE", "THOMAS": "TOM", "DANIEL": "DAN", "MATTHEW": "MATT", "ANTHONY": "TONY", "PATRICIA": "PAT",
        "SUSAN": "SUE", "DEBORAH": "DEBBIE", "REBECCA": "BECKY", "ALEXANDER": "ALEX", "NICHOLAS": "NICK",
        "SAMANTHA": "SAM", "CHARLES": "CHARLIE", "EDWARD": "ED", "BENJAMIN": "BEN", "VICTORIA": "VICKY",
        "STEPHEN": "STEVE", "BARBARA": "BARB", "DOROTHY": "DOT", "KIMBERLY": "KIM", "JACQUELINE": "JACKIE"}


@dataclass
class TruePerson:
    pid: str
    hh: str
    given: str
    middle: str | None
    family: str
    sex: str
    dob: date
    house: str
    street: str
    city: str
    state: str
    postcode: str
    phone: str | None
    email: str | None
    ssn: str | None
    birth_order: int | None = None
    tags: set[str] = field(default_factory=set)  # twin, child, ...


class Synth:
    def __init__(self, seed: int = 7, today: date = date(2026, 6, 1)) -> None:
        self.rng = random.Random(seed)
        self.today = today
        self._n = 0
        # Zipf-like surname weights: a few very common names, a long tail of generated ones.
        generated = sorted({a + b for a in _SYL1 for b in _SYL2})
        self.surnames = [*SURNAMES, *generated]
        self.surname_weights = [1.0 / (i + 1) ** 0.9 for i in range(len(self.surnames))]
        self.male_w = [1.0 / (i + 1) ** 0.6 for i in range(len(MALE))]
        self.female_w = [1.0 / (i + 1) ** 0.6 for i in range(len(FEMALE))]
        self._ssns: set[str] = set()

    # ---- people ----------------------------------------------------------------------------------
    def _first(self, sex: str) -> str:
        names, weights = (MALE, self.male_w) if sex == "M" else (FEMALE, self.female_w)
        return self.rng.choices(names, weights)[0]

    def _ssn(self) -> str | None:
        if self.rng.random() < 0.3:
            return None
        while True:
            ssn = f"{self.rng.randint(1, 665):03d}{self.rng.randint(1, 99):02d}{self.rng.randint(1, 9999):04d}"
            if ssn not in self._ssns:
                self._ssns.add(ssn)
                return ssn

    def _dob(self, lo: int, hi: int) -> date:
        return self.today - timedelta(days=self.rng.randint(lo * 365, hi * 365))

    def household(self) -> list[TruePerson]:
        rng = self.rng
        self._n += 1
        hh = f"h{self._n}"
        family = rng.choices(self.surnames, self.surname_weights)[0]
        addr = dict(house=str(rng.randint(1, 9999)), street=f"{rng.choice(STREETS)} {rng.choice(STREET_TYPES)}",
                    city=rng.choice(CITIES), state=rng.choice(STATES), postcode=f"{rng.randint(10000, 99999)}")
        phone = f"{rng.randint(201, 989)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"
        members: list[TruePerson] = []

        def add(sex: str, dob: date, tags: set[str], given: str | None = None, order: int | None = None) -> None:
            n = len(members)
            g = given or self._first(sex)
            email = f"{g.lower()}.{family.lower().replace(' ', '')}{rng.randint(1, 99)}@mail.example.org" \
                if rng.random() < 0.5 and "child" not in tags else None
            middle = self._first(sex) if rng.random() < 0.5 else None
            members.append(TruePerson(pid=f"{hh}p{n}", hh=hh, given=g, middle=middle, family=family, sex=sex,
                                      dob=dob, phone=phone if rng.random() < 0.85 else None, email=email,
                                      ssn=self._ssn(), birth_order=order, tags=tags, **addr))

        kind = rng.random()
        if kind < 0.25:
            add(rng.choice("MF"), self._dob(18, 90), {"single"})
        else:
            a1 = self._dob(22, 80)
            add("M", a1, {"adult"})
            if kind < 0.85:
                add("F", a1 + timedelta(days=rng.randint(-2000, 2000)), {"adult"})
            for _ in range(rng.choice((0, 1, 1, 2, 2, 3))):
                add(rng.choice("MF"), self._dob(0, 17), {"child"})
            if rng.random() < 0.04:  # twins: same DOB, same everything but first name
                dob = self._dob(0, 30)
                s1, s2 = rng.choice("MF"), rng.choice("MF")
                add(s1, dob, {"child", "twin"}, order=1)
                add(s2, dob, {"child", "twin"}, order=2)
            if rng.random() < 0.05:  # junior living with senior: same name, different DOB
                senior = members[0]
                add(senior.sex, self._dob(18, 40), {"junior"}, given=senior.given)
        return members

    def population(self, n_people: int) -> list[TruePerson]:
        people: list[TruePerson] = []
        while len(people) < n_people:
            people.extend(self.household())
        return people[:n_people]

    # ---- registrations -----------------------------------------------------------------------------
    def corrupt(self, p: TruePerson, rate: float = 1.0) -> tuple[TruePerson, list[str]]:
        """A second registration of the same person, with 0-3 field-level errors."""
        rng = self.rng
        q = replace(p, tags=set(p.tags))
        applied: list[str] = []
        n = rng.choices((0, 1, 2, 3), (0.25, 0.4, 0.25, 0.1))[0] if rate >= 1 else 0
        for _ in range(n):
            kind = rng.choices(("typo_given", "typo_family", "nickname", "swap_dm", "dob_digit", "missing",
                                "name_change", "moved", "swap_names", "phone"),
                               (0.15, 0.15, 0.12, 0.08, 0.1, 0.15, 0.05, 0.1, 0.03, 0.07))[0]
            if kind == "typo_given":
                q.given = _typo(rng, q.given)
            elif kind == "typo_family":
                q.family = _typo(rng, q.family)
            elif kind == "nickname" and q.given in NICK:
                q.given = NICK[q.given]
            elif kind == "swap_dm" and q.dob.day <= 12 and q.dob.day != q.dob.month:
                q.dob = date(q.dob.year, q.dob.day, q.dob.month)
            elif kind == "dob_digit":
                q.dob = _dob_typo(rng, q.dob)
            elif kind == "missing":
                setattr(q, rng.choice(("phone", "email", "ssn", "middle")), None)
            elif kind == "name_change" and q.sex == "F" and "child" not in q.tags:
                q.family = rng.choices(self.surnames, self.surname_weights)[0]
            elif kind == "moved":
                q.house, q.street = str(rng.randint(1, 9999)), f"{rng.choice(STREETS)} {rng.choice(STREET_TYPES)}"
                q.postcode = f"{rng.randint(10000, 99999)}"
                q.phone = None
            elif kind == "swap_names":
                q.given, q.family = q.family, q.given
            elif kind == "phone" and q.phone:
                q.phone = _digit_typo(rng, q.phone)
            else:
                continue
            applied.append(kind)
        return q, applied

    def patient(self, p: TruePerson, patient_id: str, system: str, *, newborn_placeholder: bool = False
                ) -> dict[str, Any]:
        given = [p.given] + ([p.middle] if p.middle else [])
        if newborn_placeholder:
            given = ["BABY", "BOY" if p.sex == "M" else "GIRL"]
        ident = [{"system": system, "value": patient_id.upper(),
                  "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}]
        if p.ssn:
            ident.append({"system": "http://hl7.org/fhir/sid/us-ssn", "value": f"{p.ssn[:3]}-{p.ssn[3:5]}-{p.ssn[5:]}",
                          "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                               "code": "SS"}]}})
        telecom = []
        if p.phone:
            telecom.append({"system": "phone", "value": f"({p.phone[:3]}) {p.phone[3:6]}-{p.phone[6:]}"})
        if p.email:
            telecom.append({"system": "email", "value": p.email})
        patient: dict[str, Any] = {
            "resourceType": "Patient", "id": patient_id, "identifier": ident,
            "name": [{"use": "official", "family": p.family.title(), "given": [g.title() for g in given]}],
            "gender": {"M": "male", "F": "female"}[p.sex], "birthDate": p.dob.isoformat(),
            "address": [{"use": "home", "line": [f"{p.house} {p.street.title()}"], "city": p.city.title(),
                         "state": p.state, "postalCode": p.postcode}],
            "telecom": telecom, "truth": p.pid,
        }
        if p.birth_order:
            patient["multipleBirthInteger"] = p.birth_order
        return patient


def _typo(rng: random.Random, s: str) -> str:
    if len(s) < 3:
        return s
    i = rng.randrange(1, len(s))
    op = rng.random()
    if op < 0.35:
        return s[:i] + s[i + 1:]
    if op < 0.7:
        return s[:i] + rng.choice("AEIOURSTNLMK") + s[i + 1:]
    if op < 0.9 and i < len(s) - 1:
        return s[:i] + s[i + 1] + s[i] + s[i + 2:]
    return s[:i] + rng.choice("AEIOU") + s[i:]


def _digit_typo(rng: random.Random, s: str) -> str:
    i = rng.randrange(len(s))
    return s[:i] + str((int(s[i]) + rng.randint(1, 9)) % 10) + s[i + 1:]


def _dob_typo(rng: random.Random, d: date) -> date:
    for _ in range(10):
        text = _digit_typo(rng, d.strftime("%Y%m%d"))
        try:
            out = date(int(text[:4]), int(text[4:6]), int(text[6:]))
        except ValueError:
            continue
        if 1900 < out.year <= 2026:
            return out
    return d


def household_linkage_set(n_people: int = 4000, seed: int = 11, overlap: float = 0.7
                          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Two sources: A registers everyone once, B re-registers ``overlap`` of them with errors plus new people.

    Every Patient carries ``truth`` (the person id) and ``case`` tags used by the evaluation.
    """
    synth = Synth(seed)
    people = synth.population(n_people)
    extra = synth.population(int(n_people * 0.3))
    for p in extra:
        p.pid, p.hh = "x" + p.pid, "x" + p.hh
    rng = synth.rng
    # Some people are known only to B while their household (twin, parent, namesake father) is in A:
    # the hard negatives a household-blind matcher links.
    b_only = {p.pid for p in people if rng.random() < 0.12}
    a = [synth.patient(p, f"a{i}", "urn:oid:2.16.840.1.113883.3.999.1")
         for i, p in enumerate(people) if p.pid not in b_only]
    b: list[dict[str, Any]] = []
    for p in people:
        if p.pid in b_only:
            q, applied = synth.corrupt(p)
            pat = synth.patient(q, f"b{len(b)}", "urn:oid:2.16.840.1.113883.3.999.2")
            pat["case"] = ["b_only_household_member", *applied, *sorted(p.tags)]
            b.append(pat)
        elif rng.random() < overlap:
            q, applied = synth.corrupt(p)
            newborn = "child" in p.tags and (synth.today - p.dob).days < 365 and rng.random() < 0.5
            pat = synth.patient(q, f"b{len(b)}", "urn:oid:2.16.840.1.113883.3.999.2", newborn_placeholder=newborn)
            pat["case"] = applied + (["newborn_placeholder"] if newborn else []) + sorted(p.tags)
            b.append(pat)
    for p in extra:
        pat = synth.patient(p, f"b{len(b)}", "urn:oid:2.16.840.1.113883.3.999.2")
        pat["case"] = ["new_person", *sorted(p.tags)]
        b.append(pat)
    rng.shuffle(b)
    return a, b
