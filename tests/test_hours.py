"""Opening hours: the OSM subset stations use, and its errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from gis.errors import InvalidInput
from gis.hours import parse_opening_hours

# 2024-05-06 is a Monday; the week runs to Sunday 2024-05-12.
MON, TUE, WED, THU, FRI, SAT, SUN = (datetime(2024, 5, 6 + i) for i in range(7))


def at(day: datetime, hhmm: str) -> datetime:
    hours, minutes = map(int, hhmm.split(":"))
    return day + timedelta(hours=hours, minutes=minutes)


def test_weekday_hours_open_inside_and_closed_outside():
    hours = parse_opening_hours("Mo-Fr 08:30-17:30")
    assert hours.is_open(at(MON, "08:30"))
    assert hours.is_open(at(WED, "12:00"))
    assert hours.is_open(at(FRI, "17:29"))
    assert not hours.is_open(at(FRI, "17:30"))  # the closing minute is closed
    assert not hours.is_open(at(TUE, "08:29"))


def test_weekend_days_not_named_are_closed():
    hours = parse_opening_hours("Mo-Fr 09:00-17:00; Sa 10:00-12:00")
    assert hours.is_open(at(SAT, "11:00"))
    assert not hours.is_open(at(SAT, "13:00"))
    assert not hours.is_open(at(SUN, "11:00"))


def test_day_lists_wrapping_ranges_and_split_shifts():
    hours = parse_opening_hours("Mo,We,Fr 08:00-12:00,14:00-18:00")
    assert hours.is_open(at(WED, "09:00")) and hours.is_open(at(WED, "15:00"))
    assert not hours.is_open(at(WED, "13:00"))
    assert not hours.is_open(at(TUE, "09:00"))
    wrap = parse_opening_hours("Sa-Mo 10:00-16:00")
    assert all(wrap.is_open(at(d, "11:00")) for d in (SAT, SUN, MON))
    assert not wrap.is_open(at(TUE, "11:00"))


def test_span_across_midnight_belongs_to_the_next_morning():
    hours = parse_opening_hours("Th 18:00-02:00")
    assert hours.is_open(at(THU, "23:30"))
    assert hours.is_open(at(FRI, "01:00"))
    assert not hours.is_open(at(FRI, "02:00"))
    assert not hours.is_open(at(THU, "01:00"))  # Wednesday night was not open
    # The spill-over belongs to Thursday, so closing Friday does not cut it.
    assert parse_opening_hours("Th 18:00-02:00; Fr off").is_open(at(FRI, "01:00"))


def test_around_the_clock_and_midnight_end():
    always = parse_opening_hours("24/7")
    assert always.always_open
    assert all(always.is_open(at(d, t)) for d in (MON, SUN) for t in ("00:00", "23:59"))
    late = parse_opening_hours("Mo-Su 20:00-24:00")
    assert late.is_open(at(MON, "23:59")) and not late.is_open(at(TUE, "00:00"))


def test_off_and_later_rules_override_the_days_they_name():
    hours = parse_opening_hours("Mo-Su 08:00-20:00; Sa 10:00-16:00; Su off")
    assert hours.is_open(at(MON, "08:00"))
    assert not hours.is_open(at(SAT, "09:00")) and hours.is_open(at(SAT, "15:00"))
    assert not hours.is_open(at(SUN, "12:00"))
    assert not parse_opening_hours("24/7; Mo-Fr off").is_open(at(TUE, "12:00"))


def test_aware_datetimes_are_read_in_shanghai_time():
    hours = parse_opening_hours("Mo-Fr 09:00-17:00")
    # 02:00 UTC on Monday is 10:00 in Shanghai; 10:00 UTC is 18:00 there.
    assert hours.is_open(datetime(2024, 5, 6, 2, 0, tzinfo=UTC))
    assert not hours.is_open(datetime(2024, 5, 6, 10, 0, tzinfo=UTC))
    tokyo = timezone(timedelta(hours=9))
    assert hours.is_open(datetime(2024, 5, 6, 17, 30, tzinfo=tokyo))  # 16:30 in Shanghai


@pytest.mark.parametrize(
    ("text", "position", "expected"),
    [
        ("Mo-Fr 8-17", 7, "a time HH:MM"),
        ("Xx 08:00-09:00", 1, "a day"),
        ("Mo-Fr 08:00-25:00", 13, "00:00 to 24:00"),
        ("Mo-Fr 24:00-17:00", 7, "00:00 to 23:59"),
        ("Mo 08:60-09:00", 4, "00:00 to 23:59"),
        ("Mo-Fr 08:00-17:00 Sa 09:00-12:00", 19, "';' between rules"),
        ("Mo-Fr", 6, "'off'"),
        ("Mo-Fr 09:00 17:00", 13, "'-'"),
        ("Mo-Fr 09:00-09:00", 7, "not empty"),
        ("Mo-Fr 09:00-17:00;", 19, "days"),
    ],
)
def test_bad_strings_name_the_position_and_what_was_expected(text, position, expected):
    with pytest.raises(InvalidInput) as caught:
        parse_opening_hours(text)
    err = caught.value
    assert err.detail["position"] == position
    assert expected in err.detail["expected"]
    assert f"at character {position} expected" in err.message and repr(text) in err.message


def test_empty_hours_are_refused():
    with pytest.raises(InvalidInput, match="empty"):
        parse_opening_hours("  ")
