"""Journeys through all four services, as an upstream caller and a resident see them."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.e2e.client import Yibao, premium_body, random_phone, topup_body
from tests.e2e.conftest import System

pytestmark = pytest.mark.e2e
BUREAU = "北京市医疗保障局"


def payer() -> str:
    return "u-" + uuid.uuid4().hex[:10]


async def pay_with_code(
    yibao: Yibao, body: dict[str, object], nth_code: int = 1
) -> dict[str, object]:
    """Create a step-up payment, read its code from the resident's phone, submit it."""
    r = await yibao.create_payment(body)
    assert r.status_code == 202, r.text
    pid = r.json()["id"]
    p = await yibao.wait_for(pid, {"requires_verification", "declined"})
    assert p["status"] == "requires_verification", p
    assert p["next_action"]["type"] == "sms_verification"
    amount_text = f"{int(body['amount']) // 100:,}.{int(body['amount']) % 100:02d}"  # type: ignore[call-overload]
    code = await yibao.code_for(str(body["payer_phone"]), BUREAU, amount_text, nth=nth_code)
    v = await yibao.verify(pid, code)
    assert v.status_code == 200, v.text
    return await yibao.wait_for(pid, {"succeeded", "failed", "declined"})


async def test_bank_card_premium_succeeds_with_receipt_and_two_notices(yibao: Yibao) -> None:
    phone = random_phone()
    r = await yibao.create_payment(premium_body(payer(), 38000, phone=phone))
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "processing"
    p = await yibao.wait_for(r.json()["id"], {"succeeded", "failed", "declined"})
    assert p["status"] == "succeeded" and p["decline_code"] is None
    receipt = p["receipt"]
    assert len(receipt["code"]) == 8 and receipt["code"].startswith("11")
    assert len(receipt["number"]) == 10 and len(receipt["check_code"]) == 6
    verdict = await yibao.verify_receipt(receipt["code"], receipt["number"], receipt["check_code"])
    assert verdict["valid"] is True
    result = await yibao.wait_sms(phone, "成功")
    notice = await yibao.wait_sms(phone, receipt["number"])
    await asyncio.sleep(1.0)
    messages = await yibao.sms(phone)
    assert len(messages) == 2, messages  # the result notice and the receipt notice, once each
    assert "380.00" in result[0]["text"] and BUREAU in result[0]["text"]
    assert receipt["check_code"] in notice[0]["text"]


async def test_large_payment_needs_the_sms_code(yibao: Yibao) -> None:
    phone = random_phone()
    who = payer()
    before = await yibao.balance("bureau:110000:premium")
    p = await pay_with_code(yibao, premium_body(who, 300000, phone=phone))
    assert p["status"] == "succeeded", p
    assert p["next_action"] is None and p["receipt"] is not None
    code_sms = (await yibao.sms(phone))[0]["text"]
    assert "3,000.00" in code_sms and BUREAU in code_sms  # the code names amount and payee
    assert await yibao.balance("bureau:110000:premium") - before >= 300000


async def test_wrong_code_leaves_attempts_and_five_wrong_codes_decline(yibao: Yibao) -> None:
    phone = random_phone()
    r = await yibao.create_payment(premium_body(payer(), 250000, phone=phone))
    pid = r.json()["id"]
    await yibao.wait_for(pid, {"requires_verification"})
    right = await yibao.code_for(phone, BUREAU, "2,500.00")
    wrong = "000000" if right != "000000" else "111111"
    for left in (4, 3, 2, 1):
        v = await yibao.verify(pid, wrong)
        assert v.status_code == 422, v.text
        assert v.json()["error"]["attempts_left"] == left
        assert (await yibao.get_payment(pid))["status"] == "requires_verification"
    v = await yibao.verify(pid, wrong)
    assert v.status_code == 422
    assert v.json()["error"]["attempts_left"] == 0
    p = await yibao.wait_for(pid, {"declined"})
    assert p["decline_code"] == "verification_failed" and p["next_action"] is None
    late = await yibao.verify(pid, right)  # the challenge is dead: the right code is too late
    assert late.status_code in (409, 422)
    assert (await yibao.get_payment(pid))["status"] == "declined"


