"""Premiums by region, year and scheme, through HTTP only: the schedule, a Beijing
resident's premium of the wrong amount refused stating 795, the right one paid, and the
same period refused with the first payment named, also for two concurrent requests."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.client import FINAL, ID_WEIGHTS, Yibao, premium_body, random_phone

pytestmark = pytest.mark.e2e


def working_age_person() -> str:
    """A new Beijing resident's ID number, born 1990 (working age in 2027)."""
    n = uuid.uuid4().int
    first17 = (
        f"110105199{n % 10}{n // 10 % 12 + 1:02d}{n // 120 % 28 + 1:02d}{n // 3360 % 1000:03d}"
    )
    total = sum(int(c) * w for c, w in zip(first17, ID_WEIGHTS, strict=True))
    return first17 + "10X98765432"[total % 11]


def resident_premium(id_number: str, amount: int) -> dict[str, Any]:
    payer = "u-" + uuid.uuid4().hex[:10]
    return premium_body(
        payer, amount, phone=random_phone(), id_number=id_number, scheme="urban_rural_resident"
    )


async def schedule(yibao: Yibao, **params: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=yibao.timeout) as client:
        return await client.get(
            f"{yibao.payment_url}/v1/premiums",
            params=params,
            headers={"Authorization": f"Bearer {yibao.api_key}"},
        )


def refused_as_already_paid(answer: httpx.Response, first_id: str) -> None:
    assert answer.status_code == 409, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["param"], error["payment_id"]) == (
        "already_paid",
        "purpose.period",
        first_id,
    )


async def test_the_schedule_names_beijings_premiums_and_the_national_fallback(
    yibao: Yibao,
) -> None:
    beijing = await schedule(yibao, region="110000", year=2027, scheme="urban_rural_resident")
    assert beijing.status_code == 200, beijing.text
    rows = {r["category"]: r for r in beijing.json()["schemes"][0]["rows"]}
    assert {c: r["amount"] for c, r in rows.items()} == {
        "elderly": 46000,
        "student_child": 43500,
        "working_age": 79500,
    }
    assert all(r["source"] and not r["national_fallback"] for r in rows.values())
    shenzhen = await schedule(yibao, region="440300", year=2026, scheme="urban_rural_resident")
    [row] = shenzhen.json()["schemes"][0]["rows"]
    assert (row["amount"], row["national_fallback"]) == (40000, True)
    bad = await schedule(yibao, region="110000", year="next")
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "year")


async def test_a_beijing_residents_premium_is_the_scheduled_amount_once(yibao: Yibao) -> None:
    who = working_age_person()
    wrong = await yibao.create_payment(resident_premium(who, 38000))
    assert wrong.status_code == 422, wrong.text
    error = wrong.json()["error"]
    assert (error["code"], error["param"], error["expected"]) == (
        "premium_amount_mismatch",
        "amount",
        79500,
    )
    assert "795.00 CNY" in error["message"]

    monthly = resident_premium(who, 79500)
    monthly["purpose"]["period"] = "2027-03"
    invalid = await yibao.create_payment(monthly)
    assert (invalid.status_code, invalid.json()["error"]["code"]) == (400, "invalid_period")

    right = await yibao.create_payment(resident_premium(who, 79500))
    assert right.status_code == 202, right.text
    paid = await yibao.wait_for(right.json()["id"], FINAL)
    assert paid["status"] == "succeeded", paid
    assert paid["receipt"] is not None

    again = await yibao.create_payment(resident_premium(who, 79500))  # another key and payer
    refused_as_already_paid(again, paid["id"])
    assert again.json()["error"]["payment_status"] == "succeeded"


async def test_two_concurrent_premiums_for_one_period_pay_once(yibao: Yibao) -> None:
    who = working_age_person()
    answers = await asyncio.gather(
        *(yibao.create_payment(resident_premium(who, 79500)) for _ in range(2))
    )
    assert sorted(a.status_code for a in answers) == [202, 409], [a.text for a in answers]
    [accepted] = [a for a in answers if a.status_code == 202]
    [refused] = [a for a in answers if a.status_code == 409]
    refused_as_already_paid(refused, accepted.json()["id"])
    paid = await yibao.wait_for(accepted.json()["id"], FINAL)
    assert paid["status"] == "succeeded", paid
