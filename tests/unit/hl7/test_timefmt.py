"""HL7 TS -> FHIR: own offsets kept, sender zone otherwise (never the server's), precision kept."""

from __future__ import annotations

import pytest

from ehrbridge.hl7.timefmt import TsError, parse_ts


@pytest.mark.parametrize("value,zone,expected,precision", [
    ("2020", "UTC", "2020", "year"),
    ("202005", "UTC", "2020-05", "month"),
    ("20200517", "America/New_York", "2020-05-17", "day"),
    ("2020051710", "America/New_York", "2020-05-17T10:00:00-04:00", "hour"),
    ("202005171030", "America/New_York", "2020-05-17T10:30:00-04:00", "minute"),
    ("20200117103015", "America/New_York", "2020-01-17T10:30:15-05:00", "second"),
    ("20200117103015.1234", "Europe/Berlin", "2020-01-17T10:30:15.1234+01:00", "fraction"),
    ("20110103143428-0800", "Asia/Tokyo", "2011-01-03T14:34:28-08:00", "second"),
    ("201101031434+02", "UTC", "2011-01-03T14:34:00+02:00", "minute"),
    ("198808181126+0215", "UTC", "1988-08-18T11:26:00+02:15", "minute"),
])
def test_parse_ts(value: str, zone: str, expected: str, precision: str) -> None:
    ts = parse_ts(value, zone)
    assert ts.fhir == expected and ts.precision == precision
    assert ts.zone_applied == (len(value) > 8 and "+" not in value and "-" not in value)


def test_dst_gap_and_fold_are_flagged() -> None:
    assert parse_ts("20260308023000", "America/New_York").zone_gap  # spring forward: 02:30 does not exist
    assert parse_ts("20261101013000", "America/New_York").zone_gap  # fall back: 01:30 happens twice
    assert not parse_ts("20260308033000", "America/New_York").zone_gap


@pytest.mark.parametrize("value", ["2020-05-17", "20201317", "20200230", "20200101256000", "abc", "202001011200+2500"])
def test_invalid_values_raise(value: str) -> None:
    with pytest.raises(TsError):
        parse_ts(value, "UTC")
