"""The refund state machine: pure transitions, limits, and no-ops on stale input."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.payment import domain, refund_domain
from services.payment.refund_domain import (
    ConfirmBankRefund,
    FailRefund,
    RecordRefundPosting,
    RefundStatus,
)
from shared.errors import Conflict, DomainError
from shared.events import (
    BankConfirmation,
    ReceiptRef,
    RefundAuthorized,
    RefundFailed,
    RefundSucceeded,
)
from tests.unit.test_payment_state_machine import details

NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
RECEIPT = ReceiptRef(code="11060126", number="0000000001", check_code="abc123")
RED = ReceiptRef(code="11060126", number="0000000002", check_code="def456")


def paid(method: str = "wallet") -> domain.Payment:
    return domain.Payment(
        details=details(method=method),
        status=domain.Status.SUCCEEDED,
        receipt=RECEIPT,
        journal_seq=7,
    )


def opened(method: str = "wallet", amount: int = 1000) -> refund_domain.RefundTransition:
    return refund_domain.open_refund(
        paid(method), refund_id="re_1", amount=amount, reason="r", committed=0, now=NOW
    )


def test_wallet_and_medical_account_refunds_are_authorized_at_once() -> None:
    for method in ("wallet", "medical_account"):
        refund, [event] = opened(method)
        assert refund.status is RefundStatus.AUTHORIZED
        assert refund.public_status == "processing"
        assert isinstance(event, RefundAuthorized)
        assert (event.original_journal_seq, event.original_receipt) == (7, RECEIPT)
        assert event.bank_refund is None


def test_a_bank_card_refund_waits_for_the_bank_then_is_authorized_with_its_yes() -> None:
    refund, events = opened("bank_card")
    assert (refund.status, events) == (RefundStatus.AWAITING_BANK, [])
    assert refund_domain.starts_bank_refund(None, refund)
    yes = BankConfirmation(reference="re_1", confirmed_at=NOW)
    after, [event] = refund_domain.decide_refund(
        refund, paid("bank_card"), ConfirmBankRefund(yes, NOW)
    )
    assert after.status is RefundStatus.AUTHORIZED
    assert isinstance(event, RefundAuthorized)
    assert event.bank_refund == yes


def test_a_bank_decline_fails_the_refund() -> None:
    refund, _ = opened("bank_card")
    after, [event] = refund_domain.decide_refund(
        refund, paid("bank_card"), FailRefund("bank_declined", "no")
    )
    assert after.status is RefundStatus.FAILED
    assert isinstance(event, RefundFailed)
    assert event.decline_code == "bank_declined"


def test_the_ledgers_entry_makes_it_succeed_with_the_red_receipt_once() -> None:
    refund, _ = opened()
    posting = RecordRefundPosting(9, RED, refunded_total=1000)
    after, [event] = refund_domain.decide_refund(refund, paid(), posting)
    assert (after.status, after.receipt, after.journal_seq) == (RefundStatus.SUCCEEDED, RED, 9)
    assert isinstance(event, RefundSucceeded)
    assert (event.receipt, event.original_receipt, event.refunded_total) == (RED, RECEIPT, 1000)
    assert refund_domain.decide_refund(after, paid(), posting) == (after, [])
    assert refund_domain.decide_refund(after, paid(), FailRefund("insufficient_funds", "x")) == (
        after,
        [],
    )


@pytest.mark.parametrize("status", [s for s in domain.Status if s is not domain.Status.SUCCEEDED])
def test_only_a_succeeded_payment_is_refundable(status: domain.Status) -> None:
    payment = dataclasses.replace(paid(), status=status)
    with pytest.raises(Conflict) as caught:
        refund_domain.check_refundable(payment, 1, 0)
    assert caught.value.code == "payment_not_refundable"


@given(committed=st.integers(0, 38000), amount=st.integers(1, 80000))
def test_refunds_never_exceed_what_was_paid(committed: int, amount: int) -> None:
    payment = paid()  # 38000 fen
    if committed + amount <= 38000:
        refund_domain.check_refundable(payment, amount, committed)
        return
    with pytest.raises(DomainError) as caught:
        refund_domain.check_refundable(payment, amount, committed)
    error = caught.value
    assert (error.code, error.status, error.param) == ("refund_exceeds_payment", 422, "amount")
    assert error.details["refundable_amount"] == 38000 - committed
