"""Premiums by region, year and scheme: the schedule, billing periods, the beneficiary's
category and the slot a premium occupies. Pure: no I/O (``parse_schedule`` takes text).

- The schedule (``data/premiums.tsv``) maps (region, year, scheme, category) to the
  yearly premium (urban-rural resident) or the monthly contribution range (flexible
  employment). A region without rows uses its collecting bureau's, then its
  province's, then the national minimum (``NATIONAL``). Commercial health insurance
  has no schedule: any positive amount within the method limit.
- Billing periods follow the scheme: resident and commercial a year (``2027``),
  flexible employment a month or a quarter (``2027-03``, ``2027-Q1``); the year lies
  between ``years_back`` before the current year (补缴) and ``years_ahead`` after it.
- The category of a resident's premium follows from the beneficiary's age at the start
  of the period (the birth date is digits 7-14 of the ID number): 60 and over elderly
  (老年人), under 18 student_child (学生儿童), else working_age (劳动年龄内居民); a
  declared student under 60 pays as student_child.
- A premium of the social schemes occupies a slot: the person (keyed ID hash), the
  scheme, the collecting bureau and the months it covers. Two live payments never
  overlap in a slot (``store.premium_slot_holder``); commercial health has none (a
  person may hold several policies).
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Literal, get_args

from shared.errors import DomainError, ValidationFailed
from shared.events import Scheme
from shared.money import format_cny
from shared.regions import collecting_region, region_problem

NATIONAL = "national"
HEADER = ("region", "year", "scheme", "category", "amount_fen", "source")

Category = Literal["elderly", "student_child", "working_age"]
RowCategory = Literal["elderly", "student_child", "working_age", "all"]
DeclaredCategory = Literal["student"]
ScheduledScheme = Literal["urban_rural_resident", "flexible_employment"]

CATEGORIES: tuple[Category, ...] = get_args(Category)
SCHEDULED_SCHEMES: tuple[ScheduledScheme, ...] = get_args(ScheduledScheme)
CATEGORY_NAMES: dict[RowCategory, str] = {
    "elderly": "老年人",
    "student_child": "学生儿童",
    "working_age": "劳动年龄内居民",
    "all": "全体参保人",
}
ELDERLY_FROM_AGE = 60
ADULT_FROM_AGE = 18


class ScheduleError(ValueError):
    """The schedule file cannot be used; the message names the line and what to fix."""


@dataclass(frozen=True)
class PremiumRow:
    """One row of the schedule. A resident premium is exact (``min_fen == max_fen``, per
    year); a flexible-employment contribution is a range per month."""

    region: str  # a GB/T 2260 code, or NATIONAL
    year: int
    scheme: ScheduledScheme
    category: RowCategory
    min_fen: int
    max_fen: int
    source: str
    line: int = 0

    @property
    def national_fallback(self) -> bool:
        return self.region == NATIONAL

    @property
    def per(self) -> Literal["year", "month"]:
        return "year" if self.scheme == "urban_rural_resident" else "month"

    def covers(self, category: Category) -> bool:
        return self.category in ("all", category)


@dataclass(frozen=True)
class PremiumSchedule:
    rows: tuple[PremiumRow, ...]

    def rows_for(self, region: str, year: int, scheme: ScheduledScheme) -> tuple[PremiumRow, ...]:
        """The rows that apply to ``region``: its own, else its collecting bureau's, else
        its province's, else the national ones (empty: none for that year and scheme)."""
        for level in regions_to_try(region):
            found = tuple(
                r for r in self.rows if (r.region, r.year, r.scheme) == (level, year, scheme)
            )
            if found:
                return found
        return ()


def regions_to_try(region: str) -> list[str]:
    """``region``, its collecting bureau's region, its province, then NATIONAL."""
    levels = [region, collecting_region(region), region[:2] + "0000", NATIONAL]
    return list(dict.fromkeys(levels))


# ---------------------------------------------------------------------------
# Reading the schedule
# ---------------------------------------------------------------------------


