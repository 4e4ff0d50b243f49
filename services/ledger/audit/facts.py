"""What the audit reads from a payments.v1 event: a few fields, not the model.

``facts_of`` runs where the event is decoded (a replay worker: ``verify.payment_facts``,
or the fold's own process) and ``rules.Auditor.payment_facts`` folds the result, so a
replay ships a small tuple between processes instead of a pydantic model. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from shared.errors import UndecodableEvent
from shared.events import (
    Envelope,
    Event,
    MedicalAccountAllocated,
    PaymentSucceeded,
    PersonalDataErased,
    ReceiptRef,
    RefundSucceeded,
    decode_payload,
)


class Says(StrEnum):
    """What a payments.v1 event claims, as far as the audit is concerned."""

    PAYMENT = "payment"  # PaymentSucceeded
    REFUND = "refund"  # RefundSucceeded
    ALLOCATION = "allocation"  # MedicalAccountAllocated
    ERASURE = "erasure"  # PersonalDataErased
    OTHER = "other"  # everything else: counted, not cross-checked


@dataclass(frozen=True, slots=True)
class PaymentFacts:
    says: Says
    event_id: str
    payment_id: str = ""
    amount: int = 0
    journal_seq: int = 0
    receipt: str | None = None  # code/number/check code
    refund_id: str = ""
    allocation_id: str = ""
    key_ids: tuple[str, ...] = ()


def receipt_ref_text(ref: ReceiptRef | None) -> str | None:
    return f"{ref.code}/{ref.number}/{ref.check_code}" if ref else None


def facts_of(event: Event) -> PaymentFacts:
    s, event_id = event.payload, str(event.event_id)
    if isinstance(s, RefundSucceeded):
        return PaymentFacts(
            Says.REFUND,
            event_id,
            payment_id=s.payment_id,
            amount=s.amount,
            journal_seq=s.journal_seq,
            refund_id=s.refund_id,
        )
    if isinstance(s, MedicalAccountAllocated):
        return PaymentFacts(
            Says.ALLOCATION, event_id, amount=s.amount, allocation_id=s.allocation_id
        )
    if isinstance(s, PersonalDataErased):
        return PaymentFacts(Says.ERASURE, event_id, key_ids=tuple(s.key_ids))
    if isinstance(s, PaymentSucceeded):
        return PaymentFacts(
            Says.PAYMENT,
            event_id,
            payment_id=s.payment_id,
            amount=s.amount,
            journal_seq=s.journal_seq,
            receipt=receipt_ref_text(s.receipt),
        )
    return PaymentFacts(Says.OTHER, event_id)


def event_of_value(value: dict[str, Any]) -> Event:
    """An export line's ``value`` (the envelope's JSON object) decoded as ``decode`` does
    a message; raises ``UndecodableEvent``."""
    try:
        envelope = Envelope.model_validate(value)
    except ValidationError as exc:
        raise UndecodableEvent(f"not a valid envelope: {exc.errors()[:2]}") from exc
    return Event(envelope, decode_payload(envelope))
