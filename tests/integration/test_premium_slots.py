"""Premiums against the schedule and paid once per period, through the payment API on a
real PostgreSQL: 409 already_paid under two idempotency keys, two concurrent requests
and two callers; a declined payment frees its period; overlapping flexible-employment
periods; premiums paid before the rule existed hold their periods too; GET /v1/premiums."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from services.payment.__main__ import MIGRATIONS
from services.payment.premium_domain import PeriodWindow, billing_period, premium_slot
from services.payment.validation import id_check_char
from shared.crypto import KeyPurpose, keyed_hash
from shared.db import create_pool, migrate
from shared.events import RiskDeclined
from tests.integration import test_payment_api
from tests.integration.test_payment_api import (
    AUTH,
    OTHER_KEY,
    Service,
    body,
    cap_fields,
    headers,
)

pytestmark = pytest.mark.integration

service = test_payment_api.service  # the payment API over a fresh database (fixture)


def person(born: str = "1990-05-01") -> str:
    """A new person's ID number (a Beijing district), born on ``born``."""
    first17 = f"110105{born.replace('-', '')}{uuid.uuid4().int % 1000:03d}"
    return first17 + id_check_char(first17)


def resident(
    id_number: str,
    amount: int = 79500,
    *,
    region: str = "110000",
    period: str = "2027",
    scheme: str = "urban_rural_resident",
) -> dict[str, Any]:
    data = body(amount=amount)
    data["beneficiary"]["id_number"] = id_number
    data["purpose"] = {"type": "premium", "scheme": scheme, "region": region, "period": period}
    return data


async def pay(service: Service, data: dict[str, Any], **kw: Any) -> Any:
    return await service.client.post("/v1/payments", json=data, headers=headers(), **kw)


def refused_as_already_paid(response: Any, first_id: str) -> None:
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("already_paid", "purpose.period")
    assert error["payment_id"] == first_id
    assert first_id in error["message"]


async def test_a_period_is_paid_once_under_two_idempotency_keys(service: Service) -> None:
    who = person()
    first = await pay(service, resident(who))
    assert first.status_code == 202, first.text
    again = await pay(service, resident(who))  # a new key, another payer_id
    refused_as_already_paid(again, first.json()["id"])
    assert again.json()["error"]["payment_status"] == "processing"
    # a Beijing district's premium goes to the same bureau: the same period
    district = await pay(service, resident(who, region="110105"))
    refused_as_already_paid(district, first.json()["id"])
    # another year, another bureau and another scheme are other periods
    assert (await pay(service, resident(who, period="2026"))).status_code == 202
    assert (await pay(service, resident(who, 40000, region="310000"))).status_code == 202
    commercial = resident(who, 12345, scheme="commercial_health")
    assert (await pay(service, commercial)).status_code == 202
    assert (await pay(service, commercial)).status_code == 202  # several policies


async def test_two_concurrent_requests_pay_once(service: Service) -> None:
    for _ in range(5):
        who = person()
        answers = await asyncio.gather(*(pay(service, resident(who)) for _ in range(2)))
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [202, 409], [a.text for a in answers]
        [paid] = [a for a in answers if a.status_code == 202]
        [refused] = [a for a in answers if a.status_code == 409]
        refused_as_already_paid(refused, paid.json()["id"])
    rows = await service.pool.fetchval("SELECT count(*) FROM payments")
    assert rows == 5


async def test_another_caller_cannot_pay_the_same_persons_period(service: Service) -> None:
    who = person()
    first = await pay(service, resident(who))
    other = {"Authorization": f"Bearer {OTHER_KEY}", "Idempotency-Key": uuid.uuid4().hex}
    theirs = await service.client.post("/v1/payments", json=resident(who), headers=other)
    refused_as_already_paid(theirs, first.json()["id"])
    # ... and the id it names stays theirs to read only: 404 for the other caller
    seen = await service.client.get(
        f"/v1/payments/{first.json()['id']}", headers={"Authorization": other["Authorization"]}
    )
    assert seen.status_code == 404