def parse_schedule(text: str, *, name: str = "premiums.tsv") -> PremiumSchedule:
    """The schedule in ``text`` (see ``data/premiums.tsv``); raises ScheduleError naming
    the first problem's line."""
    rows: list[PremiumRow] = []
    seen: dict[tuple[str, int, str, str], int] = {}
    header_seen = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = tuple(line.split("\t"))
        if not header_seen:
            if fields != HEADER:
                raise ScheduleError(
                    f"{name} line {number}: the first row names the columns, tab-separated:"
                    f" {' '.join(HEADER)}"
                )
            header_seen = True
            continue
        row = _parse_row(fields, number, name)
        key = (row.region, row.year, row.scheme, row.category)
        if key in seen:
            raise ScheduleError(
                f"{name} line {number}: duplicate of line {seen[key]}"
                f" ({' '.join(map(str, key))}); keep one row per region, year, scheme and"
                " category"
            )
        seen[key] = number
        rows.append(row)
    if not header_seen:
        raise ScheduleError(f"{name}: no rows; the first row names the columns")
    _check_complete(rows, name)
    return PremiumSchedule(tuple(rows))


def _parse_row(fields: Sequence[str], number: int, name: str) -> PremiumRow:
    where = f"{name} line {number}"
    if len(fields) != len(HEADER):
        raise ScheduleError(
            f"{where}: {len(fields)} columns, expected {len(HEADER)} separated by tabs:"
            f" {' '.join(HEADER)}"
        )
    region, year_text, scheme, category, amount, source = (f.strip() for f in fields)
    if region != NATIONAL and region_problem(region) is not None:
        raise ScheduleError(f"{where}: region {region!r}: {region_problem(region)}, or national")
    if not (year_text.isascii() and year_text.isdigit() and len(year_text) == 4):
        raise ScheduleError(f"{where}: year {year_text!r} is not a 4-digit year")
    if scheme not in SCHEDULED_SCHEMES:
        raise ScheduleError(
            f"{where}: scheme {scheme!r}: a row is for urban_rural_resident or"
            " flexible_employment (commercial_health has no schedule)"
        )
    if category not in CATEGORY_NAMES:
        raise ScheduleError(f"{where}: category {category!r}: one of {', '.join(CATEGORY_NAMES)}")
    if scheme == "flexible_employment" and category != "all":
        raise ScheduleError(f"{where}: a flexible_employment row is for category all")
    if region == NATIONAL and scheme != "urban_rural_resident":
        raise ScheduleError(f"{where}: the national minimum is for urban_rural_resident only")
    low, high = _amounts(amount, ranged=scheme == "flexible_employment", where=where)
    if not source:
        raise ScheduleError(f"{where}: every row cites its source")
    return PremiumRow(
        region=region,
        year=int(year_text),
        scheme=scheme,
        category=category,
        min_fen=low,
        max_fen=high,
        source=source,
        line=number,
    )


def _amounts(text: str, *, ranged: bool, where: str) -> tuple[int, int]:
    parts = text.split("..") if ranged else [text]
    if len(parts) != (2 if ranged else 1) or not all(
        p.isascii() and p.isdigit() and len(p) <= 12 for p in parts
    ):
        form = "MIN..MAX fen a month, e.g. 75460..377310" if ranged else "fen, e.g. 79500"
        raise ScheduleError(f"{where}: amount_fen {text!r} is not {form}")
    low, high = int(parts[0]), int(parts[-1])
    if low <= 0 or high < low:
        raise ScheduleError(f"{where}: amount_fen {text!r}: positive, and MIN <= MAX")
    return low, high


def _check_complete(rows: Iterable[PremiumRow], name: str) -> None:
    """Each region-year-scheme has "all" alone, or every category."""
    groups: dict[tuple[str, int, str], list[PremiumRow]] = defaultdict(list)
    for row in rows:
        groups[(row.region, row.year, row.scheme)].append(row)
    for (region, year, scheme), group in groups.items():
        categories = {r.category for r in group}
        if categories != {"all"} and categories != set(CATEGORIES):
            missing = sorted(set(CATEGORIES) - categories) if "all" not in categories else []
            fix = f"add {', '.join(missing)}" if missing else "use all alone or each category"
            raise ScheduleError(
                f"{name} line {group[0].line}: {region} {year} {scheme} has categories"
                f" {', '.join(sorted(categories))}; {fix}"
            )


