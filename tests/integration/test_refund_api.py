"""Refunds over HTTP against a real PostgreSQL: limits (in-flight refunds count),
ownership, idempotency, and the ledger's refund entry or rejection settling them."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from shared.events import (
    JournalEntryPosted,
    JournalLine,
    ReceiptRef,
    RiskApproved,
)
from tests.integration import test_payment_api
from tests.integration.test_payment_api import OTHER_KEY, Service, body, headers, rejected

pytestmark = pytest.mark.integration

service = test_payment_api.service  # the payment API over a fresh database (fixture)
RECEIPT = ReceiptRef(code="11060126", number="0000000001", check_code="abc123")
RED = ReceiptRef(code="11060126", number="0000000002", check_code="def456")


def entry(payment: dict[str, Any], seq: int, **fields: Any) -> JournalEntryPosted:
    values: dict[str, Any] = {
        "seq": seq,
        "transaction_id": f"tx-{seq}",
        "payment_id": payment["id"],
        "payer_id": payment["payer_id"],
        "kind": "premium",
        "lines": (
            JournalLine(account_id=f"wallet:{payment['payer_id']}", amount=-payment["amount"]),
            JournalLine(account_id="bureau:110000:premium", amount=payment["amount"]),
        ),
        "posted_at": payment["created_at"],
        "receipt": RECEIPT,
        "prev_hash": "0" * 64,
        "hash": "1" * 64,
    }
    values.update(fields)
    return JournalEntryPosted(**values)


async def succeeded(service: Service, method: str = "wallet") -> dict[str, Any]:
    payment = await service.create(body(method=method))
    await service.feed(
        RiskApproved(
            payment_id=payment["id"],
            payer_id=payment["payer_id"],
            day="2026-11-26",
            cap=5_000_000,
            used=38000,
            remaining=4_962_000,
        )
    )
    await service.feed(entry(payment, 1), producer="ledger")
    return payment


async def refund(
    service: Service, payment_id: str, amount: int, key: str | None = None, **h: str
) -> Any:
    return await service.client.post(
        f"/v1/payments/{payment_id}/refunds",
        json={"amount": amount, "reason": "cancelled"},
        headers={**headers(key), **h},
    )


async def test_a_wallet_refund_is_authorized_at_once_then_succeeds_with_its_red_receipt(
    service: Service,
) -> None:
    payment = await succeeded(service)
    answer = await refund(service, payment["id"], 10000)
    assert answer.status_code == 202, answer.text
    created = answer.json()
    assert set(created) == {"id", "payment_id", "amount", "status", "receipt"}
    assert created["id"].startswith("re_")
    assert (created["payment_id"], created["amount"], created["status"]) == (
        payment["id"],
        10000,
        "processing",
    )
    [authorized] = [
        e["event"] for e in await service.outbox(payment["id"]) if e["type"] == "RefundAuthorized"
    ]
    assert authorized.payload.original_journal_seq == 1
    assert authorized.payload.original_receipt == RECEIPT
    assert authorized.payload.bank_refund is None
    posted = entry(payment, 2, kind="refund", refund_id=created["id"], receipt=RED)
    await service.feed(posted, producer="ledger")
    await service.feed(posted, producer="ledger")  # redelivered: no second outcome
    shown = (await service.client.get(f"/v1/refunds/{created['id']}", headers=headers())).json()
    assert shown["status"] == "succeeded"
    assert shown["receipt"] == RED.model_dump()
    outcomes = [
        e["event"] for e in await service.outbox(payment["id"]) if e["type"] == "RefundSucceeded"
    ]
    assert len(outcomes) == 1
    assert outcomes[0].payload.refunded_total == 10000
    paid = (await service.client.get(f"/v1/payments/{payment['id']}", headers=headers())).json()
    assert paid["refunded_amount"] == 10000
    assert paid["refunds"] == [created["id"]]
    assert paid["status"] == "succeeded"


async def test_refunds_never_exceed_the_payment_in_flight_ones_included(service: Service) -> None:
    payment = await succeeded(service)
    assert (await refund(service, payment["id"], 30000)).status_code == 202
    over = await refund(service, payment["id"], 8001)
    assert over.status_code == 422
    error = over.json()["error"]
    assert error["code"] == "refund_exceeds_payment"
    assert error["param"] == "amount"
    assert (error["payment_amount"], error["refunded_amount"], error["refundable_amount"]) == (
        38000,
        30000,
        8000,
    )
    assert (await refund(service, payment["id"], 8000)).status_code == 202


async def test_concurrent_refunds_are_checked_one_after_the_other(service: Service) -> None:
    payment = await succeeded(service)
    answers = await asyncio.gather(*(refund(service, payment["id"], 20000) for _ in range(4)))
    assert sorted(a.status_code for a in answers) == [202, 422, 422, 422]


async def test_a_payment_that_did_not_succeed_is_not_refundable(service: Service) -> None:
    payment = await service.create(body(method="wallet"))
    answer = await refund(service, payment["id"], 100)
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "payment_not_refundable"


async def test_unknown_and_other_callers_payments_and_refunds_are_not_found(
    service: Service,
) -> None:
    payment = await succeeded(service)
    assert (await refund(service, "pay_nope", 100)).status_code == 404
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    assert (await refund(service, payment["id"], 100, **other)).status_code == 404
    mine = (await refund(service, payment["id"], 100)).json()
    assert (await service.client.get(f"/v1/refunds/{mine['id']}", headers=other)).status_code == 404
    assert (await service.client.get("/v1/refunds/re_nope", headers=headers())).status_code == 404


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"amount": 0, "reason": "x"}, "amount"),
        ({"amount": "100", "reason": "x"}, "amount"),
        ({"amount": 1.5, "reason": "x"}, "amount"),
        ({"amount": 100}, "reason"),
        ({"amount": 100, "reason": " "}, "reason"),
        ({"amount": 100, "reason": "x", "extra": 1}, "extra"),
    ],
)
async def test_bad_refund_bodies_are_400_naming_the_field(
    service: Service, payload: dict[str, Any], param: str
) -> None:
    payment = await succeeded(service)
    answer = await service.client.post(
        f"/v1/payments/{payment['id']}/refunds", json=payload, headers=headers()
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == param


async def test_a_refund_replays_by_idempotency_key(service: Service) -> None:
    payment = await succeeded(service)
    key = uuid.uuid4().hex
    first = await refund(service, payment["id"], 5000, key=key)
    again = await refund(service, payment["id"], 5000, key=key)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.content == first.content
    assert again.headers.get("idempotent-replayed") == "true"
    other = await refund(service, payment["id"], 6000, key=key)
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"


async def test_a_rejected_refund_posting_fails_the_refund(service: Service) -> None:
    payment = await succeeded(service)
    created = (await refund(service, payment["id"], 1000)).json()
    refused = rejected(
        payment,
        "the bureau account cannot give back more than it holds",
        account_id="bureau:110000:premium",
        amount=1000,
        refund_id=created["id"],
    )
    await service.feed(refused, producer="ledger")
    shown = (await service.client.get(f"/v1/refunds/{created['id']}", headers=headers())).json()
    assert shown["status"] == "failed"
    assert "RefundFailed" in [e["type"] for e in await service.outbox(payment["id"])]
    # a failed refund no longer counts against the payment
    assert (await refund(service, payment["id"], 38000)).status_code == 202