async def test_a_declined_payment_frees_its_period(service: Service) -> None:
    who = person()
    first = (await pay(service, resident(who))).json()
    await service.feed(
        RiskDeclined(**cap_fields(first), decline_code="daily_limit_exceeded", message="cap")
    )
    shown = await service.client.get(f"/v1/payments/{first['id']}", headers=AUTH)
    assert shown.json()["status"] == "declined"
    second = await pay(service, resident(who))
    assert second.status_code == 202, second.text
    refused_as_already_paid(await pay(service, resident(who)), second.json()["id"])


async def test_flexible_employment_months_and_quarters_overlap(service: Service) -> None:
    who = person()

    def flexible(period: str, amount: int) -> dict[str, Any]:
        return resident(who, amount, region="310000", period=period, scheme="flexible_employment")

    quarter = await pay(service, flexible("2027-Q1", 3 * 100000))
    assert quarter.status_code == 202, quarter.text
    refused_as_already_paid(await pay(service, flexible("2027-03", 100000)), quarter.json()["id"])
    assert (await pay(service, flexible("2027-04", 100000))).status_code == 202
    april = await pay(service, flexible("2027-04", 100000))
    assert april.status_code == 409  # paid just before
    refused_as_already_paid(
        await pay(service, flexible("2027-Q2", 3 * 100000)), april.json()["error"]["payment_id"]
    )
    assert (await pay(service, flexible("2027-Q3", 3 * 100000))).status_code == 202


async def test_refusals_before_the_key_is_claimed_store_nothing(service: Service) -> None:
    who, key = person(), uuid.uuid4().hex
    wrong = await pay_with(service, resident(who, 38000), key)
    assert wrong.status_code == 422
    error = wrong.json()["error"]
    assert (error["code"], error["param"], error["expected"]) == (
        "premium_amount_mismatch",
        "amount",
        79500,
    )
    assert "795.00 CNY" in error["message"]
    monthly = await pay_with(service, resident(who, period="2027-03"), key)
    assert monthly.status_code == 400
    assert (monthly.json()["error"]["code"], monthly.json()["error"]["param"]) == (
        "invalid_period",
        "purpose.period",
    )
    for period in ("0000", "2020", "2028"):
        assert (await pay(service, resident(who, period=period))).status_code == 400
    flexible = resident(who, 100000, region="310000", scheme="flexible_employment")
    assert (await pay(service, flexible)).json()["error"]["code"] == "invalid_period"
    # the same key then serves the right body
    right = await pay_with(service, resident(who), key)
    assert right.status_code == 202, right.text
    student = resident(person("2004-05-01"), 43500)
    student["beneficiary"]["category"] = "student"
    assert (await pay(service, student)).status_code == 202
    assert await service.pool.fetchval("SELECT count(*) FROM payments") == 2


async def pay_with(service: Service, data: dict[str, Any], key: str) -> Any:
    return await service.client.post("/v1/payments", json=data, headers=headers(key))


