"""payments.v1 → ledger: book an authorized payment, an allocation or a refund, or
reject it, in one transaction.

Each handler loads once (the context, under the head row lock that serializes
posting), decides once (a pure ``domain.posting.decide_*``) and persists once
(``store.record_decision``: journal row, projection and outbox rows), all before the
lock is released at commit. An event the ledger must not book (a bank-card payment
without the bank's confirmation) raises ``InvalidPosting``: the consumer retries it,
then dead-letters it with that message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time

import asyncpg
import structlog

from services.ledger import store
from services.ledger.domain.clearing import DEFAULT_CUTOFF, posting_day
from services.ledger.domain.posting import (
    Decision,
    Posting,
    PostingKeys,
    decide_allocation,
    decide_payment,
    decide_refund,
)
from services.ledger.domain.receipts import ReceiptPolicy
from shared.consumer import Handler
from shared.events import Event, MedicalAccountAllocated, PaymentAuthorized, RefundAuthorized
from shared.money import utcnow

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class PostingSetup:
    """What every ledger handler needs: where to publish, the keys, the receipt policy,
    the clock and the clearing cut-off (each posting's clearing day is decided here)."""

    ledger_topic: str
    keys: PostingKeys
    policy: ReceiptPolicy
    clock: Clock = utcnow
    cutoff: time = DEFAULT_CUTOFF

    def clearing_day(self, now: datetime, last_closed: date | None) -> date:
        return posting_day(now, self.cutoff, last_closed)


def build_handlers(setup: PostingSetup) -> dict[str, Handler]:
    """event_type → handler, for ``shared.consumer.InboxConsumer``."""

    async def payment_authorized(conn: asyncpg.Connection, event: Event) -> None:
        await on_payment_authorized(setup, conn, event)

    async def medical_account_allocated(conn: asyncpg.Connection, event: Event) -> None:
        await on_medical_account_allocated(setup, conn, event)

    async def refund_authorized(conn: asyncpg.Connection, event: Event) -> None:
        await on_refund_authorized(setup, conn, event)

    return {
        "PaymentAuthorized": payment_authorized,
        "MedicalAccountAllocated": medical_account_allocated,
        "RefundAuthorized": refund_authorized,
    }


def _log_decision(decision: Decision, **ids: str) -> None:
    bound = log.bind(**ids)
    outcome = decision.outcome
    if isinstance(outcome, Posting):
        entry = outcome.entry
        ref = entry.receipt
        bound.info(
            "journal_entry_posted",
            seq=entry.seq,
            kind=entry.kind,
            receipt=f"{ref.code}/{ref.number}" if ref else None,
        )
    else:
        bound.info(
            "posting_rejected",
            decline_code=outcome.decline_code,
            account_id=outcome.account_id,
            balance=outcome.balance,
            amount=outcome.amount,
        )


async def on_payment_authorized(
    setup: PostingSetup, conn: asyncpg.Connection, event: Event
) -> None:
    authorized = event.payload
    assert isinstance(authorized, PaymentAuthorized)
    payment = authorized.payment
    ids = {"payment_id": payment.payment_id, "payer_id": payment.payer_id}
    context = await store.payment_context(conn, payment)
    if context.decided is not None:
        log.info("posting_skipped_already_decided", earlier=context.decided, **ids)
        return
    now = setup.clock()
    decision = decide_payment(
        authorized,
        context,
        causation_id=event.event_id,
        now=now,
        keys=setup.keys,
        policy=setup.policy,
        clearing_day=setup.clearing_day(now, context.last_closed),
    )
    await store.record_decision(conn, context.head, decision, topic=setup.ledger_topic)
    _log_decision(decision, **ids)


async def on_medical_account_allocated(
    setup: PostingSetup, conn: asyncpg.Connection, event: Event
) -> None:
    allocation = event.payload
    assert isinstance(allocation, MedicalAccountAllocated)
    ids = {"allocation_id": allocation.allocation_id, "payer_id": allocation.payer_id}
    context = await store.allocation_context(conn, allocation.allocation_id)
    if context.decided is not None:
        log.info("allocation_skipped_already_posted", **ids)
        return
    now = setup.clock()
    decision = decide_allocation(
        allocation,
        context,
        causation_id=event.event_id,
        now=now,
        signer=setup.keys.signer,
        clearing_day=setup.clearing_day(now, context.last_closed),
    )
    await store.record_decision(conn, context.head, decision, topic=setup.ledger_topic)
    _log_decision(decision, **ids)


async def on_refund_authorized(setup: PostingSetup, conn: asyncpg.Connection, event: Event) -> None:
    refund = event.payload
    assert isinstance(refund, RefundAuthorized)
    ids = {"refund_id": refund.refund_id, "payment_id": refund.payment_id}
    context = await store.refund_context(conn, refund)
    if context.decided is not None:
        log.info("refund_skipped_already_decided", earlier=context.decided, **ids)
        return
    now = setup.clock()
    decision = decide_refund(
        refund,
        context,
        causation_id=event.event_id,
        now=now,
        keys=setup.keys,
        policy=setup.policy,
        clearing_day=setup.clearing_day(now, context.last_closed),
    )
    await store.record_decision(conn, context.head, decision, topic=setup.ledger_topic)
    _log_decision(decision, **ids)
