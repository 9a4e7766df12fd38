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

# ASCII digits only: ``\d`` also matches other scripts' digits ('２０２３'), which FHIR does not allow.
_TS = re.compile(r"^([0-9]{4})([0-9]{2})?([0-9]{2})?([0-9]{2})?([0-9]{2})?([0-9]{2})?(?:\.([0-9]{1,9}))?[ \t]*"
                 r"(?:([+-])([0-9]{2})([0-9]{2})?)?$")


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


def fmt_offset(delta: timedelta) -> str:
    """``+hh:mm`` (FHIR has no seconds in offsets; local mean time offsets lose theirs)."""
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
    if year == "0000":
        raise TsError("year 0000 is not a valid date")  # FHIR (and Python) dates start at year 1
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
    try:
        return _with_time(local, precision_of(frac, second, minute), frac, sign, oh, om, zone_name)
    except OverflowError:
        # Near 0001-01-01 or 9999-12-31 a zone shift leaves datetime's range.
        raise TsError("date/time out of range") from None


def precision_of(frac: str | None, second: str | None, minute: str | None) -> str:
    return "fraction" if frac else "second" if second else "minute" if minute else "hour"


def _with_time(local: datetime, precision: str, frac: str | None, sign: str | None, oh: str | None,
               om: str | None, zone_name: str) -> Ts:
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
    # Not strftime: '%Y' gives '999', not '0999', for years below 1000 on glibc.
    text = (f"{local.year:04d}-{local.month:02d}-{local.day:02d}T{local.hour:02d}:{local.minute:02d}:"
            f"{local.second:02d}")
    if frac:
        text += "." + frac
    return Ts(text + fmt_offset(offset), precision, aware, applied, gap)


def to_instant(value: str) -> datetime | None:
    """A FHIR date/dateTime string -> aware datetime (None for partial dates). For comparisons."""
    if len(value) <= 10:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
