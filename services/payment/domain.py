"""The payment state machine (input rules live in ``validation``).

Pure: no I/O. ``decide(payment, command)`` returns the payment's next state and the
payments.v1 payloads the transition emits. A command that does not apply to the
current state (a duplicate, late or out-of-order stimulus) returns the payment
unchanged and no payloads: it never raises, so a redelivered event cannot dead-letter.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal, assert_never

from shared.events import (
    BankConfirmation,
    DeclineCode,
    EventPayload,
    PaymentAuthorized,
    PaymentDeclined,
    PaymentDetails,
    PaymentFailed,
    PaymentRequested,
    PaymentSucceeded,
    PaymentVerificationRequired,
    PurposeType,
    ReceiptRef,
)

# ---------------------------------------------------------------------------
# The state machine
# ---------------------------------------------------------------------------


class Status(StrEnum):
    REQUESTED = "requested"
    REQUIRES_VERIFICATION = "requires_verification"
    AWAITING_BANK = "awaiting_bank"  # bank card: risk said yes, the bank has not yet
    AUTHORIZED = "authorized"
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    FAILED = "failed"


PublicStatus = Literal["processing", "requires_verification", "succeeded", "declined", "failed"]

PUBLIC_STATUS: dict[Status, PublicStatus] = {
    Status.REQUESTED: "processing",
    Status.REQUIRES_VERIFICATION: "requires_verification",
    Status.AWAITING_BANK: "processing",
    Status.AUTHORIZED: "processing",
    Status.SUCCEEDED: "succeeded",
    Status.DECLINED: "declined",
    Status.FAILED: "failed",
}

FINAL_STATES = frozenset({Status.SUCCEEDED, Status.DECLINED, Status.FAILED})


@dataclass(frozen=True)
class BankPolicy:
    """How long the bank is waited for and retried, and when bank-card money arrives."""

    deadline: timedelta = timedelta(seconds=120)
    retry_base: timedelta = timedelta(seconds=1)
    retry_max: timedelta = timedelta(seconds=15)
    watch: timedelta = timedelta(hours=24)
    arrival: timedelta = timedelta(hours=2)


@dataclass(frozen=True)
class Payment:
    """A payment as the rules see it."""

    details: PaymentDetails
    status: Status = Status.REQUESTED
    decline_code: DeclineCode | None = None
    decline_message: str | None = None
    challenge_id: str | None = None
    verification_expires_at: datetime | None = None
    stepped_up: bool = False
    receipt: ReceiptRef | None = None
    journal_seq: int | None = None
    bank_debit: BankConfirmation | None = None
    posted_at: datetime | None = None

    @property
    def id(self) -> str:
        return self.details.payment_id

    @property
    def public_status(self) -> PublicStatus:
        return PUBLIC_STATUS[self.status]


@dataclass(frozen=True)
class ApproveByRisk:
    """risk approved the payment within the daily cap."""


@dataclass(frozen=True)
class DeclineByRisk:
    decline_code: DeclineCode
    message: str


@dataclass(frozen=True)
class RequireStepUp:
    challenge_id: str
    expires_at: datetime


@dataclass(frozen=True)
class PassStepUp:
    """The resident's SMS code was right."""


@dataclass(frozen=True)
class FailStepUp:
    """The SMS challenge is dead (too many wrong codes, expired or closed)."""

    decline_code: DeclineCode | None


@dataclass(frozen=True)
class RecordPosting:
    """The ledger posted the payment into its journal."""

    journal_seq: int
    receipt: ReceiptRef | None
    posted_at: datetime | None = None


@dataclass(frozen=True)
class RejectPosting:
    decline_code: DeclineCode
    message: str


@dataclass(frozen=True)
class ConfirmDebit:
    """The bank confirmed the bank-card debit."""

    confirmation: BankConfirmation


@dataclass(frozen=True)
class FailDebit:
    """The bank declined the debit, or did not answer by the deadline."""

    decline_code: DeclineCode
    message: str


Command = (
    ApproveByRisk
    | DeclineByRisk
    | RequireStepUp
    | PassStepUp
    | FailStepUp
    | RecordPosting
    | RejectPosting
    | ConfirmDebit
    | FailDebit
)

DECLINE_MESSAGES: dict[str, str] = {
    "verification_failed": "the SMS code was entered wrongly too many times; start a new payment",
    "verification_expired": "the SMS code expired before it was entered; start a new payment",
    "bank_declined": "the bank declined the card payment; pay with another card or method",
    "bank_unavailable": "the bank did not answer in time; nothing was charged (a late debit"
    " is returned); try again later or pay with another method",
}

