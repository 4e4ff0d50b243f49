"""Who may act for whom (issue 11), through HTTP only, with two unrelated caller keys.

Caller B, holding a valid key of its own, can neither act on nor read anything caller A
enrolled: its answer is always the 404 of something that does not exist. A's codes go
to the phone A's payer enrolled with, whatever phone a later request names. The daily
cap follows the person, not the payer id a caller picks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.client import FINAL, Yibao, premium_body, random_id_number, random_phone
from tests.e2e.conftest import System

pytestmark = pytest.mark.e2e
BUREAU = "北京市医疗保障局"


def payer() -> str:
    return "u-" + uuid.uuid4().hex[:10]


def cny(fen: int) -> str:
    return f"{fen // 100:,}.{fen % 100:02d}"


@pytest.fixture
def a(system: System) -> Yibao:
    return system.client


@pytest.fixture
def b(system: System) -> Yibao:
    return system.client.as_caller(system.env["YIBAO_API_KEYS"].split(",")[1])


def notify_url(system: System) -> str:
    return f"http://127.0.0.1:{system.ports['notify']}"


async def get(url: str, key: str, **params: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url, params=params, headers={"Authorization": f"Bearer {key}"})


def assert_not_found(answer: httpx.Response) -> None:
    assert answer.status_code == 404, answer.text
    assert answer.json()["error"]["code"] == "not_found"


async def test_another_caller_can_neither_act_on_nor_read_what_a_enrolled(
    system: System, a: Yibao, b: Yibao
) -> None:
    who, phone = payer(), random_phone()
    paid = await a.create_payment(
        premium_body(who, 38000, phone=phone, id_number=random_id_number())
    )
    assert paid.status_code == 202, paid.text
    payment = await a.wait_for(paid.json()["id"], FINAL)
    assert payment["status"] == "succeeded", payment
    refund = await a.create_refund(payment["id"], 1000)
    assert refund.status_code == 202, refund.text
    refund_id = refund.json()["id"]

    # B cannot pay from A's payer: the same 404 as a payer nobody enrolled.
    stolen = await b.create_payment(premium_body(who, 38000, phone=random_phone()))
    assert_not_found(stolen)
    assert stolen.json()["error"]["param"] == "payer_id"

    # B cannot read A's payment, refund, daily cap or notifications, nor refund it.
    for answer in (
        await get(f"{b.payment_url}/v1/payments/{payment['id']}", b.api_key),
        await get(f"{b.payment_url}/v1/refunds/{refund_id}", b.api_key),
        await get(f"{b.payment_url}/v1/payers/{who}", b.api_key),
        await get(f"{b.risk_url}/v1/payers/{who}/daily-cap", b.api_key),
        await get(f"{notify_url(system)}/v1/notifications", b.api_key, payment_id=payment["id"]),
        await b.create_refund(payment["id"], 1000),
    ):
        assert_not_found(answer)

    # ...while A, the owner, reads each of them.
    assert (await a.get_refund(refund_id))["payment_id"] == payment["id"]
    assert (await a.daily_cap(who))["used"] == 38000
    notices = await eventually_listed(system, a, payment["id"])
    assert {n["kind"] for n in notices} >= {"payment_result"}
    assert all("****" in n["phone"] for n in notices)


async def eventually_listed(system: System, a: Yibao, payment_id: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    while True:
        answer = await get(
            f"{notify_url(system)}/v1/notifications", a.api_key, payment_id=payment_id
        )
        if answer.status_code == 200 and answer.json():
            return list(answer.json())
        assert time.monotonic() < deadline, answer.text
        await asyncio.sleep(0.2)


async def test_codes_go_to_the_enrolled_phone_whatever_a_later_request_names(a: Yibao) -> None:
    who, enrolled, named = payer(), random_phone(), random_phone()
    first = await a.create_payment(
        premium_body(who, 38000, phone=enrolled, id_number=random_id_number())
    )
    assert (await a.wait_for(first.json()["id"], FINAL))["status"] == "succeeded"

    later = await a.create_payment(
        premium_body(who, 300000, phone=named, id_number=random_id_number())
    )
    assert later.status_code == 202, later.text
    assert later.json()["payer_phone"] == enrolled[:3] + "****" + enrolled[-4:]
    pid = later.json()["id"]
    assert (await a.wait_for(pid, {"requires_verification"}))["next_action"] is not None
    code = await a.code_for(enrolled, BUREAU, "3,000.00")
    assert await a.sms(named) == []  # the caller's own phone got nothing
    verified = await a.verify(pid, code)
    assert verified.status_code == 200, verified.text
    assert (await a.wait_for(pid, FINAL))["status"] == "succeeded"
    await a.wait_sms(enrolled, "成功", count=2)  # both results went to the enrolled phone
    assert await a.sms(named) == []


async def test_one_person_under_two_payer_ids_and_two_callers_shares_one_cap(
    system: System, a: Yibao, b: Yibao
) -> None:
    id_number, first, second, theirs = random_id_number(), payer(), payer(), payer()
    phone = random_phone()
    enrol = {"phone": phone, "id_number": id_number, "name": "李四"}
    async with httpx.AsyncClient(timeout=10) as client:
        enrolled = await client.put(
            f"{a.payment_url}/v1/payers/{first}",
            json=enrol,
            headers={"Authorization": f"Bearer {a.api_key}"},
        )
    assert enrolled.status_code == 200, enrolled.text
    assert enrolled.json()["name"] == "李*" and "****" in enrolled.json()["phone"]

    # The bureau funds the first payer's personal medical account; it pays 48,000 CNY.
    funded = await a.allocate(
        "110000",
        f"2027-{uuid.uuid4().int % 12 + 1:02d}",
        [{"payer_id": first, "amount": 4_800_000}],
    )
    assert funded.status_code == 200, funded.text
    # Waited for as an operator: the ledger learns that A owns a payer enrolled without
    # a payment from payment's PayerEnrolled event (issue 11).
    operator = a.as_caller(system.env["YIBAO_OPERATOR_API_KEYS"])
    for _ in range(100):
        if await operator.balance(f"medical:{first}") == 4_800_000:
            break
        await asyncio.sleep(0.1)
    big = await a.create_payment(
        premium_body(first, 4_800_000, method="medical_account", phone=phone, id_number=id_number)
    )
    assert big.status_code == 202, big.text
    await a.wait_for(big.json()["id"], {"requires_verification"})
    code = await a.code_for(phone, BUREAU, cny(4_800_000))
    assert (await a.verify(big.json()["id"], code)).status_code == 200
    assert (await a.wait_for(big.json()["id"], FINAL))["status"] == "succeeded"

    # The same person under another payer id of A, and under a payer id of B: 2,000 CNY left.
    for caller, who in ((a, second), (b, theirs)):
        r = await caller.create_payment(
            premium_body(who, 300000, phone=random_phone(), id_number=id_number)
        )
        assert r.status_code == 202, r.text
        p = await caller.wait_for(r.json()["id"], FINAL)
        assert (p["status"], p["decline_code"]) == ("declined", "daily_limit_exceeded"), p
        assert "2,000.00" in p["decline_message"]
        cap = await caller.daily_cap(who)
        assert (cap["used"], cap["remaining"]) == (4_800_000, 200_000)
    assert (await a.daily_cap(first))["used"] == 4_800_000
