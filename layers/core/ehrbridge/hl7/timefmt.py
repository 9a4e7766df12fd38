"""HL7 v2 TS/DTM/DT values -> FHIR date/dateTime/instant, never using the server's time zone.

Rules (V2-to-FHIR IG, datatype map DTM -> dateTime, and FHIR R4 ``dateTime``):
- A value with its own offset keeps it (``-0800`` -> ``-08:00``; ``+02`` is read as ``+02:00``).
- A value with a time but no offset gets the sender's configured IANA zone (the offset valid at
  that local date, so DST is right); a local time that does not exist or is ambiguous in that zone
  (DST gap/fold) is flagged so the preflight can report it.
- Precision stays what was sent: ``2020`` -> ``2020``, ``202005`` -> ``2020-05``, ``20200517`` -> ``2020-05-17``.
  FHIR requires seconds once a time is present, so ``HHMM`` gets ``:00`` (zero-padding adds no precision claim
  beyond what FHIR can express).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

# ASCII digits only (re.ASCII): \d would take any Unicode digit ('２０２３') and emit it into FHIR.
_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,9}))?\s*(?:([+-])(\d{2})(\d{2})?)?$",
                 re.ASCII)


@dataclass(frozen=True)
class Ts:
    fhir: str  # FHIR date or dateTime
    precision: str  # year | month | day | hour | minute | second | fraction
    instant: datetime | None  # aware, when a time is present
    zone_applied: bool  # the offset came from configuration, not from the message
    zone_gap: bool  # the local time does not exist or is ambiguous in the configured zone

    @property
    def date(self) -> str:
        return self.fhir[:10]


class TsError(ValueError):
    pass


@lru_cache(maxsize=64)
def zone(name: str) -> tzinfo:
    return UTC if name in ("UTC", "Etc/UTC") else ZoneInfo(name)


def _fmt_offset(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


@lru_cache(maxsize=4096)
def parse_ts(value: str, zone_name: str = "UTC") -> Ts:
    """Parse an HL7 TS/DTM/DT. Raises TsError when it is not one (the caller records the field)."""
    m = _TS.match(value.strip())
    if not m:
        raise TsError("not an HL7 date/time")
    year, month, day, hour, minute, second, frac, sign, oh, om = m.groups()
    if hour is None and sign is not None and month is not None:
        pass  # a date with an offset: the offset has no meaning for a date; ignored
    try:
        if month is None:
            return Ts(year, "year", None, False, False)
        if not 1 <= int(month) <= 12:
            raise TsError("month out of range")
        if day is None:
            return Ts(f"{year}-{month}", "month", None, False, False)
        d = date(int(year), int(month), int(day))
        if hour is None:
            return Ts(d.isoformat(), "day", None, False, False)
        local = datetime(d.year, d.month, d.day, int(hour), int(minute or 0), int(second or 0))
    except ValueError as err:
        raise TsError(str(err)) from None
    precision = "fraction" if frac else "second" if second else "minute" if minute else "hour"
    micro = int((frac or "0")[:6].ljust(6, "0"))
    local = local.replace(microsecond=micro)
    gap = False
    if sign is not None:
        offset = timedelta(hours=int(oh), minutes=int(om or 0))
        if offset > timedelta(hours=14) or int(om or 0) >= 60:
            raise TsError("offset out of range")
        if sign == "-":
            offset = -offset
        aware = local.replace(tzinfo=timezone(offset))
        applied = False
    else:
        tz = zone(zone_name)
        aware = local.replace(tzinfo=tz)
        applied = True
        # Round-trip through UTC: a wall time in a DST gap comes back different; a fold differs by fold.
        back = aware.astimezone(UTC).astimezone(tz)
        gap = back.replace(tzinfo=None) != local or aware.utcoffset() != aware.replace(fold=1).utcoffset()
        offset = aware.utcoffset() or timedelta(0)
    text = f"{local.year:04d}-{local:%m-%dT%H:%M:%S}"  # strftime's %Y gives '999' for year 999
    if frac:
        text += "." + frac
    return Ts(text + _fmt_offset(offset), precision, aware, applied, gap)


def to_instant(value: str) -> datetime | None:
    """A FHIR date/dateTime string -> aware datetime (None for partial dates). For comparisons."""
    if len(value) <= 10:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