# ---------------------------------------------------------------------------
# Billing periods
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PeriodWindow:
    """The years a premium may be for, around the current year (Asia/Shanghai)."""

    years_back: int = 5  # back-payment (补缴)
    years_ahead: int = 1

    def years(self, today: date) -> range:
        return range(today.year - self.years_back, today.year + self.years_ahead + 1)


@dataclass(frozen=True)
class BillingPeriod:
    text: str
    year: int
    first_month: int  # 1-12
    months: int  # 12 (a year), 3 (a quarter) or 1

    @property
    def start(self) -> date:
        return date(self.year, self.first_month, 1)

    @property
    def end(self) -> date:
        """The period's last day."""
        last_month = self.first_month + self.months - 1
        return date(self.year, last_month, calendar.monthrange(self.year, last_month)[1])

    @property
    def first_index(self) -> int:
        """Months since year 0: the slot's first month."""
        return self.year * 12 + self.first_month - 1

    @property
    def last_index(self) -> int:
        return self.first_index + self.months - 1


def _period_shape(text: str) -> BillingPeriod | None:
    if len(text) == 4 and text.isascii() and text.isdigit():
        return BillingPeriod(text, int(text), 1, 12)
    year, _, rest = text.partition("-")
    if not (len(year) == 4 and year.isascii() and year.isdigit()):
        return None
    if len(rest) == 2 and rest.isascii() and rest.isdigit() and 1 <= int(rest) <= 12:
        return BillingPeriod(text, int(year), int(rest), 1)
    if rest in ("Q1", "Q2", "Q3", "Q4"):
        return BillingPeriod(text, int(year), 3 * int(rest[1]) - 2, 3)
    return None


def billing_period(scheme: Scheme, text: str, today: date, window: PeriodWindow) -> BillingPeriod:
    """The period a premium of ``scheme`` pays for; 400 ``invalid_period`` otherwise."""
    period = _period_shape(text)
    monthly = scheme == "flexible_employment"
    years = window.years(today)
    example = f"'{years[-1]}-03' or '{years[-1]}-Q1'" if monthly else f"'{years[-1]}'"
    if period is None or (period.months == 12) == monthly:
        what = "a month or a quarter" if monthly else "a year"
        form = "YYYY-MM or YYYY-Qn" if monthly else "YYYY"
        raise _invalid_period(
            f"a {scheme} premium is paid for {what}: send purpose.period as {form}, e.g. {example}"
        )
    if period.year not in years:
        raise _invalid_period(
            f"a premium is for a year from {years[0]} (back-payment, 补缴) to {years[-1]};"
            f" {text} is outside that; send e.g. {example}"
        )
    return period


def _invalid_period(message: str) -> ValidationFailed:
    return ValidationFailed(message, code="invalid_period", param="purpose.period")


# ---------------------------------------------------------------------------
# Categories and the expected amount
# ---------------------------------------------------------------------------


def birth_date(id_number: str) -> date:
    """The birth date inside a (validated) 18-character ID number: digits 7-14."""
    return date(int(id_number[6:10]), int(id_number[10:12]), int(id_number[12:14]))


def age_on(born: date, day: date) -> int:
    """Full years from ``born`` to ``day`` (negative before birth)."""
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def category_of(born: date, period_start: date, declared: DeclaredCategory | None) -> Category:
    age = age_on(born, period_start)
    if age >= ELDERLY_FROM_AGE:
        return "elderly"
    if age < ADULT_FROM_AGE or declared == "student":
        return "student_child"
    return "working_age"


@dataclass(frozen=True)
class PremiumRequest:
    """What the schedule check needs of a premium payment."""

    scheme: Scheme
    region: str
    period: str
    amount: int
    id_number: str  # validated
    declared: DeclaredCategory | None = None


