"""The ledger's decisions: book an authorized payment, a refund or an allocation.

Pure: no I/O, no clock. Each ``decide_*`` takes what the handler loaded (a context:
the head, balances, the original entry) and returns one ``Decision``: the journal
entry and its receipt, or the rejection, and the ledger.v1 events that publish it
(sequence number, posting time, receipt number, check code and signature are all
decided here). ``services.ledger.domain.projector`` folds those events into balances
and receipts, the same way live and in replay.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from services.ledger.domain.accounts import (
    InvalidPosting,
    allocation_lines,
    destination_account,
    must_stay_non_negative,
    payment_route,
    posting_lines,
    premium_memo_lines,
    refund_lines,
    source_account,
    transaction_amount,
)
from services.ledger.domain.chain import EVENTS, LedgerHead, event_id_for, hash_of, transaction_id
from services.ledger.domain.receipts import (
    ReceiptPolicy,
    Signer,
    check_code,
    receipt_code,
    receipt_face,
    receipt_number,
    red_receipt_face,
    sign_face,
)
from shared.events import (
    Envelope,
    EventPayload,
    JournalEntryPosted,
    MedicalAccountAllocated,
    PaymentAuthorized,
    PaymentDetails,
    PostingRejected,
    ReceiptIssued,
    ReceiptRef,
    RefundAuthorized,
)
from shared.money import format_cny


@dataclass(frozen=True)
class PostingKeys:
    """Check codes are HMAC under ``check_key`` (the hash key's check-code purpose);
    receipts are signed by ``signer``, journal entries by ``journal_signer`` (the
    receipts' key when not given: one undivided key, as before issue 11)."""

    check_key: bytes
    signer: Signer
    journal_signer: Signer | None = None

    @property
    def journal(self) -> Signer:
        return self.journal_signer or self.signer


@dataclass(frozen=True)
class Posting:
    """An entry to append and, for a premium or its refund, its receipt."""

    entry: JournalEntryPosted
    receipt: ReceiptIssued | None


@dataclass(frozen=True)
class Decision:
    """What the handler persists in one go: the outcome and the events publishing it."""

    outcome: Posting | PostingRejected
    decided_at: datetime
    events: tuple[Envelope, ...]


@dataclass(frozen=True)
class PaymentContext:
    head: LedgerHead
    decided: str | None  # 'posted' / 'rejected' when the payment was decided before
    balances: Mapping[str, int]
    last_closed: date | None = None  # the last closed clearing day


@dataclass(frozen=True)
class RefundContext:
    head: LedgerHead
    decided: str | None  # 'posted' / 'rejected' when the refund was decided before
    original: JournalEntryPosted | None  # the payment's entry, None if not in the journal
    original_face: Mapping[str, Any] | None  # its receipt's face, for a premium
    refunded: int  # earlier refunds of the payment, summed
    balances: Mapping[str, int] = field(default_factory=dict)
    last_closed: date | None = None


@dataclass(frozen=True)
class AllocationContext:
    head: LedgerHead
    decided: str | None  # 'posted' when the allocation id was booked before
    last_closed: date | None = None


# ---------------------------------------------------------------------------
# Payments
# ---------------------------------------------------------------------------


def accounts_involved(payment: PaymentDetails) -> tuple[str, str]:
    """The accounts whose balances a decision about ``payment`` reads."""
    return source_account(payment), destination_account(payment)


def _insufficient(
    payment_id: str,
    payer_id: str,
    account_id: str,
    balance: int,
    amount: int,
    *,
    refund_id: str | None = None,
) -> PostingRejected:
    what = "wallet" if account_id.startswith("wallet:") else "personal medical account"
    other = "pay by bank card" if what != "wallet" else "top up the wallet or pay by bank card"
    if refund_id:
        other = "the wallet's money was spent; refund less or settle it with the payer"
    return PostingRejected(
        payment_id=payment_id,
        payer_id=payer_id,
        decline_code="insufficient_funds",
        account_id=account_id,
        balance=balance,
        amount=amount,
        message=(
            f"{what} balance {format_cny(balance)} CNY is less than the "
            f"{format_cny(amount)} CNY to {'refund' if refund_id else 'pay'}; {other}"
        ),
        refund_id=refund_id,
    )


def seal(unsealed: JournalEntryPosted, signer: Signer | None = None) -> JournalEntryPosted:
    """The entry with its hash and, given the ledger's key, its ``key_id`` (hashed) and
    ``signature`` (Ed25519 over the ASCII of the hash; not hashed)."""
    if signer is None:
        return unsealed.model_copy(update={"hash": hash_of(unsealed)})
    keyed = unsealed.model_copy(update={"key_id": signer.key_id})
    digest = hash_of(keyed)
    signature = base64.b64encode(signer.sign(digest.encode())).decode()
    return keyed.model_copy(update={"hash": digest, "signature": signature})


def _day(clearing_day: date | None) -> str | None:
    return clearing_day.isoformat() if clearing_day is not None else None


def decide_posting(
    balances: Mapping[str, int],
    head: LedgerHead,
    payment: PaymentDetails,
    *,
    now: datetime,
    keys: PostingKeys,
    policy: ReceiptPolicy | None = None,
    bank_reference: str | None = None,
    bank_confirmed_at: datetime | None = None,
    clearing_day: date | None = None,
) -> Posting | PostingRejected:
    """Post ``payment`` after ``head``, or reject it when the source cannot cover it.

    ``balances`` needs at least the payment's source account (missing means 0). With a
    ``clearing_day`` (live posting since settlement) the entry records it, is signed,
    and a premium adds its cash memo pair (``accounts.premium_memo_lines``).
    """
    policy = policy or ReceiptPolicy()
    source, destination = source_account(payment), destination_account(payment)
    balance = balances.get(source, 0)
    if must_stay_non_negative(source) and balance < payment.amount:
        return _insufficient(payment.payment_id, payment.payer_id, source, balance, payment.amount)

    posted_at = now.astimezone(UTC)
    receipt_ref: ReceiptRef | None = None
    face: dict[str, Any] | None = None
    if payment.purpose.type == "premium":
        code = receipt_code(payment.purpose.region, posted_at, policy)
        number = receipt_number(head.next_receipt_number(code))
        check = check_code(keys.check_key, code, number, payment.payment_id, payment.amount)
        receipt_ref = ReceiptRef(code=code, number=number, check_code=check)
        face = receipt_face(
            payment, code=code, number=number, check=check, posted_at=posted_at, policy=policy
        )

    lines = posting_lines(source, destination, payment.amount)
    settled = clearing_day is not None
    if settled and payment.purpose.type == "premium":
        lines += premium_memo_lines(payment.purpose.region, payment.amount)
    entry = seal(
        JournalEntryPosted(
            seq=head.seq + 1,
            transaction_id=transaction_id(payment.payment_id),
            payment_id=payment.payment_id,
            payer_id=payment.payer_id,
            kind=payment.purpose.type,
            lines=lines,
            currency=payment.currency,
            posted_at=posted_at,
            receipt=receipt_ref,
            prev_hash=head.hash,
            hash="",
            bank_reference=bank_reference,
            clearing_day=_day(clearing_day),
            bank_confirmed_at=bank_confirmed_at if settled else None,
        ),
        keys.journal if settled else None,
    )
    receipt = None
    if face is not None:
        receipt = ReceiptIssued(
            payment_id=payment.payment_id,
            payer_id=payment.payer_id,
            journal_seq=entry.seq,
            receipt=face,
            signature=sign_face(face, keys.signer),
            key_id=keys.signer.key_id,
            payer_phone_sealed=payment.payer_phone_sealed,
            caller_id=payment.caller_id,
            insured_id_hash=payment.beneficiary.id_number_hash,
            purpose=payment.purpose,
        )
    return Posting(entry=entry, receipt=receipt)


def bank_reference_of(authorized: PaymentAuthorized) -> str | None:
    """The bank's reference for a bank-card payment; refuses one the bank has not
    confirmed (the ledger books no bank-card money on the cashier's word)."""
    payment = authorized.payment
    if payment.method != "bank_card":
        return None
    if authorized.bank_debit is None:
        raise InvalidPosting(
            f"payment {payment.payment_id}: a bank_card payment needs the bank's "
            "confirmation (bank_debit) before the ledger books it; the payment service "
            "must publish PaymentAuthorized v2 with bank_debit once the bank confirms",
            param="bank_debit",
        )
    return authorized.bank_debit.reference


def decide_payment(
    authorized: PaymentAuthorized,
    context: PaymentContext,
    *,
    causation_id: uuid.UUID,
    now: datetime,
    keys: PostingKeys,
    policy: ReceiptPolicy,
    clearing_day: date | None = None,
) -> Decision:
    """``decide_posting`` for an authorized payment, with the events that publish it."""
    outcome = decide_posting(
        context.balances,
        context.head,
        authorized.payment,
        now=now,
        keys=keys,
        policy=policy,
        bank_reference=bank_reference_of(authorized),
        bank_confirmed_at=authorized.bank_debit.confirmed_at if authorized.bank_debit else None,
        clearing_day=clearing_day,
    )
    return decision(outcome, causation_id=causation_id, now=now)


# ---------------------------------------------------------------------------
# Refunds
# ---------------------------------------------------------------------------


def refund_problem(refund: RefundAuthorized, context: RefundContext) -> PostingRejected | None:
    """Why ``refund`` cannot be booked: its original is not in the journal, or it
    (with the payment's earlier refunds) exceeds what was paid."""
    original = context.original
    paid = transaction_amount(original) if original is not None else 0
    if original is None or original.kind not in ("premium", "wallet_topup"):
        message = (
            f"refund {refund.refund_id}: payment {refund.payment_id} is not in the journal; "
            "only a posted payment can be refunded"
        )
    elif context.refunded + refund.amount > paid:
        left = paid - context.refunded
        message = (
            f"refund {refund.refund_id} of {format_cny(refund.amount)} CNY exceeds what is "
            f"left of payment {refund.payment_id}: {format_cny(paid)} CNY paid, "
            f"{format_cny(context.refunded)} CNY refunded, {format_cny(left)} CNY left"
        )
    else:
        return None
    destination = payment_route(original)[1] if original is not None else ""
    return PostingRejected(
        payment_id=refund.payment_id,
        payer_id=refund.payer_id,
        decline_code="refund_exceeds_payment",
        account_id=destination,
        balance=max(paid - context.refunded, 0),
        amount=refund.amount,
        message=message,
        refund_id=refund.refund_id,
    )


def _red_receipt(
    refund: RefundAuthorized,
    original_face: Mapping[str, Any],
    head: LedgerHead,
    *,
    posted_at: datetime,
    keys: PostingKeys,
    policy: ReceiptPolicy,
) -> tuple[ReceiptRef, dict[str, Any]]:
    """The red receipt's reference and face: the next number of its code, its own check
    code (over the refund id), the original named in ``relates_to``."""
    code = receipt_code(refund.purpose.region, posted_at, policy)
    number = receipt_number(head.next_receipt_number(code))
    check = check_code(keys.check_key, code, number, refund.refund_id, refund.amount)
    face = red_receipt_face(
        original_face,
        refund_id=refund.refund_id,
        amount=refund.amount,
        code=code,
        number=number,
        check=check,
        posted_at=posted_at,
        policy=policy,
    )
    return ReceiptRef(code=code, number=number, check_code=check), face


def _red_receipt_issued(
    refund: RefundAuthorized, seq: int, face: dict[str, Any], keys: PostingKeys
) -> ReceiptIssued:
    return ReceiptIssued(
        payment_id=refund.payment_id,
        payer_id=refund.payer_id,
        journal_seq=seq,
        receipt=face,
        signature=sign_face(face, keys.signer),
        key_id=keys.signer.key_id,
        payer_phone_sealed=refund.payer_phone_sealed,
        refund_id=refund.refund_id,
        caller_id=refund.caller_id,
    )


def decide_refund_posting(
    refund: RefundAuthorized,
    context: RefundContext,
    *,
    now: datetime,
    keys: PostingKeys,
    policy: ReceiptPolicy,
    clearing_day: date | None = None,
) -> Posting | PostingRejected:
    """Book ``refund`` back the way its payment came, with a red receipt for a premium
    (with a ``clearing_day``: recorded, signed, the premium's cash memo pair reversed)."""
    problem = refund_problem(refund, context)
    if problem is not None:
        return problem
    original = context.original
    assert original is not None  # refund_problem refuses a refund without one
    settled = clearing_day is not None
    lines = refund_lines(original, refund.amount, memo=settled)
    debited = lines[0].account_id
    balance = context.balances.get(debited, 0)
    if must_stay_non_negative(debited) and balance < refund.amount:
        return _insufficient(
            refund.payment_id,
            refund.payer_id,
            debited,
            balance,
            refund.amount,
            refund_id=refund.refund_id,
        )
    posted_at, head = now.astimezone(UTC), context.head
    red = None
    if context.original_face is not None:
        red = _red_receipt(
            refund, context.original_face, head, posted_at=posted_at, keys=keys, policy=policy
        )
    bank = refund.bank_refund
    entry = seal(
        JournalEntryPosted(
            seq=head.seq + 1,
            transaction_id=transaction_id(refund.payment_id, refund.refund_id),
            payment_id=refund.payment_id,
            payer_id=refund.payer_id,
            kind="refund",
            lines=lines,
            currency=refund.currency,
            posted_at=posted_at,
            receipt=red[0] if red else None,
            prev_hash=head.hash,
            hash="",
            refund_id=refund.refund_id,
            bank_reference=bank.reference if bank else None,
            clearing_day=_day(clearing_day),
            bank_confirmed_at=bank.confirmed_at if bank and settled else None,
        ),
        keys.journal if settled else None,
    )
    receipt = _red_receipt_issued(refund, entry.seq, red[1], keys) if red else None
    return Posting(entry=entry, receipt=receipt)


def decide_refund(
    refund: RefundAuthorized,
    context: RefundContext,
    *,
    causation_id: uuid.UUID,
    now: datetime,
    keys: PostingKeys,
    policy: ReceiptPolicy,
    clearing_day: date | None = None,
) -> Decision:
    outcome = decide_refund_posting(
        refund, context, now=now, keys=keys, policy=policy, clearing_day=clearing_day
    )
    return decision(outcome, causation_id=causation_id, now=now)


# ---------------------------------------------------------------------------
# Allocations (个账划入)
# ---------------------------------------------------------------------------


def decide_allocation_posting(
    allocation: MedicalAccountAllocated,
    head: LedgerHead,
    *,
    now: datetime,
    signer: Signer | None = None,
    clearing_day: date | None = None,
) -> Posting:
    """One entry from the bureau's fund to ``medical:{payer}``; no receipt."""
    entry = seal(
        JournalEntryPosted(
            seq=head.seq + 1,
            transaction_id=transaction_id(allocation.allocation_id),
            payment_id=allocation.allocation_id,
            payer_id=allocation.payer_id,
            kind="allocation",
            lines=allocation_lines(allocation.region, allocation.payer_id, allocation.amount),
            currency=allocation.currency,
            posted_at=now.astimezone(UTC),
            receipt=None,
            prev_hash=head.hash,
            hash="",
            clearing_day=_day(clearing_day),
        ),
        signer if clearing_day is not None else None,
    )
    return Posting(entry=entry, receipt=None)


def decide_allocation(
    allocation: MedicalAccountAllocated,
    context: AllocationContext,
    *,
    causation_id: uuid.UUID,
    now: datetime,
    signer: Signer | None = None,
    clearing_day: date | None = None,
) -> Decision:
    outcome = decide_allocation_posting(
        allocation, context.head, now=now, signer=signer, clearing_day=clearing_day
    )
    return decision(outcome, causation_id=causation_id, now=now)


# ---------------------------------------------------------------------------
# The events of a decision
# ---------------------------------------------------------------------------


def decision(
    outcome: Posting | PostingRejected, *, causation_id: uuid.UUID, now: datetime
) -> Decision:
    """Wrap ``outcome`` with its ledger.v1 events (deterministic ids, key = payer)."""

    def wrap(
        payload: EventPayload, payment_id: str, payer_id: str, refund_id: str | None, at: datetime
    ) -> Envelope:
        return EVENTS.new(
            payload,
            key=payer_id,
            correlation_id=payment_id,
            causation_id=causation_id,
            occurred_at=at,
            event_id=event_id_for(payment_id, payload.event_type, refund_id),
        )

    if isinstance(outcome, PostingRejected):
        r = outcome
        return Decision(outcome, now, (wrap(r, r.payment_id, r.payer_id, r.refund_id, now),))
    entry = outcome.entry
    payloads: list[EventPayload] = [entry]
    if outcome.receipt is not None:
        payloads.append(outcome.receipt)
    return Decision(
        outcome,
        now,
        tuple(
            wrap(p, entry.payment_id, entry.payer_id, entry.refund_id, entry.posted_at)
            for p in payloads
        ),
    )