Transition = tuple[Payment, list[EventPayload]]


def request_payment(details: PaymentDetails) -> Transition:
    """A new payment, waiting for risk."""
    return Payment(details=details), [PaymentRequested(payment=details.for_log())]


def decide(payment: Payment, command: Command) -> Transition:
    """The next state of ``payment`` under ``command`` and the payloads to publish."""
    match command:
        case ApproveByRisk():
            return on_risk_approved(payment)
        case DeclineByRisk():
            return on_risk_declined(payment, command)
        case RequireStepUp():
            return on_step_up_required(payment, command)
        case PassStepUp():
            return on_step_up_passed(payment)
        case FailStepUp():
            return on_step_up_failed(payment, command)
        case RecordPosting():
            return on_posted(payment, command)
        case RejectPosting():
            return on_posting_rejected(payment, command)
        case ConfirmDebit():
            return on_debit_confirmed(payment, command)
        case FailDebit():
            return on_debit_failed(payment, command)
        case _:
            assert_never(command)


def on_risk_approved(payment: Payment) -> Transition:
    if payment.status is not Status.REQUESTED:
        return payment, []
    return _authorize(payment, stepped_up=False)


def on_risk_declined(payment: Payment, command: DeclineByRisk) -> Transition:
    if payment.status is not Status.REQUESTED:
        return payment, []
    return _decline(payment, command.decline_code, command.message)


def on_step_up_required(payment: Payment, command: RequireStepUp) -> Transition:
    if payment.status is Status.REQUIRES_VERIFICATION:
        # A resent code (same or fresh challenge) moves the expiry forward; anything that
        # does not is a stale copy.
        current = payment.verification_expires_at
        if current is not None and command.expires_at <= current:
            return payment, []
    elif payment.status is not Status.REQUESTED:
        return payment, []
    new = dataclasses.replace(
        payment,
        status=Status.REQUIRES_VERIFICATION,
        challenge_id=command.challenge_id,
        verification_expires_at=command.expires_at,
    )
    event = PaymentVerificationRequired(
        payment_id=payment.id, payer_id=payment.details.payer_id, expires_at=command.expires_at
    )
    return new, [event]


def on_step_up_passed(payment: Payment) -> Transition:
    if payment.status is not Status.REQUIRES_VERIFICATION:
        return payment, []
    return _authorize(payment, stepped_up=True)


def on_step_up_failed(payment: Payment, command: FailStepUp) -> Transition:
    if payment.status is not Status.REQUIRES_VERIFICATION:
        return payment, []
    code: DeclineCode = command.decline_code or "verification_failed"
    return _decline(payment, code, DECLINE_MESSAGES.get(code, "the SMS check failed"))


def on_posted(payment: Payment, command: RecordPosting) -> Transition:
    if payment.status is not Status.AUTHORIZED:
        return payment, []
    new = dataclasses.replace(
        payment,
        status=Status.SUCCEEDED,
        receipt=command.receipt,
        journal_seq=command.journal_seq,
        posted_at=command.posted_at,
    )
    event = PaymentSucceeded(
        **_outcome_fields(payment), journal_seq=command.journal_seq, receipt=command.receipt
    )
    return new, [event]


def on_posting_rejected(payment: Payment, command: RejectPosting) -> Transition:
    if payment.status is not Status.AUTHORIZED:
        return payment, []
    return _fail(payment, command.decline_code, command.message)


def on_debit_confirmed(payment: Payment, command: ConfirmDebit) -> Transition:
    if payment.status is not Status.AWAITING_BANK:
        return payment, []
    new = dataclasses.replace(payment, status=Status.AUTHORIZED, bank_debit=command.confirmation)
    event = PaymentAuthorized(
        payment=payment.details.for_log(),
        stepped_up=payment.stepped_up,
        bank_debit=command.confirmation,
    )
    return new, [event]


def on_debit_failed(payment: Payment, command: FailDebit) -> Transition:
    if payment.status is not Status.AWAITING_BANK:
        return payment, []
    return _fail(payment, command.decline_code, command.message)


def _fail(payment: Payment, code: DeclineCode, message: str) -> Transition:
    new = dataclasses.replace(
        payment,
        status=Status.FAILED,
        decline_code=code,
        decline_message=message,
    )
    event = PaymentFailed(**_outcome_fields(payment), decline_code=code, message=message)
    return new, [event]


