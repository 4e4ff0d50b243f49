"""Premiums by region, year and scheme: the shipped schedule and its validation, the
billing periods of each scheme, the beneficiary's category and the expected amount."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.payment import premium_domain as pd
from services.payment.config import PREMIUM_SCHEDULE_FILE, PaymentSettings
from services.payment.intake import fingerprinted
from services.payment.schemas import PaymentCreate
from services.payment.validation import id_check_char
from shared.errors import DomainError, ValidationFailed
from shared.settings import ConfigurationError

TODAY = date(2026, 11, 26)
WINDOW = pd.PeriodWindow(years_back=5, years_ahead=1)
SCHEDULE = pd.parse_schedule(PREMIUM_SCHEDULE_FILE.read_text(encoding="utf-8"))
HEADER = "\t".join(pd.HEADER)


def id_number(born: str, region: str = "110105") -> str:
    first17 = f"{region}{born.replace('-', '')}123"
    return first17 + id_check_char(first17)


def request(
    amount: int,
    *,
    born: str = "1990-05-01",
    scheme: str = "urban_rural_resident",
    region: str = "110000",
    period: str = "2027",
    declared: pd.DeclaredCategory | None = None,
) -> pd.PremiumRequest:
    return pd.PremiumRequest(
        scheme=scheme,  # type: ignore[arg-type]
        region=region,
        period=period,
        amount=amount,
        id_number=id_number(born),
        declared=declared,
    )


def check(req: pd.PremiumRequest) -> pd.CheckedPremium:
    return pd.check_premium(SCHEDULE, req, TODAY, WINDOW)


# --- the shipped schedule -----------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "year", "category", "fen", "national"),
    [
        ("110000", 2026, "elderly", 46000, False),
        ("110000", 2026, "student_child", 43500, False),
        ("110000", 2026, "working_age", 79500, False),
        ("110000", 2027, "working_age", 79500, False),  # carried forward, says its source
        ("110105", 2027, "elderly", 46000, False),  # a Beijing district: Beijing's rows
        ("310000", 2026, "working_age", 40000, True),  # no resident rows: national minimum
        ("440305", 2024, "elderly", 40000, True),
        ("440305", 2025, "student_child", 40000, True),
        ("650100", 2027, "student_child", 40000, True),
    ],
)
def test_shipped_schedule_answers(
    region: str, year: int, category: pd.Category, fen: int, national: bool
) -> None:
    rows = SCHEDULE.rows_for(region, year, "urban_rural_resident")
    [row] = [r for r in rows if r.covers(category)]
    assert (row.min_fen, row.max_fen, row.national_fallback) == (fen, fen, national)
    assert row.source


def test_every_shipped_row_cites_a_source_and_2027_says_it_is_carried_forward() -> None:
    assert all(row.source for row in SCHEDULE.rows)
    assert all("carried forward" in r.source for r in SCHEDULE.rows if r.year == 2027)


def test_years_without_rows_have_no_schedule() -> None:
    assert SCHEDULE.rows_for("110000", 2023, "urban_rural_resident") == ()
    assert SCHEDULE.rows_for("110000", 2027, "flexible_employment") == ()  # Beijing: none


def test_shanghai_flexible_employment_is_a_monthly_range() -> None:
    [row] = SCHEDULE.rows_for("310115", 2026, "flexible_employment")
    assert (row.min_fen, row.max_fen, row.per) == (75460, 377310, "month")


def test_settings_load_the_schedule_and_refuse_a_bad_one(tmp_path: Path) -> None:
    assert PaymentSettings(environment="development").premium_schedule() == SCHEDULE
    bad = tmp_path / "premiums.tsv"
    bad.write_text(
        f"{HEADER}\nnational\t2027\turban_rural_resident\tall\t40000\tx\n"
        "national\t2027\turban_rural_resident\tall\t41000\ty\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigurationError) as refused:
        PaymentSettings.load(environment="development", premium_schedule_file=bad)
    message = str(refused.value)
    assert "PAYMENT_PREMIUM_SCHEDULE_FILE" in message
    assert "line 3: duplicate of line 2" in message
    with pytest.raises(ConfigurationError, match="cannot read"):
        PaymentSettings.load(environment="development", premium_schedule_file=tmp_path / "no")


# --- validation of a schedule file ----------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        ("", "no rows"),
        ("110000\t2027\turban_rural_resident\tall\t40000\n", "5 columns, expected 6"),
        ("110000 2027 urban_rural_resident all 40000 src\n", "1 columns"),
        ("999999\t2027\turban_rural_resident\tall\t40000\tsrc\n", "region '999999'"),
        ("110000\t27\turban_rural_resident\tall\t40000\tsrc\n", "4-digit year"),
        ("110000\t2027\tcommercial_health\tall\t40000\tsrc\n", "no schedule"),
        ("110000\t2027\turban_rural_resident\tbaby\t40000\tsrc\n", "category 'baby'"),
        ("110000\t2027\turban_rural_resident\tall\t400.00\tsrc\n", "fen, e.g. 79500"),
        ("110000\t2027\turban_rural_resident\tall\t0\tsrc\n", "positive"),
        ("110000\t2027\turban_rural_resident\tall\t-5\tsrc\n", "is not fen"),
        ("110000\t2027\turban_rural_resident\tall\t40000\t \n", "cites its source"),
        ("310000\t2027\tflexible_employment\tall\t75460\tsrc\n", "MIN..MAX"),
        ("310000\t2027\tflexible_employment\tall\t9..8\tsrc\n", "MIN <= MAX"),
        ("310000\t2027\tflexible_employment\telderly\t1..8\tsrc\n", "category all"),
        ("national\t2027\tflexible_employment\tall\t1..8\tsrc\n", "urban_rural_resident only"),
        (
            "110000\t2027\turban_rural_resident\telderly\t46000\tsrc\n"
            "110000\t2027\turban_rural_resident\tworking_age\t79500\tsrc\n",
            "add student_child",
        ),
        (
            "110000\t2027\turban_rural_resident\tall\t46000\tsrc\n"
            "110000\t2027\turban_rural_resident\telderly\t46000\tsrc\n",
            "use all alone",
        ),
        (
            "110000\t2027\turban_rural_resident\tall\t46000\tsrc\n"
            "110000\t2027\turban_rural_resident\tall\t46000\tsrc\n",
            "line 4: duplicate of line 3",
        ),
    ],
)
def test_a_bad_schedule_is_refused_naming_its_line(rows: str, problem: str) -> None:
    text = f"# a comment\n{HEADER}\n{rows}" if rows else "# only comments\n"
    with pytest.raises(pd.ScheduleError) as refused:
        pd.parse_schedule(text)
    assert problem in str(refused.value)


def test_the_first_row_names_the_columns() -> None:
    with pytest.raises(pd.ScheduleError, match="line 2: the first row names the columns"):
        pd.parse_schedule("# premiums\nregion\tyear\n")


def test_a_region_uses_its_own_then_its_bureau_then_province_then_national() -> None:
    schedule = pd.parse_schedule(
        f"{HEADER}\n"
        "national\t2027\turban_rural_resident\tall\t40000\tn\n"
        "440000\t2027\turban_rural_resident\tall\t41000\tprovince\n"
        "440300\t2027\turban_rural_resident\tall\t42000\tcity\n"
    )

    def fen(region: str) -> tuple[int, str]:
        [row] = schedule.rows_for(region, 2027, "urban_rural_resident")
        return row.min_fen, row.region

    assert fen("440305") == (42000, "440300")  # a Shenzhen district: Shenzhen's
    assert fen("440106") == (41000, "440000")  # a Guangzhou district: Guangdong's
    assert fen("310000") == (40000, "national")


# --- billing periods --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "period", "months"),
    [
        ("urban_rural_resident", "2027", 12),
        ("urban_rural_resident", "2021", 12),  # back-payment, five years back
        ("commercial_health", "2026", 12),
        ("flexible_employment", "2027-03", 1),
        ("flexible_employment", "2027-Q1", 3),
        ("flexible_employment", "2026-12", 1),
    ],
)
def test_periods_that_fit_their_scheme(scheme: str, period: str, months: int) -> None:
    found = pd.billing_period(scheme, period, TODAY, WINDOW)  # type: ignore[arg-type]
    assert (found.text, found.months) == (period, months)


@pytest.mark.parametrize(
    ("scheme", "period", "hint"),
    [
        ("urban_rural_resident", "2027-03", "send purpose.period as YYYY"),
        ("urban_rural_resident", "2027-Q1", "send purpose.period as YYYY"),
        ("commercial_health", "2027-03", "send purpose.period as YYYY"),
        ("flexible_employment", "2027", "YYYY-MM or YYYY-Qn"),
        ("flexible_employment", "2027-13", "YYYY-MM or YYYY-Qn"),
        ("flexible_employment", "2027-Q5", "YYYY-MM or YYYY-Qn"),
        ("urban_rural_resident", "0000", "from 2021 (back-payment, 补缴) to 2027"),
        ("urban_rural_resident", "2020", "from 2021"),
        ("urban_rural_resident", "2028", "to 2027"),
        ("flexible_employment", "2028-01", "to 2027"),
        ("urban_rural_resident", "２０２７", "send purpose.period as YYYY"),  # full-width
    ],
)
def test_periods_that_do_not_fit_are_invalid_period(scheme: str, period: str, hint: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        pd.billing_period(scheme, period, TODAY, WINDOW)  # type: ignore[arg-type]
    error = refused.value
    assert (error.status, error.code, error.param) == (400, "invalid_period", "purpose.period")
    assert hint in error.message


def test_a_period_before_the_beneficiary_was_born_is_refused() -> None:
    with pytest.raises(ValidationFailed, match="born on 2026-03-01, after the period 2025"):
        check(request(40000, born="2026-03-01", region="310000", period="2025"))
    # born during the year: a newborn pays that year as a child
    assert check(request(43500, born="2027-12-31")).category == "student_child"


# --- the beneficiary's category ------------------------------------------------------


@pytest.mark.parametrize(
    ("born", "declared", "category"),
    [
        ("1967-01-01", None, "elderly"),  # 60 on 2027-01-01
        ("1967-01-02", None, "working_age"),  # 60 a day later: working age for 2027
        ("2009-01-01", None, "working_age"),  # 18 on 2027-01-01
        ("2009-01-02", None, "student_child"),  # still 17 at the start of 2027
        ("2008-02-29", None, "working_age"),
        ("2003-06-15", "student", "student_child"),  # a declared (university) student
        ("1950-06-15", "student", "elderly"),  # 60 and over: elderly, whatever declared
        ("2015-06-15", None, "student_child"),
    ],
)
def test_category_at_the_start_of_the_period(
    born: str, declared: pd.DeclaredCategory | None, category: pd.Category
) -> None:
    assert pd.category_of(date.fromisoformat(born), date(2027, 1, 1), declared) == category


@given(st.dates(min_value=date(1900, 1, 1), max_value=date(2027, 12, 31)))
def test_age_is_full_years(born: date) -> None:
    start = date(2027, 1, 1)
    age = pd.age_on(born, start)
    assert pd.age_on(born, born) == 0
    if age >= 0:
        assert date(born.year + age, born.month, min(born.day, 28)) <= start


def test_birth_date_comes_from_digits_7_to_14() -> None:
    assert pd.birth_date("11010519491231002X") == date(1949, 12, 31)


# --- the expected amount ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("req", "category"),
    [
        (request(79500, born="1990-05-01"), "working_age"),
        (request(46000, born="1950-05-01"), "elderly"),
        (request(43500, born="2015-05-01"), "student_child"),
        (request(43500, born="2004-05-01", declared="student"), "student_child"),
        (request(40000, region="310000"), "working_age"),  # the national minimum
        (request(79500, region="110105", period="2026"), "working_age"),
    ],
)
def test_the_scheduled_amount_is_accepted(req: pd.PremiumRequest, category: str) -> None:
    assert check(req).category == category


def test_a_wrong_amount_states_the_expected_one() -> None:
    with pytest.raises(DomainError) as refused:
        check(request(38000, born="1990-05-01"))
    error = refused.value
    assert (error.status, error.code, error.param) == (422, "premium_amount_mismatch", "amount")
    assert error.details["expected"] == 79500
    assert error.details["category"] == "working_age"
    assert error.details["national_fallback"] is False
    assert "795.00 CNY" in error.message
    assert "send amount 79500" in error.message


def test_the_national_fallback_says_so() -> None:
    with pytest.raises(DomainError) as refused:
        check(request(79500, region="440300"))
    assert refused.value.details["expected"] == 40000
    assert refused.value.details["national_fallback"] is True
    assert "national minimum" in refused.value.message


@pytest.mark.parametrize(
    ("period", "amount", "ok"),
    [
        ("2027-03", 75460, True),
        ("2027-03", 377310, True),
        ("2027-03", 300000, True),
        ("2027-03", 75459, False),
        ("2027-03", 377311, False),
        ("2027-Q2", 3 * 75460, True),
        ("2027-Q2", 3 * 377310, True),
        ("2027-Q2", 75460, False),
    ],
)
def test_flexible_employment_is_within_the_range_for_the_period(
    period: str, amount: int, ok: bool
) -> None:
    req = request(amount, scheme="flexible_employment", region="310000", period=period)
    if ok:
        assert check(req).row is not None
        return
    with pytest.raises(DomainError) as refused:
        check(req)
    months = 3 if "Q" in period else 1
    assert refused.value.code == "premium_amount_mismatch"
    assert refused.value.details["expected_min"] == 75460 * months
    assert refused.value.details["expected_max"] == 377310 * months


def test_no_schedule_is_premium_not_scheduled() -> None:
    with pytest.raises(DomainError) as refused:
        check(request(40000, period="2023"))
    assert (refused.value.code, refused.value.param) == ("premium_not_scheduled", "purpose.period")
    with pytest.raises(DomainError) as refused:
        check(request(100000, scheme="flexible_employment", period="2027-01"))
    assert (refused.value.code, refused.value.param) == ("premium_not_scheduled", "purpose.region")


def test_commercial_health_has_no_schedule() -> None:
    checked = check(request(12345, scheme="commercial_health", region="440300"))
    assert (checked.row, checked.category) == (None, None)


# --- the slot a premium occupies --------------------------------------------------------


def test_slots_cover_the_months_paid_at_the_collecting_bureau() -> None:
    year = pd.billing_period("urban_rural_resident", "2027", TODAY, WINDOW)
    district = pd.premium_slot("urban_rural_resident", "110105", "h", year)
    city = pd.premium_slot("urban_rural_resident", "110000", "h", year)
    assert (
        district
        == city
        == pd.PremiumSlot("urban_rural_resident:110000:h", 2027 * 12, 2027 * 12 + 11)
    )
    q1 = pd.billing_period("flexible_employment", "2027-Q1", TODAY, WINDOW)
    march = pd.billing_period("flexible_employment", "2027-03", TODAY, WINDOW)
    slot_q1 = pd.premium_slot("flexible_employment", "310000", "h", q1)
    slot_march = pd.premium_slot("flexible_employment", "310000", "h", march)
    assert slot_q1 is not None and slot_march is not None
    assert slot_q1.first_month <= slot_march.first_month <= slot_q1.last_month
    assert pd.premium_slot("commercial_health", "310000", "h", year) is None


def test_a_body_without_a_category_fingerprints_as_before_the_field() -> None:
    data = {
        "payer_id": "u-1",
        "payer_phone": "13800138000",
        "beneficiary": {"id_number": "11010519491231002X", "name": "张三", "relation": "self"},
        "purpose": {"type": "premium", "scheme": "urban_rural_resident", "region": "110000"},
        "amount": 46000,
        "method": "wallet",
    }
    plain = fingerprinted(PaymentCreate.model_validate(data))
    assert "category" not in plain["beneficiary"]  # type: ignore[operator]
    data["beneficiary"] = {**data["beneficiary"], "category": "student"}  # type: ignore[dict-item]
    declared = fingerprinted(PaymentCreate.model_validate(data))
    assert declared["beneficiary"]["category"] == "student"  # type: ignore[index]
