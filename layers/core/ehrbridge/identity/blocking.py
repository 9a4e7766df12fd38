"""Blocking keys: which stored records are worth scoring against a new one.

Each key is an index bucket (DynamoDB item / dict entry) listing the source records that carry it.
Keys are phonetic or exact so that the typical corruption of one field still leaves other keys
shared; the union over keys is the candidate set. Placeholders never make keys (they are None).
"""

from __future__ import annotations

from ehrbridge.identity.normalize import Person

# A bucket that reaches this size stops growing and is skipped at query time: a value that common
# (a placeholder that slipped through, a huge family at one address) does not discriminate.
MAX_BUCKET = 200
# Candidates scored per record, best-ranked first (one BatchGetItem holds 100 keys, so the candidate
# read is one round trip). Ranked by the keys shared, weighted by how personal each key is: on FEBRL4
# and the household sets the true record, when blocking finds it at all, always ranks in the top 10.
MAX_CANDIDATES = 30
KEY_WEIGHTS = {"ssn": 5, "id": 5, "em": 4, "ph": 3, "dob": 2, "nm": 2, "ad": 2, "hs": 2}


def key_weight(key: str) -> int:
    return KEY_WEIGHTS.get(key.partition(":")[0], 1)


def record_keys(p: Person) -> list[str]:
    keys: list[str] = []
    if p.ssn:
        keys.append("ssn:" + p.ssn)
    for system, value in sorted(p.identifiers.items()):
        keys.append(f"id:{system}|{value}")
    if p.dob and len(p.dob) == 8:
        keys.append("dob:" + p.dob)
    if p.given_sdx and p.family_sdx:
        # Order-free, so given/family recorded the other way round still meet.
        keys.append("nm:" + "|".join(sorted((p.given_sdx, p.family_sdx))))
    if p.dob:
        year = p.dob[:4]
        if p.family_sdx:
            keys.append(f"fy:{p.family_sdx}|{year}")
        if p.given_sdx:
            keys.append(f"gy:{p.given_sdx}|{year}")
    if p.house and p.street:
        # The home without the postcode (missing, a placeholder, or mistyped on one side): the state keeps
        # "12 MAIN ST" of different towns apart. A record with no birth date and a nickname (PAT / PATRICK)
        # shares no other key with its pair.
        keys.append(f"hs:{p.state or ''}|{p.house}|{p.street}")
    if p.postcode:
        if p.house:
            keys.append(f"ad:{p.postcode}|{p.house}")
        if p.street:
            keys.append(f"sp:{p.postcode}|{p.street}")
        if p.family_sdx:
            keys.append(f"fp:{p.family_sdx}|{p.postcode}")
        if p.given_sdx:
            keys.append(f"gp:{p.given_sdx}|{p.postcode}")
    if p.city:
        # Postcodes get mistyped too: the city carries the same area evidence.
        if p.street:
            keys.append(f"sc:{p.city}|{p.street}")
        if p.family_sdx:
            keys.append(f"fc:{p.family_sdx}|{p.city}")
    if p.phone:
        keys.append("ph:" + p.phone[-10:])
    if p.email:
        keys.append("em:" + p.email)
    return keys


def query_keys(p: Person) -> list[str]:
    keys = record_keys(p)
    dob = p.dob
    if dob and len(dob) == 8 and dob[4:6] != dob[6:8] and int(dob[6:8]) <= 12:
        keys.append("dob:" + dob[:4] + dob[6:8] + dob[4:6])  # day and month swapped at registration
    return keys