@dataclass(frozen=True)
class CheckedPremium:
    period: BillingPeriod
    category: Category | None  # resident premiums only
    row: PremiumRow | None  # None: commercial health, no schedule


def check_premium(
    schedule: PremiumSchedule,
    request: PremiumRequest,
    today: date,
    window: PeriodWindow,
    *,
    enforce_amount: bool = True,
) -> CheckedPremium:
    """The premium's period, category and schedule row; raises 400 ``invalid_period``,
    and, when ``enforce_amount``, 422 ``premium_not_scheduled`` or 422
    ``premium_amount_mismatch`` (without it the row is not looked up: None)."""
    period = billing_period(request.scheme, request.period, today, window)
    born = birth_date(request.id_number)
    if born > period.end:
        raise _invalid_period(
            f"the beneficiary was born on {born.isoformat()}, after the period {period.text};"
            " pay for a period from the birth on"
        )
    if request.scheme == "commercial_health":
        return CheckedPremium(period, None, None)
    category = category_of(born, period.start, request.declared)
    if not enforce_amount:
        return CheckedPremium(
            period, category if request.scheme == "urban_rural_resident" else None, None
        )
    row = _row_for(schedule, request, period.year, category)
    _check_amount(row, request, period, category)
    return CheckedPremium(
        period, category if request.scheme == "urban_rural_resident" else None, row
    )


def _row_for(
    schedule: PremiumSchedule, request: PremiumRequest, year: int, category: Category
) -> PremiumRow:
    scheme: ScheduledScheme = (
        "urban_rural_resident"
        if request.scheme == "urban_rural_resident"
        else "flexible_employment"
    )
    for row in schedule.rows_for(request.region, year, scheme):
        if row.covers(category):
            return row
    raise DomainError(
        f"no {scheme} premium is scheduled for region {request.region} in {year}; see"
        f" GET /v1/premiums?region={request.region}&year={year}&scheme={scheme}",
        code="premium_not_scheduled",
        param="purpose.period" if scheme == "urban_rural_resident" else "purpose.region",
        details={"region": request.region, "year": year, "scheme": scheme},
    )


def _check_amount(
    row: PremiumRow, request: PremiumRequest, period: BillingPeriod, category: Category
) -> None:
    months = 1 if row.per == "year" else period.months
    low, high = row.min_fen * months, row.max_fen * months
    if low <= request.amount <= high:
        return
    where = "national minimum" if row.national_fallback else f"region {row.region}"
    details: dict[str, object] = {
        "amount": request.amount,
        "national_fallback": row.national_fallback,
    }
    if low == high:
        message = (
            f"the {request.scheme} premium for {period.text} ({where}) is {format_cny(low)} CNY"
            f" for a {category.replace('_', ' ')} beneficiary ({CATEGORY_NAMES[category]}),"
            f" not {format_cny(request.amount)} CNY; send amount {low}"
        )
        details.update(expected=low, category=category)
    else:
        message = (
            f"the {request.scheme} contribution for {period.text} ({where}) is"
            f" {format_cny(low)} to {format_cny(high)} CNY, not {format_cny(request.amount)} CNY;"
            f" send an amount from {low} to {high}"
        )
        details.update(expected_min=low, expected_max=high)
    raise DomainError(message, code="premium_amount_mismatch", param="amount", details=details)


# ---------------------------------------------------------------------------
# The slot a premium occupies
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PremiumSlot:
    """The person, scheme and bureau (``key``) and the months a premium covers. A live
    payment (not declined nor failed) holds it; another overlapping one is ``already_paid``."""

    key: str
    first_month: int
    last_month: int


def premium_slot(
    scheme: Scheme, region: str, id_number_hash: str, period: BillingPeriod
) -> PremiumSlot | None:
    """The slot of a premium; None for commercial health (several policies are allowed)."""
    if scheme == "commercial_health":
        return None
    key = f"{scheme}:{collecting_region(region)}:{id_number_hash}"
    return PremiumSlot(key, period.first_index, period.last_index)
