"""The refund state machine. Pure: no I/O.

A refund gives back part or all of a succeeded payment, the way the money came:
wallet and medical account at once (``RefundAuthorized`` for the ledger), a bank card
first through the bank (``awaiting_bank``, then ``RefundAuthorized`` with the bank's
confirmation). The ledger's refund entry (with the red receipt) makes it succeed; a
bank decline or a rejected posting makes it fail. The refunds of one payment, the
ones in flight included, never exceed what it paid. As in ``domain``, a command that
does not apply to the refund's state returns it unchanged with no payloads.

The daily cap is not given back by a refund: risk counts what was paid that day.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Literal, assert_never

from services.payment.domain import Payment, Status
from shared.errors import Conflict, DomainError
from shared.events import (
    BankConfirmation,
    DeclineCode,
    EventPayload,
    ReceiptRef,
    RefundAuthorized,
    RefundFailed,
    RefundSucceeded,
)
from shared.money import format_cny


class RefundStatus(StrEnum):
    AWAITING_BANK = "awaiting_bank"
    AUTHORIZED = "authorized"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


RefundPublicStatus = Literal["processing", "succeeded", "failed"]

REFUND_PUBLIC_STATUS: dict[RefundStatus, RefundPublicStatus] = {
    RefundStatus.AWAITING_BANK: "processing",
    RefundStatus.AUTHORIZED: "processing",
    RefundStatus.SUCCEEDED: "succeeded",
    RefundStatus.FAILED: "failed",
}


@dataclass(frozen=True)
class Refund:
    id: str
    payment_id: str
    amount: int
    reason: str
    status: RefundStatus
    bank_refund: BankConfirmation | None = None
    receipt: ReceiptRef | None = None
    journal_seq: int | None = None
    decline_code: DeclineCode | None = None
    decline_message: str | None = None

    @property
    def public_status(self) -> RefundPublicStatus:
        return REFUND_PUBLIC_STATUS[self.status]


@dataclass(frozen=True)
class ConfirmBankRefund:
    confirmation: BankConfirmation
    now: datetime


@dataclass(frozen=True)
class FailRefund:
    """The bank declined the refund, or the ledger rejected its posting."""

    decline_code: DeclineCode
    message: str


@dataclass(frozen=True)
class RecordRefundPosting:
    journal_seq: int
    receipt: ReceiptRef | None
    refunded_total: int  # of the payment, this refund included


RefundCommand = ConfirmBankRefund | FailRefund | RecordRefundPosting
RefundTransition = tuple[Refund, list[EventPayload]]


def check_refundable(payment: Payment, amount: int, committed: int) -> None:
    """Raise unless ``amount`` may be refunded; ``committed`` is what the payment's
    other refunds (succeeded or in flight) already give back."""
    if payment.status is not Status.SUCCEEDED:
        raise Conflict(
            f"the payment is {payment.public_status}; only a succeeded payment can be refunded",
            code="payment_not_refundable",
            param="payment_id",
            details={"payment_status": payment.public_status},
        )
    paid = payment.details.amount
    left = max(paid - committed, 0)
    if amount > left:
        raise DomainError(
            f"this refund of {format_cny(amount)} CNY is more than is left to refund: the"
            f" payment was {format_cny(paid)} CNY and {format_cny(committed)} CNY is refunded"
            f" or being refunded; refund at most {format_cny(left)} CNY",
            code="refund_exceeds_payment",
            param="amount",
            status=422,
            details={
                "payment_amount": paid,
                "refunded_amount": committed,
                "refundable_amount": left,
                "amount": amount,
            },
        )


def open_refund(
    payment: Payment, *, refund_id: str, amount: int, reason: str, committed: int, now: datetime
) -> RefundTransition:
    """A new refund of ``payment`` (which ``check_refundable`` accepts)."""
    check_refundable(payment, amount, committed)
    refund = Refund(refund_id, payment.id, amount, reason, RefundStatus.AUTHORIZED)
    if payment.details.method == "bank_card":
        return dataclasses.replace(refund, status=RefundStatus.AWAITING_BANK), []
    return refund, [_authorized(payment, refund, None, now)]


def starts_bank_refund(before: Refund | None, after: Refund) -> bool:
    """The refund waits for the bank: its bank call is to be written."""
    waiting = after.status is RefundStatus.AWAITING_BANK
    return waiting and (before is None or before.status is not RefundStatus.AWAITING_BANK)


def decide_refund(refund: Refund, payment: Payment, command: RefundCommand) -> RefundTransition:
    match command:
        case ConfirmBankRefund():
            if refund.status is not RefundStatus.AWAITING_BANK:
                return refund, []
            new = dataclasses.replace(
                refund, status=RefundStatus.AUTHORIZED, bank_refund=command.confirmation
            )
            return new, [_authorized(payment, refund, command.confirmation, command.now)]
        case FailRefund():
            if refund.status not in (RefundStatus.AWAITING_BANK, RefundStatus.AUTHORIZED):
                return refund, []
            new = dataclasses.replace(
                refund,
                status=RefundStatus.FAILED,
                decline_code=command.decline_code,
                decline_message=command.message,
            )
            failed = RefundFailed(
                **_outcome(payment, refund),
                decline_code=command.decline_code,
                message=command.message,
            )
            return new, [failed]
        case RecordRefundPosting():
            if refund.status is not RefundStatus.AUTHORIZED:
                return refund, []
            new = dataclasses.replace(
                refund,
                status=RefundStatus.SUCCEEDED,
                journal_seq=command.journal_seq,
                receipt=command.receipt,
            )
            succeeded = RefundSucceeded(
                **_outcome(payment, refund),
                journal_seq=command.journal_seq,
                receipt=command.receipt,
                original_receipt=payment.receipt,
                refunded_total=command.refunded_total,
            )
            return new, [succeeded]
        case _:
            assert_never(command)


def _outcome(payment: Payment, refund: Refund) -> dict[str, object]:
    d = payment.details
    return {
        "refund_id": refund.id,
        "payment_id": payment.id,
        "payer_id": d.payer_id,
        "amount": refund.amount,
        "currency": d.currency,
        "method": d.method,
        "payer_phone_masked": d.phone_masked_for_log(),
        "payer_phone_sealed": d.payer_phone_sealed,
    }


def _authorized(
    payment: Payment, refund: Refund, bank: BankConfirmation | None, now: datetime
) -> RefundAuthorized:
    d = payment.details
    assert payment.journal_seq is not None  # a succeeded payment was posted
    return RefundAuthorized(
        refund_id=refund.id,
        payment_id=payment.id,
        payer_id=d.payer_id,
        amount=refund.amount,
        currency=d.currency,
        method=d.method,
        purpose=d.purpose,
        payee_id=d.payee_id,
        payee_name=d.payee_name,
        original_journal_seq=payment.journal_seq,
        original_receipt=payment.receipt,
        bank_refund=bank,
        payer_phone_masked=d.phone_masked_for_log(),
        payer_phone_sealed=d.payer_phone_sealed,
        authorized_at=now,
        caller_id=d.caller_id,
    )
