"""Money from outside against real Kafka and PostgreSQL: an allocation funds a personal
medical account that then pays a premium; partial and full refunds post back the way
the money came, with red receipts linked to the original; an over-refund is refused;
redelivered events change nothing; the rebuild stays byte-identical."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from services.ledger import store
from shared.events import (
    BankConfirmation,
    Envelope,
    MedicalAccountAllocated,
    RefundAuthorized,
    new_event,
)
from tests.integration.test_ledger_flow import (
    Ledger,
    authorized,
    dump_projections,
    ledger,  # noqa: F401 - the fixture
    operator,
)

pytestmark = pytest.mark.integration


def allocation(payer: str, amount: int, allocation_id: str | None = None) -> Envelope:
    aid = allocation_id or f"al_{uuid.uuid4().hex[:16]}"
    payload = MedicalAccountAllocated(
        allocation_id=aid,
        region="110000",
        period="2027",
        payer_id=payer,
        amount=amount,
        allocated_at=datetime.now(UTC),
        payer_phone_masked="138****8000",
        payer_phone_sealed="v1.sealed-for-test",
    )
    return new_event(payload, producer="payment", key=payer, correlation_id=aid)


def refund(paid: Envelope, amount: int, refund_id: str | None = None) -> Envelope:
    p = paid.payload["payment"]
    rid = refund_id or f"re_{uuid.uuid4().hex[:16]}"
    bank = (
        BankConfirmation(reference=f"bk_{rid}", confirmed_at=datetime.now(UTC))
        if p["method"] == "bank_card"
        else None
    )
    payload = RefundAuthorized(
        refund_id=rid,
        payment_id=p["payment_id"],
        payer_id=p["payer_id"],
        amount=amount,
        method=p["method"],
        purpose=p["purpose"],
        payee_id=p["payee_id"],
        payee_name=p["payee_name"],
        original_journal_seq=1,
        original_receipt=None,
        bank_refund=bank,
        payer_phone_masked="138****8000",
        payer_phone_sealed="v1.sealed-for-test",
        authorized_at=datetime.now(UTC),
    )
    return new_event(payload, producer="payment", key=p["payer_id"], correlation_id=rid)


async def balance(stack: Ledger, account_id: str) -> int:
    # An operator: a payer known only from an allocation has no owning caller yet.
    r = await stack.http.get(f"/v1/accounts/{account_id}", headers=operator())
    assert r.status_code == 200, r.text
    return int(r.json()["balance"])


async def test_allocation_medical_payment_refunds_and_red_receipts(
    ledger: Ledger,  # noqa: F811 - the fixture imported above
) -> None:
    payer = f"u-{uuid.uuid4().hex[:8]}"
    funded = allocation(payer, 120_000)
    await ledger.publish(funded, funded)  # the same event twice: booked once
    await ledger.until("SELECT count(*) FROM journal", want=1)
    assert await balance(ledger, f"medical:{payer}") == 120_000
    assert await balance(ledger, "bureau:110000:medical_fund") == -120_000

    premium = authorized(payer, 79_500, method="medical_account", purpose="premium")
    await ledger.publish(premium)
    await ledger.until("SELECT count(*) FROM journal", want=2)
    assert await balance(ledger, f"medical:{payer}") == 40_500
    events = await ledger.ledger_events(3)
    original = events[1].payload.receipt  # type: ignore[attr-defined]
    assert original is not None

    partial, full = refund(premium, 30_000), refund(premium, 49_500)
    await ledger.publish(partial)
    await ledger.until("SELECT count(*) FROM journal", want=3)
    await ledger.publish(full, partial)  # the partial again: nothing more
    await ledger.until("SELECT count(*) FROM journal", want=4)
    assert await balance(ledger, f"medical:{payer}") == 120_000
    assert await balance(ledger, "bureau:110000:premium") == 0

    events = await ledger.ledger_events(7)
    kinds = [(e.event_type, e.payload.model_dump().get("kind")) for e in events]
    assert kinds[3:] == [
        ("JournalEntryPosted", "refund"),
        ("ReceiptIssued", None),
        ("JournalEntryPosted", "refund"),
        ("ReceiptIssued", None),
    ]
    reds = [events[4].payload, events[6].payload]
    assert [r.refund_id for r in reds] == [  # type: ignore[attr-defined]
        partial.payload["refund_id"],
        full.payload["refund_id"],
    ]
    numbers = [int(r.receipt["number"]) for r in reds]  # type: ignore[attr-defined]
    assert numbers == [int(original.number) + 1, int(original.number) + 2]

    # The original shows its reversals beside the signed face; a red one its original.
    r = await ledger.http.get(f"/v1/receipts/{original.code}/{original.number}", headers=operator())
    body = r.json()
    assert body["reversed_amount"] == 79_500 and body["kind"] == "original"
    assert [x["amount"] for x in body["reversals"]] == [30_000, 49_500]
    assert "relates_to" not in body["receipt"]
    red_face = reds[0].receipt  # type: ignore[attr-defined]
    r = await ledger.http.get(
        f"/v1/receipts/{red_face['code']}/{red_face['number']}", headers=operator()
    )
    red_body = r.json()
    assert red_body["kind"] == "red" and red_body["receipt"]["total"] == -30_000
    assert red_body["relates_to"] == {"code": original.code, "number": original.number}
    assert red_body["receipt"]["relates_to"] == red_body["relates_to"]

    check = {"code": original.code, "number": original.number, "check_code": original.check_code}
    verdict = (await ledger.http.post("/v1/receipts/verify", json=check)).json()
    assert verdict["valid"] is True and verdict["reversed_amount"] == 79_500
    red_check = {k: red_face[k] for k in ("code", "number", "check_code")}
    red_verdict = (await ledger.http.post("/v1/receipts/verify", json=red_check)).json()
    assert red_verdict["valid"] is True and red_verdict["receipt"]["total"] == -30_000
    assert red_verdict["relates_to"] == {"code": original.code, "number": original.number}
    page = await ledger.http.get(
        f"/v1/receipts/{original.code}/{original.number}",
        headers={"Accept": "text/html", **operator()},
    )
    assert "已被红冲" in page.text

    # Over-refund: refused with the refund's id, nothing posted.
    over = refund(premium, 1)
    await ledger.publish(over)
    events = await ledger.ledger_events(8)
    rejected = events[7]
    assert rejected.event_type == "PostingRejected"
    assert rejected.payload.refund_id == over.payload["refund_id"]  # type: ignore[attr-defined]
    assert rejected.payload.decline_code == "refund_exceeds_payment"  # type: ignore[attr-defined]
    assert await ledger.pool.fetchval("SELECT count(*) FROM journal") == 4

    # The projections rebuild byte-identically from ledger.v1 with the new kinds.
    async with ledger.pool.acquire() as conn:
        before = await dump_projections(conn)
        head = await store.rebuild_projections(conn, events)
        assert head.seq == 4
        assert await dump_projections(conn) == before