async def test_premiums_paid_before_the_rule_hold_their_periods(
    service: Service, new_database: Callable[[], Awaitable[str]], tmp_path: Path
) -> None:
    """A database migrated up to 0004 with a premium already in it: 0005 gives it the
    slot a new payment for that person, scheme, bureau and year takes (so it is refused)."""
    before = tmp_path / "migrations"
    before.mkdir()
    for path in sorted(MIGRATIONS.glob("000[1-4]_*.sql")):
        shutil.copy(path, before / path.name)
    dsn = await new_database()
    await migrate(dsn, before)
    who = person()
    hash_key = service.settings.hash_key_for(KeyPurpose.ID_HASH)
    legacy = "pay_legacy" + uuid.uuid4().hex[:8]
    pool = await create_pool(dsn)
    try:
        await pool.execute(
            "INSERT INTO payments (id, caller, payer_id, status, amount, method, purpose,"
            " beneficiary, payer_phone_masked, payer_phone_sealed, payee_id, payee_name,"
            " requested_at) VALUES ($1, 'c', 'u-old', 'succeeded', 79500, 'wallet', $2, $3,"
            " '138****8000', 'x', 'bureau:110000', '北京市医疗保障局', now())",
            legacy,
            {
                "type": "premium",
                "scheme": "urban_rural_resident",
                "region": "110105",
                "period": "2027",
            },
            {
                "id_number_masked": "x",
                "id_number_hash": keyed_hash(hash_key, "id", who),
                "name": "张三",
                "relation": "self",
            },
        )
        await migrate(dsn, MIGRATIONS)
        slot = await pool.fetchrow(
            "SELECT premium_slot, premium_first_month, premium_last_month FROM payments"
        )
    finally:
        await pool.close()
    year = billing_period("urban_rural_resident", "2027", date(2026, 11, 26), PeriodWindow())
    new = premium_slot("urban_rural_resident", "110000", keyed_hash(hash_key, "id", who), year)
    assert new is not None
    assert (slot["premium_slot"], slot["premium_first_month"], slot["premium_last_month"]) == (
        new.key,
        new.first_month,
        new.last_month,
    )


# ---------------------------------------------------------------------------
# GET /v1/premiums
# ---------------------------------------------------------------------------


async def test_the_schedule_of_a_region_and_year(service: Service) -> None:
    answer = await service.client.get(
        "/v1/premiums", params={"region": "110000", "year": 2027}, headers=AUTH
    )
    assert answer.status_code == 200, answer.text
    schedule = answer.json()
    assert (schedule["region"], schedule["year"]) == ("110000", 2027)
    by_scheme = {s["scheme"]: s for s in schedule["schemes"]}
    resident_rows = {r["category"]: r for r in by_scheme["urban_rural_resident"]["rows"]}
    assert {c: r["amount"] for c, r in resident_rows.items()} == {
        "elderly": 46000,
        "student_child": 43500,
        "working_age": 79500,
    }
    assert resident_rows["working_age"]["category_name"] == "劳动年龄内居民"
    assert not resident_rows["working_age"]["national_fallback"]
    assert "carried forward" in resident_rows["working_age"]["source"]
    assert by_scheme["urban_rural_resident"]["periods"] == "YYYY"
    assert by_scheme["flexible_employment"]["rows"] == []  # none for Beijing
    assert by_scheme["commercial_health"]["scheduled"] is False

    shanghai = await service.client.get(
        "/v1/premiums",
        params={"region": "310115", "year": 2026, "scheme": "urban_rural_resident"},
        headers=AUTH,
    )
    [fallback] = shanghai.json()["schemes"][0]["rows"]
    assert (fallback["region"], fallback["amount"], fallback["national_fallback"]) == (
        "national",
        40000,
        True,
    )
    flexible = await service.client.get(
        "/v1/premiums",
        params={"region": "310000", "year": 2026, "scheme": "flexible_employment"},
        headers=AUTH,
    )
    [row] = flexible.json()["schemes"][0]["rows"]
    assert (row["min_amount"], row["max_amount"], row["per"], row["amount"]) == (
        75460,
        377310,
        "month",
        None,
    )


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"region": "999999", "year": "2027"}, "region"),
        ({"region": "11000", "year": "2027"}, "region"),
        ({"year": "2027"}, "region"),
        ({"region": "110000", "year": "twenty"}, "year"),
        ({"region": "110000", "year": "1999"}, "year"),
        ({"region": "110000"}, "year"),
        ({"region": "110000", "year": "2027", "scheme": "pension"}, "scheme"),
    ],
)
async def test_bad_schedule_queries_are_400_naming_the_field(
    service: Service, params: dict[str, str], param: str
) -> None:
    answer = await service.client.get("/v1/premiums", params=params, headers=AUTH)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param


async def test_the_schedule_needs_a_caller_key(service: Service) -> None:
    answer = await service.client.get("/v1/premiums", params={"region": "110000", "year": 2027})
    assert answer.status_code == 401
