"""Money from outside, through HTTP only: the development bank behind bank cards, the
bureau's allocations to personal medical accounts, and refunds with red receipts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tests.e2e.client import FINAL, Yibao, premium_body, random_phone, topup_body
from tests.e2e.conftest import BANK_DEADLINE_SECONDS, System

pytestmark = pytest.mark.e2e
SHANGHAI = ZoneInfo("Asia/Shanghai")


def payer() -> str:
    return "u-" + uuid.uuid4().hex[:10]


@pytest.fixture
async def bank(yibao: Yibao) -> AsyncIterator[Yibao]:
    """The system with the development bank back to normal after the test."""
    yield yibao
    await yibao.bank_control(decline_next=0, delay_ms=0)


async def bank_rows(yibao: Yibao, reference_part: str) -> list[dict[str, str]]:
    """The bank's statement lines naming ``reference_part``, over the clearing days
    around now (a run near the 23:00 cut-off spans two)."""
    now = datetime.now(UTC).astimezone(SHANGHAI)
    days = sorted({(now + timedelta(days=d)).date().isoformat() for d in (-1, 0, 1)})
    rows = []
    for day in days:
        rows += [
            r
            for r in await yibao.bank_statement(day)
            if reference_part in r["reference"] or reference_part in r.get("related_reference", "")
        ]
    return rows


async def test_a_bank_card_premium_waits_for_the_bank(bank: Yibao) -> None:
    await bank.bank_control(delay_ms=1500)
    r = await bank.create_payment(premium_body(payer(), 46000, phone=random_phone()))
    assert r.status_code == 202, r.text
    pid = r.json()["id"]
    await asyncio.sleep(0.8)
    assert (await bank.get_payment(pid))["status"] == "processing"  # the bank has not answered
    p = await bank.wait_for(pid, FINAL)
    assert p["status"] == "succeeded" and p["receipt"] is not None, p
    assert p["funds"]["arrived_at"] is not None and p["funds"]["expected_by"] is not None
    debits = [row for row in await bank_rows(bank, pid) if row["kind"] == "debit"]
    assert [int(row["amount"]) for row in debits] == [46000]


async def test_a_bank_decline_fails_the_payment_and_frees_the_cap(bank: Yibao) -> None:
    who = payer()
    await bank.bank_control(decline_next=1)
    r = await bank.create_payment(premium_body(who, 79500, phone=random_phone()))
    p = await bank.wait_for(r.json()["id"], FINAL)
    assert (p["status"], p["decline_code"]) == ("failed", "bank_declined"), p
    for _ in range(100):
        if (await bank.daily_cap(who))["used"] == 0:
            break
        await asyncio.sleep(0.1)
    assert (await bank.daily_cap(who))["used"] == 0
    assert [row for row in await bank_rows(bank, p["id"]) if row["kind"] == "debit"] == []


async def test_a_bank_answering_after_the_deadline_keeps_no_money(bank: Yibao) -> None:
    """The bank books the debit but answers only after our deadline: the payment fails
    bank_unavailable and the late debit is refunded."""
    before = await bank.balance("bureau:110000:premium")
    await bank.bank_control(delay_ms=int((BANK_DEADLINE_SECONDS + 3) * 1000))
    r = await bank.create_payment(premium_body(payer(), 43500, phone=random_phone()))
    pid = r.json()["id"]
    p = await bank.wait_for(pid, FINAL, timeout=BANK_DEADLINE_SECONDS + 60)
    assert (p["status"], p["decline_code"]) == ("failed", "bank_unavailable"), p
    await bank.bank_control(delay_ms=0)
    for _ in range(300):
        rows = await bank_rows(bank, pid)
        kinds = sorted(row["kind"] for row in rows)
        if kinds == ["debit", "refund"]:
            break
        await asyncio.sleep(0.2)
    assert kinds == ["debit", "refund"], rows
    assert {int(row["amount"]) for row in rows} == {43500}  # refunded in full
    assert p["receipt"] is None
    assert await bank.balance("bureau:110000:premium") == before  # nothing was booked


async def test_a_top_up_credits_the_wallet_only_after_the_debit(bank: Yibao) -> None:
    who = payer()
    await bank.bank_control(delay_ms=1500)
    r = await bank.create_payment(topup_body(who, 20000, phone=random_phone()))
    pid = r.json()["id"]
    await asyncio.sleep(0.8)
    assert (await bank.get_payment(pid))["status"] == "processing"
    assert await bank.balance(f"wallet:{who}") == 0
    assert (await bank.wait_for(pid, FINAL))["status"] == "succeeded"
    assert await bank.balance(f"wallet:{who}") == 20000


async def test_an_allocation_funds_a_medical_account_that_then_pays(yibao: Yibao) -> None:
    who, phone = payer(), random_phone()
    # The payer is known (with their phone) from an earlier payment.
    first = await yibao.create_payment(topup_body(who, 100, phone=phone))
    assert (await yibao.wait_for(first.json()["id"], FINAL))["status"] == "succeeded"
    short = await yibao.create_payment(premium_body(who, 38000, method="medical_account"))
    p = await yibao.wait_for(short.json()["id"], FINAL)
    assert (p["status"], p["decline_code"]) == ("failed", "insufficient_funds")

    lines = [{"payer_id": who, "amount": 120000}]
    r = await yibao.allocate("110000", "2027", lines)
    assert r.status_code == 200, r.text
    assert [line["status"] for line in r.json()["lines"]] == ["allocated"]
    again = await yibao.allocate("110000", "2027", lines)  # the same file again
    assert [line["status"] for line in again.json()["lines"]] == ["already_allocated"]
    for _ in range(100):
        if await yibao.balance(f"medical:{who}") == 120000:
            break
        await asyncio.sleep(0.1)
    assert await yibao.balance(f"medical:{who}") == 120000
    await yibao.wait_sms(phone, "1,200.00")  # the balance change reaches the resident

    paid = await yibao.create_payment(
        premium_body(who, 38000, method="medical_account", phone=phone)
    )
    p = await yibao.wait_for(paid.json()["id"], FINAL)
    assert p["status"] == "succeeded" and p["receipt"] is not None, p
    assert await yibao.balance(f"medical:{who}") == 82000


async def test_a_malformed_allocation_line_is_refused_by_name_and_nothing_applies(
    system: System, yibao: Yibao
) -> None:
    good, bad = payer(), payer()
    lines = [{"payer_id": good, "amount": 5000}, {"payer_id": bad, "amount": -5}]
    r = await yibao.allocate("110000", "2027", lines)
    assert r.status_code in (400, 422), r.text
    assert "lines[1]" in r.json()["error"]["param"]
    await asyncio.sleep(1.0)
    # An operator reads it: the payer is nobody's yet, so a caller key gets 404 (issue 11).
    operator = yibao.as_caller(system.env["YIBAO_OPERATOR_API_KEYS"])
    assert await operator.balance(f"medical:{good}") == 0


async def test_an_ordinary_caller_cannot_allocate(yibao: Yibao) -> None:
    impostor = replace(yibao, bureau_key=yibao.api_key)
    r = await impostor.allocate("110000", "2027", [{"payer_id": payer(), "amount": 100}])
    assert r.status_code in (403, 404), r.text


async def test_partial_then_full_refund_issue_two_linked_red_receipts(bank: Yibao) -> None:
    phone = random_phone()
    r = await bank.create_payment(premium_body(payer(), 79500, phone=phone))
    pid = r.json()["id"]
    p = await bank.wait_for(pid, FINAL)
    assert p["status"] == "succeeded", p
    original = p["receipt"]
    bureau_before = await bank.balance("bureau:110000:premium")

    over = await bank.create_refund(pid, 79501)
    assert over.status_code == 422 and over.json()["error"]["code"] == "refund_exceeds_payment"

    first = await bank.create_refund(pid, 30000)
    assert first.status_code == 202, first.text
    assert first.json()["status"] == "processing" and first.json()["id"].startswith("re_")
    one = await bank.wait_refund(first.json()["id"], {"succeeded", "failed"})
    second = await bank.create_refund(pid, 49500)
    two = await bank.wait_refund(second.json()["id"], {"succeeded", "failed"})
    assert one["status"] == two["status"] == "succeeded", (one, two)
    assert (await bank.create_refund(pid, 1)).status_code == 422  # nothing left to refund

    p = await bank.get_payment(pid)
    assert p["refunded_amount"] == 79500
    assert p["refunds"] == [one["id"], two["id"]]
    assert await bank.balance("bureau:110000:premium") == bureau_before - 79500

    reds = [one["receipt"], two["receipt"]]
    assert len({(x["code"], x["number"]) for x in [original, *reds]}) == 3
    for red in reds:
        face = await bank.receipt(red["code"], red["number"])
        assert face["receipt"]["relates_to"] == {
            "code": original["code"],
            "number": original["number"],
        }
        assert (await bank.verify_receipt(red["code"], red["number"], red["check_code"]))["valid"]
    verdict = await bank.verify_receipt(
        original["code"], original["number"], original["check_code"]
    )
    assert verdict["valid"] is True and verdict["reversed_amount"] == 79500

    refunds = [row for row in await bank_rows(bank, pid) if row["kind"] == "refund"]
    assert sorted(int(row["amount"]) for row in refunds) == [30000, 49500]
    await bank.wait_sms(phone, "退")  # the resident hears of the refund


async def test_a_refund_of_an_unfinished_payment_is_a_conflict(bank: Yibao) -> None:
    await bank.bank_control(delay_ms=2000)
    r = await bank.create_payment(premium_body(payer(), 40000, phone=random_phone()))
    refund = await bank.create_refund(r.json()["id"], 100)
    assert refund.status_code == 409, refund.text
    missing = await bank.create_refund("pay_" + uuid.uuid4().hex, 100)
    assert missing.status_code == 404
    await bank.wait_for(r.json()["id"], FINAL)  # leave nothing in flight for the next test


@pytest.mark.parametrize("victim", ["ledger", "payment", "bank"])
async def test_kill_9_during_bank_card_payments_loses_and_doubles_nothing(
    system: System, bank: Yibao, victim: str
) -> None:
    await bank.bank_control(delay_ms=300)
    who = payer()
    before = await bank.balance("bureau:110000:premium")
    ids = []
    for n in range(6):
        r = await bank.create_payment(premium_body(who, 40000 + n, phone=random_phone()))
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    await asyncio.sleep(0.5)
    system.kill(victim)
    await asyncio.sleep(1.0)
    system.start([victim])
    outcomes = [await bank.wait_for(pid, FINAL, timeout=120) for pid in ids]
    succeeded = [p for p in outcomes if p["status"] == "succeeded"]
    assert all(p["status"] in ("succeeded", "failed") for p in outcomes), outcomes
    # The bureau got exactly the succeeded payments, once each.
    assert await bank.balance("bureau:110000:premium") - before == sum(
        p["amount"] for p in succeeded
    )
    # The bank kept exactly the money of the succeeded payments: one debit each, and a
    # failed payment's debit (if any reached the bank) is refunded.
    for p in outcomes:
        rows = await bank_rows(bank, p["id"])
        debits = [int(r["amount"]) for r in rows if r["kind"] == "debit"]
        refunds = [int(r["amount"]) for r in rows if r["kind"] == "refund"]
        kept = sum(debits) - sum(refunds)
        assert len(debits) <= 1, rows
        assert kept == (p["amount"] if p["status"] == "succeeded" else 0), (p, rows)