def _authorize(payment: Payment, *, stepped_up: bool) -> Transition:
    """Risk's yes. A bank card then waits for the bank (no event until it confirms: the
    ledger books only confirmed money); wallet and medical account are authorized."""
    if payment.details.method == "bank_card":
        new = dataclasses.replace(
            payment,
            status=Status.AWAITING_BANK,
            stepped_up=stepped_up,
            verification_expires_at=None,
        )
        return new, []
    new = dataclasses.replace(
        payment, status=Status.AUTHORIZED, stepped_up=stepped_up, verification_expires_at=None
    )
    return new, [PaymentAuthorized(payment=payment.details.for_log(), stepped_up=stepped_up)]


def starts_bank_debit(before: Payment, after: Payment) -> bool:
    """The transition put the payment in awaiting_bank: its bank call is to be written."""
    return after.status is Status.AWAITING_BANK and before.status is not Status.AWAITING_BANK


def funds(payment: Payment, policy: BankPolicy) -> tuple[datetime | None, datetime | None]:
    """(expected_by, arrived_at) of the payment's money.

    Wallet and medical account: expected at once (when requested), arrived when the
    ledger posted it. Bank card: expected within ``policy.arrival`` of the bank's
    confirmation (unknown before it), arrived when the ledger posted it (it books the
    debit right after the bank's confirmation). A payment that did not succeed brings
    no money: both None.
    """
    if payment.status in (Status.DECLINED, Status.FAILED):
        return None, None
    if payment.details.method == "bank_card":
        confirmed = payment.bank_debit
        expected = confirmed.confirmed_at + policy.arrival if confirmed is not None else None
    else:
        expected = payment.details.requested_at
    return expected, payment.posted_at


# ---------------------------------------------------------------------------
# Payments stuck in a non-final state
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StuckPolicy:
    """When a payment that has not moved is looked at (``StuckPaymentSweeper``)."""

    after: timedelta = timedelta(minutes=10)  # requested / authorized without a move
    verification_grace: timedelta = timedelta(minutes=2)  # past the code's expiry


StuckAction = Literal["republish", "expire_verification"]


def stuck_action(
    payment: Payment,
    *,
    updated_at: datetime,
    nudged_at: datetime | None,
    now: datetime,
    policy: StuckPolicy,
) -> StuckAction | None:
    """What to do with a payment that may be stuck, or None (it is not).

    - ``requested`` (risk has not answered) or ``authorized`` (the ledger has not):
      publish its last event again, at most once per ``policy.after``. Both readers
      decide once per payment (risk under the payer-day lock, the ledger by payment
      id), so a copy never reserves or books twice; it only moves a pipeline that
      lost the first one.
    - ``requires_verification`` past its code's expiry (plus a grace for risk's own
      sweeper): the code can no longer be accepted, so the payment is declined
      ``verification_expired`` (its PaymentDeclined releases the cap reservation).
    - ``awaiting_bank`` is the bank worker's (its deadline fails it ``bank_unavailable``);
      final states are never touched.
    """
    if payment.status is Status.REQUIRES_VERIFICATION:
        expires = payment.verification_expires_at
        if expires is not None and now >= expires + policy.verification_grace:
            return "expire_verification"
        return None
    if payment.status not in (Status.REQUESTED, Status.AUTHORIZED):
        return None
    last_move = max(updated_at, nudged_at) if nudged_at is not None else updated_at
    return "republish" if now - last_move >= policy.after else None


def last_event(payment: Payment) -> EventPayload:
    """The event that should have moved a ``requested`` or ``authorized`` payment on."""
    if payment.status is Status.REQUESTED:
        return PaymentRequested(payment=payment.details.for_log())
    if payment.status is Status.AUTHORIZED:
        return PaymentAuthorized(
            payment=payment.details.for_log(),
            stepped_up=payment.stepped_up,
            bank_debit=payment.bank_debit,
        )
    raise ValueError(f"a {payment.status.value} payment has no event to publish again")


def _decline(payment: Payment, code: DeclineCode, message: str) -> Transition:
    new = dataclasses.replace(
        payment,
        status=Status.DECLINED,
        decline_code=code,
        decline_message=message,
        verification_expires_at=None,
    )
    event = PaymentDeclined(**_outcome_fields(payment), decline_code=code, message=message)
    return new, [event]


def _outcome_fields(payment: Payment) -> dict[str, Any]:
    d = payment.details
    purpose_type: PurposeType = d.purpose.type
    return {
        "payment_id": d.payment_id,
        "payer_id": d.payer_id,
        "amount": d.amount,
        "currency": d.currency,
        "method": d.method,
        "purpose_type": purpose_type,
        "payee_name": d.payee_name,
        "payer_phone_masked": d.phone_masked_for_log(),
        "payer_phone_sealed": d.payer_phone_sealed,
    }
