"""notify's issue-9 notices end to end within the service: refund results and personal
medical account balance changes, over real Kafka, PostgreSQL and the development gateway.

Each event is produced twice (at-least-once delivery) and again after its SMS went out;
a later event of the same payer (same partition, so consumed after the copies) proves
the copies were consumed before the counts are read.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from services.notify import domain
from shared.crypto import Sealer, phone_aad
from shared.events import (
    Envelope,
    MedicalAccountAllocated,
    PaymentSucceeded,
    ReceiptIssued,
    ReceiptRef,
    RefundFailed,
    RefundSucceeded,
)
from shared.topics import TopicNames
from tests.integration.test_notify_flow import (
    Notify,
    Payment,
    _payment,
    _read_notify_topic,
    eventually,
    running_notify,
)
from tests.support import Infra

pytestmark = pytest.mark.integration

BUREAU = "北京市医疗保障局"


def _refund_fields(pay: Payment, refund_id: str, amount: int, method: str) -> dict[str, Any]:
    return {
        "refund_id": refund_id,
        "payment_id": pay.payment_id,
        "payer_id": pay.payer_id,
        "amount": amount,
        "method": method,
        "payer_phone_masked": pay.phone_masked,
        "payer_phone_sealed": pay.phone_sealed,
    }


def refund_succeeded(
    pay: Payment, refund_id: str, amount: int, red: ReceiptRef | None, method: str = "bank_card"
) -> Envelope:
    payload = RefundSucceeded(
        **_refund_fields(pay, refund_id, amount, method),
        journal_seq=2,
        receipt=red,
        original_receipt=ReceiptRef(code="11012327", number="0000000001", check_code="a1B2c3"),
        refunded_total=amount,
    )
    return pay.envelope(payload, "payment")


def refund_failed(pay: Payment, refund_id: str, amount: int) -> Envelope:
    payload = RefundFailed(
        **_refund_fields(pay, refund_id, amount, "bank_card"),
        decline_code="bank_declined",
        message="the bank declined the refund",
    )
    return pay.envelope(payload, "payment")


def red_receipt_issued(pay: Payment, refund_id: str, red: ReceiptRef) -> Envelope:
    face = {"code": red.code, "number": red.number, "check_code": red.check_code, "total": -1}
    payload = ReceiptIssued(
        payment_id=pay.payment_id,
        payer_id=pay.payer_id,
        journal_seq=2,
        receipt=face,
        signature="c2ln",
        key_id="k1",
        payer_phone_sealed=pay.phone_sealed,
        refund_id=refund_id,
    )
    return pay.envelope(payload, "ledger")


def medical_payment_succeeded(pay: Payment, amount: int) -> Envelope:
    payload = PaymentSucceeded(
        payment_id=pay.payment_id,
        payer_id=pay.payer_id,
        amount=amount,
        method="medical_account",
        purpose_type="premium",
        payee_name=BUREAU,
        payer_phone_masked=pay.phone_masked,
        payer_phone_sealed=pay.phone_sealed,
        journal_seq=3,
        receipt=None,
    )
    return pay.envelope(payload, "payment")


def allocated(
    sealer: Sealer, pay: Payment, allocation_id: str, amount: int, *, with_phone: bool = True
) -> Envelope:
    payload = MedicalAccountAllocated(
        allocation_id=allocation_id,
        region="110000",
        period="2027",
        payer_id=pay.payer_id,
        amount=amount,
        allocated_at=datetime.now(UTC),
        payer_phone_masked=pay.phone_masked if with_phone else None,
        payer_phone_sealed=sealer.seal(pay.phone, aad=phone_aad(allocation_id))
        if with_phone
        else None,
    )
    return pay.envelope(payload, "payment")


async def _rows_of(n: Notify, *ids: str) -> list[asyncpg.Record]:
    async with n.pool.acquire() as conn:
        return list(
            await conn.fetch(
                "SELECT * FROM notifications WHERE payment_id = ANY($1::text[])"
                " ORDER BY created_at, id",
                list(ids),
            )
        )


async def _all_sent(n: Notify, count: int, *ids: str) -> list[asyncpg.Record] | None:
    rows = await _rows_of(n, *ids)
    return rows if len(rows) == count and all(r["state"] == "sent" for r in rows) else None


def _red() -> ReceiptRef:
    return ReceiptRef(
        code="11012327",
        number=f"{secrets.randbelow(10**10):010d}",
        check_code="R" + secrets.token_hex(3)[:5],
    )


async def test_refund_results_once_each(
    infra: Infra, new_database: Callable[..., Awaitable[str]], kafka_topics: TopicNames
) -> None:
    with capture_logs() as logs:
        async with running_notify(infra, new_database, kafka_topics, with_relay=True) as n:
            pay = _payment(n.sealer)
            red = _red()
            re_ok, re_bad = f"re_{uuid.uuid4().hex[:10]}", f"re_{uuid.uuid4().hex[:10]}"
            paid = pay.succeeded(38000)
            ok = refund_succeeded(pay, re_ok, 12345, red)
            bad = refund_failed(pay, re_bad, 25655)
            red_issued = red_receipt_issued(pay, re_ok, red)
            # The payment first (its notice names the payee the refunds name again), then
            # every refund event twice, the red receipt's own event included.
            await n.produce(paid)
            await eventually(lambda: _all_sent(n, 1, pay.payment_id))
            await n.produce(ok, red_issued, bad, ok, red_issued, bad)
            rows = await eventually(lambda: _all_sent(n, 3, pay.payment_id))

            # Redelivered after they were sent: nothing more. A later event of this payer
            # (same partition) is consumed after the copies.
            later = refund_failed(pay, f"re_{uuid.uuid4().hex[:10]}", 1)
            await n.produce(ok, bad, red_issued, later)
            rows = await eventually(lambda: _all_sent(n, 4, pay.payment_id))
            messages = await n.messages(pay.phone)
            sent_events = await _read_notify_topic(infra, kafka_topics, expected=4)

    texts = [m["text"] for m in messages]
    assert len(texts) == 4
    assert (
        texts.count(
            f"【医保】您向{BUREAU}支付的款项已退款123.45元，退回原银行卡，退款单号{re_ok}，"
            f"支付单号{pay.payment_id}。已开具红冲票据：票据代码{red.code}，票据号码{red.number}，"
            f"校验码{red.check_code}，可在医保服务查验真伪。"
        )
        == 1
    )
    assert (
        texts.count(
            f"【医保】您向{BUREAU}支付的款项退款256.55元未成功：银行未受理退款，"
            f"请稍后重新申请或联系客服。退款单号{re_bad}，支付单号{pay.payment_id}。"
        )
        == 1
    )
    assert not any("电子票据已开具" in t for t in texts)  # the red receipt: in the refund SMS

    by_source = {r["source_event_id"]: r for r in rows}
    for env in (ok, bad):
        row = by_source[env.event_id]
        assert row["kind"] == "refund_result"
        assert row["message_id"] == domain.message_id_for(env.event_id, "refund_result")
        assert row["id"] == domain.notification_id_for(env.event_id, "refund_result")
        assert row["attempts"] == 1
    assert {r["refund_id"] for r in rows if r["kind"] == "refund_result"} >= {re_ok, re_bad}
    assert sorted(e.payload.kind for e in sent_events) == [  # type: ignore[attr-defined]
        "payment_result",
        "refund_result",
        "refund_result",
        "refund_result",
    ]
    logged = json.dumps(logs, ensure_ascii=False, default=str)
    for clear in (pay.phone, red.check_code):
        assert clear not in logged
    for e in sent_events:
        assert pay.phone not in json.dumps(e.envelope.payload)
        assert red.check_code not in json.dumps(e.envelope.payload)


async def test_refund_of_a_payment_notify_never_saw_still_tells_the_amount(
    infra: Infra, new_database: Callable[..., Awaitable[str]], kafka_topics: TopicNames
) -> None:
    async with running_notify(infra, new_database, kafka_topics) as n:
        pay = _payment(n.sealer)
        refund_id = f"re_{uuid.uuid4().hex[:10]}"
        await n.produce(refund_succeeded(pay, refund_id, 500, None, method="wallet"))
        await eventually(lambda: _all_sent(n, 1, pay.payment_id))
        messages = await n.messages(pay.phone)
    assert [m["text"] for m in messages] == [
        f"【医保】您支付的款项已退款5.00元，退回零钱，退款单号{refund_id}，"
        f"支付单号{pay.payment_id}。"
    ]


async def test_medical_account_balance_changes_once_each(
    infra: Infra, new_database: Callable[..., Awaitable[str]], kafka_topics: TopicNames
) -> None:
    async with running_notify(infra, new_database, kafka_topics, with_relay=True) as n:
        pay = _payment(n.sealer)
        allocation_id = f"al_{uuid.uuid4().hex[:10]}"
        credit = allocated(n.sealer, pay, allocation_id, 100000)
        silent = allocated(n.sealer, pay, f"al_{uuid.uuid4().hex[:10]}", 700, with_phone=False)
        spend = medical_payment_succeeded(pay, 38000)
        await n.produce(credit, silent, spend, credit, silent, spend)
        ids = (allocation_id, pay.payment_id)
        await eventually(lambda: _all_sent(n, 3, *ids))

        # Another payment of the same payer: same partition, consumed after the copies.
        other = Payment(f"pay-{uuid.uuid4().hex[:12]}", pay.payer_id, pay.phone, n.sealer)
        later = other.declined(1)
        await n.produce(credit, spend, silent, later)

        async def settled() -> list[asyncpg.Record] | None:
            rows = await _rows_of(n, *ids)
            return rows if len(rows) == 3 and len(await n.messages(pay.phone)) == 4 else None

        rows = await eventually(settled)
        messages = await n.messages(pay.phone)
        sent_events = await _read_notify_topic(infra, kafka_topics, expected=4)

    texts = sorted(m["text"] for m in messages)
    assert texts == sorted(
        [
            "【医保】您的医保个人账户收入1,000.00元（北京市医疗保障局个账划入，所属期2027），"
            f"划入单号{allocation_id}。",
            f"【医保】您已成功向{BUREAU}支付380.00元，支付单号{pay.payment_id}。",
            f"【医保】您的医保个人账户支出380.00元（向{BUREAU}支付），支付单号{pay.payment_id}。",
            f"【医保】您向{BUREAU}支付0.01元未成功：短信验证码多次输入错误，请重新发起支付。"
            f"支付单号{other.payment_id}。",
        ]
    )
    kinds = sorted((r["payment_id"], r["kind"]) for r in rows if r["kind"] == "balance_change")
    assert kinds == sorted([(allocation_id, "balance_change"), (pay.payment_id, "balance_change")])
    credit_row = next(r for r in rows if r["payment_id"] == allocation_id)
    assert credit_row["source_event_id"] == credit.event_id
    assert credit_row["phone_masked"] == pay.phone_masked
    assert n.sealer.open(credit_row["phone_sealed"], aad=phone_aad(allocation_id)) == pay.phone
    assert all(r["attempts"] == 1 for r in rows)
    balance_events = [e for e in sent_events if e.payload.kind == "balance_change"]  # type: ignore[attr-defined]
    assert sorted(e.envelope.correlation_id or "" for e in balance_events) == sorted(ids)
