"""Opening hours: a small, documented subset of OpenStreetMap's `opening_hours` format.

Grammar (spaces are allowed between any two tokens)::

    hours    := rule (";" rule)*
    rule     := "24/7"
              | [days] spans
              | days "off"                # "closed" is read as "off"
    days     := day_item ("," day_item)*
    day_item := DAY | DAY "-" DAY          # a range may wrap: Sa-Mo is Sa, Su, Mo
    DAY      := "Mo" | "Tu" | "We" | "Th" | "Fr" | "Sa" | "Su"
    spans    := span ("," span)*
    span     := TIME "-" TIME
    TIME     := H:MM | HH:MM               # 00:00 .. 23:59; 24:00 only as an end

Examples: ``Mo-Fr 08:30-17:30``, ``Mo-Fr 08:00-12:00,13:30-17:30; Sa 09:00-12:00``,
``24/7``, ``Mo-Su 09:00-21:00; Su off``, ``Th-Sa 18:00-02:00``.

Meaning, as in OSM:

- A rule without days applies to every day; ``24/7`` opens every day all day.
- A later rule replaces what earlier rules said about the days it names
  (``Mo-Su 08:00-20:00; Sa 10:00-16:00`` keeps Saturday to 10-16).
- A span whose end is not after its start crosses midnight: ``Th 18:00-02:00``
  is open from Thursday 18:00 until Friday 02:00. That spill-over belongs to the
  day the span starts on, so ``Fr off`` does not close Friday 01:00 after a
  Thursday evening span.
- Days the rules never name are closed.

Times are local: a naive datetime is read as Asia/Shanghai wall-clock time, an
aware one is converted to Asia/Shanghai first. Not supported: public holidays
(``PH``), months, week numbers, comments, ``open``/``unknown`` keywords and
extended hours past 24:00 (write ``18:00-02:00`` instead of ``18:00-26:00``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from gis.errors import InvalidInput

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
DAYS = ("Mo", "Tu", "We", "Th", "Fr", "Sa", "Su")
MINUTES_PER_DAY = 24 * 60

# One day's spans: (start, end) in minutes after that day's midnight; end may
# exceed 1440 when a span runs into the next day.
Spans = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class OpeningHours:
    """Parsed opening hours: for each weekday (Monday = 0) the spans starting that day."""

    text: str
    week: tuple[Spans, ...]

    def is_open(self, dt: datetime) -> bool:
        """Whether the place is open at `dt` (naive = Asia/Shanghai local time)."""
        local = dt.astimezone(LOCAL_TZ) if dt.tzinfo is not None else dt
        day = local.weekday()
        minute = local.hour * 60 + local.minute + local.second / 60
        if any(start <= minute < end for start, end in self.week[day]):
            return True
        # Spans that started yesterday and run past midnight.
        yesterday = self.week[(day - 1) % 7]
        return any(start <= minute + MINUTES_PER_DAY < end for start, end in yesterday)

    @property
    def always_open(self) -> bool:
        return all(spans == ((0, MINUTES_PER_DAY),) for spans in self.week)

    def __str__(self) -> str:
        return self.text


def parse_opening_hours(text: str) -> OpeningHours:
    """Parse opening hours; raises InvalidInput naming the position and what was expected."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("opening hours are empty", field="opening_hours", position=1)
    return _Parser(text).parse()


class _Parser:
    """Recursive descent over the grammar in the module docstring."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    # ------------------------------------------------------------ scanning

    def _skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _at(self, token: str) -> bool:
        self._skip_spaces()
        return self.text.startswith(token, self.pos)

    def _accept(self, token: str) -> bool:
        if self._at(token):
            self.pos += len(token)
            return True
        return False

    def _fail(self, expected: str, at: int | None = None):
        at = self.pos if at is None else at
        found = repr(self.text[at : at + 8]) if at < len(self.text) else "the end"
        raise InvalidInput(
            f"opening hours {self.text!r}: at character {at + 1} expected {expected}, "
            f"found {found}",
            field="opening_hours",
            position=at + 1,
            expected=expected,
        )

    # ------------------------------------------------------------- grammar

    def parse(self) -> OpeningHours:
        week: list[Spans] = [() for _ in DAYS]
        while True:
            days, spans = self._rule()
            for day in days:
                week[day] = spans
            if self._accept(";"):
                continue
            self._skip_spaces()
            if self.pos < len(self.text):
                self._fail("';' between rules")
            break
        return OpeningHours(self.text, tuple(week))

    def _rule(self) -> tuple[list[int], Spans]:
        if self._accept("24/7"):
            return list(range(7)), ((0, MINUTES_PER_DAY),)
        self._skip_spaces()
        days = list(range(7))
        named_days = self.pos < len(self.text) and self.text[self.pos].isalpha()
        if named_days:
            days = self._days()
        if named_days and (self._accept("off") or self._accept("closed")):
            return days, ()
        self._skip_spaces()
        if self.pos >= len(self.text) or not self.text[self.pos].isdigit():
            if named_days:
                self._fail("a time span like 08:00-17:00 or 'off'")
            self._fail("days (Mo-Fr), '24/7' or a time span like 08:00-17:00")
        spans = [self._span()]
        while self._accept(","):
            spans.append(self._span())
        return days, tuple(sorted(spans))

    def _days(self) -> list[int]:
        days: list[int] = []
        while True:
            first = self._day()
            if self._accept("-"):
                last = self._day()
                span = (last - first) % 7
                days.extend((first + i) % 7 for i in range(span + 1))
            else:
                days.append(first)
            # A comma after a day continues the day list only if a day follows;
            # otherwise the caller reports what it expected.
            self._skip_spaces()
            if self.text.startswith(",", self.pos):
                self.pos += 1
                continue
            return sorted(set(days))

    def _day(self) -> int:
        self._skip_spaces()
        word = self.text[self.pos : self.pos + 2]
        if word in DAYS:
            self.pos += 2
            return DAYS.index(word)
        self._fail("a day (Mo, Tu, We, Th, Fr, Sa, Su)")

    def _span(self) -> tuple[int, int]:
        self._skip_spaces()
        start_at = self.pos
        start = self._time(is_end=False)
        if not self._accept("-"):
            self._fail("'-' between the opening and closing time")
        end = self._time(is_end=True)
        if end == start:
            self._fail("a span that is not empty (opening and closing time are equal)", start_at)
        if end < start:
            end += MINUTES_PER_DAY  # runs past midnight into the next day
        return start, end

    def _time(self, *, is_end: bool) -> int:
        self._skip_spaces()
        at = self.pos
        hours = ""
        while self.pos < len(self.text) and self.text[self.pos].isdigit() and len(hours) < 2:
            hours += self.text[self.pos]
            self.pos += 1
        minutes = self.text[self.pos + 1 : self.pos + 3]
        if (
            not hours
            or self.text[self.pos : self.pos + 1] != ":"
            or len(minutes) != 2
            or not minutes.isdigit()
        ):
            self.pos = at
            self._fail("a time HH:MM")
        self.pos += 3
        value = int(hours) * 60 + int(minutes)
        limit = MINUTES_PER_DAY if is_end else MINUTES_PER_DAY - 1
        if int(minutes) > 59 or value > limit:
            self._fail("a time from 00:00 to " + ("24:00" if is_end else "23:59"), at)
        return value