async def test_daily_cap_declines_with_what_is_left(yibao: Yibao) -> None:
    who, phone = payer(), random_phone()
    amounts = [500000] * 9 + [490000]  # 49,900.00 CNY today
    for n, amount in enumerate(amounts, start=1):
        p = await pay_with_code(yibao, premium_body(who, amount, phone=phone), nth_code=n)
        assert p["status"] == "succeeded", p
    r = await yibao.create_payment(premium_body(who, 20000, phone=phone))  # 200.00 CNY more
    p = await yibao.wait_for(r.json()["id"], {"declined", "succeeded", "failed"})
    assert p["status"] == "declined"
    assert p["decline_code"] == "daily_limit_exceeded"
    assert "100.00" in p["decline_message"], p  # what is still allowed today
    cap = await yibao.daily_cap(who)
    assert (cap["cap"], cap["used"], cap["remaining"]) == (5_000_000, 4_990_000, 10_000)
    ok = await yibao.create_payment(premium_body(who, 10000, phone=phone))  # exactly what's left
    assert (await yibao.wait_for(ok.json()["id"], {"succeeded", "declined"}))[
        "status"
    ] == "succeeded"


async def test_over_limit_wallet_payment_is_rejected_up_front(yibao: Yibao) -> None:
    r = await yibao.create_payment(premium_body(payer(), 200001, method="wallet"))
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "method_limit_exceeded" and error["param"] == "amount"
    assert "2,000.00" in error["message"]


async def test_wallet_overdraft_fails_and_releases_the_reservation(yibao: Yibao) -> None:
    who, phone = payer(), random_phone()
    top = await yibao.create_payment(topup_body(who, 50000, phone=phone))
    assert (await yibao.wait_for(top.json()["id"], {"succeeded", "failed"}))[
        "status"
    ] == "succeeded"
    assert await yibao.balance(f"wallet:{who}") == 50000
    r = await yibao.create_payment(premium_body(who, 80000, method="wallet", phone=phone))
    p = await yibao.wait_for(r.json()["id"], {"succeeded", "failed", "declined"})
    assert p["status"] == "failed" and p["decline_code"] == "insufficient_funds"
    assert await yibao.balance(f"wallet:{who}") == 50000

    async def released() -> bool:
        return (await yibao.daily_cap(who))["used"] == 50000  # the top-up stays kept

    for _ in range(100):
        if await released():
            break
        await asyncio.sleep(0.1)
    assert (await yibao.daily_cap(who))["used"] == 50000
    ok = await yibao.create_payment(premium_body(who, 30000, method="wallet", phone=phone))
    assert (await yibao.wait_for(ok.json()["id"], {"succeeded", "failed"}))["status"] == "succeeded"
    assert await yibao.balance(f"wallet:{who}") == 20000


async def test_idempotent_replay_returns_the_same_payment(yibao: Yibao) -> None:
    body, key = premium_body(payer(), 43500), "order-" + uuid.uuid4().hex
    first = await yibao.create_payment(body, key=key)
    again = await yibao.create_payment(body, key=key)
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    other = await yibao.create_payment({**body, "amount": 43600}, key=key)
    assert other.status_code == 422
    assert other.json()["error"]["param"] == "Idempotency-Key"


@pytest.mark.parametrize("victim", ["ledger", "risk", "notify", "payment"])
async def test_killing_a_service_mid_scenario_loses_and_duplicates_nothing(
    system: System, yibao: Yibao, victim: str
) -> None:
    who, phone = payer(), random_phone()
    ids = []
    for _ in range(6):
        r = await yibao.create_payment(topup_body(who, 10000, phone=phone))
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    system.kill(victim)
    await asyncio.sleep(1.0)
    system.start([victim])
    for pid in ids:
        p = await yibao.wait_for(pid, {"succeeded", "failed", "declined"}, timeout=90)
        assert p["status"] == "succeeded", p
    assert await yibao.balance(f"wallet:{who}") == 60000  # six top-ups, each booked once
    results = await yibao.wait_sms(phone, "成功", count=6, timeout=90)
    await asyncio.sleep(2.0)
    assert len([m for m in await yibao.sms(phone) if "成功" in m["text"]]) == len(results) == 6
    assert (await yibao.daily_cap(who))["used"] == 60000
