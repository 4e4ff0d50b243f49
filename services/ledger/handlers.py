"""payments.v1 → ledger: book an authorized payment, an allocation or a refund, or
reject it, in one transaction.

Each handler loads once (the context, under the head row lock that serializes
posting), decides once (a pure ``domain.posting.decide_*``) and persists once
(``store.record_decision``: journal row, projection and outbox rows), all before the
lock is released at commit; ``LedgerHandlers._book`` is that sequence, the handlers
differ in what they load and decide. An event the ledger must not book (a bank-card payment
without the bank's confirmation) raises ``InvalidPosting``: the consumer retries it,
then dead-letters it with that message.

Runs (issue 13): the consumer hands a run of consecutive payments, allocations and
refunds to ``LedgerHandlers.post_run`` (``shared.consumer.Batched``), which takes the
head lock once, decides each event in memory with the same ``decide_*`` and writes
every table once (``services.ledger.batch``); the one-event handlers stay the
reference it equals byte for byte, and the path the consumer takes after a failure.

Owners (issue 11): ``PayerEnrolled`` books nothing; it records which caller owns the
payer (``owners.record_owner``), as the ``caller_id`` of a payment or refund does for
payers enrolled before that event, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time
from functools import partial
from typing import Protocol

import asyncpg
import structlog

from services.ledger import batch, owners, store
from services.ledger.domain.chain import LedgerHead
from services.ledger.domain.clearing import DEFAULT_CUTOFF, posting_day
from services.ledger.domain.posting import (
    AllocationContext,
    Decision,
    PaymentContext,
    Posting,
    PostingKeys,
    RefundContext,
    accounts_involved,
    decide_allocation,
    decide_payment,
    decide_refund,
)
from services.ledger.domain.receipts import ReceiptPolicy
from shared.consumer import Batched, Handler
from shared.events import (
    Event,
    MedicalAccountAllocated,
    PayerEnrolled,
    PaymentAuthorized,
    PaymentDetails,
    RefundAuthorized,
)
from shared.money import utcnow
from shared.person_keys import PersonKeyCopies

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


class PostingContext(Protocol):
    """What every posting context holds (``domain.posting.PaymentContext``, …)."""

    @property
    def head(self) -> LedgerHead: ...
    @property
    def decided(self) -> str | None: ...
    @property
    def last_closed(self) -> date | None: ...


class Decide(Protocol):
    """A ``domain.posting.decide_*`` with all but the moment and its clearing day given."""

    def __call__(self, *, now: datetime, clearing_day: date) -> Decision: ...


def build_handlers(setup: PostingSetup) -> dict[str, Handler]:
    """The InboxConsumer handler map for payments.v1 and person-keys.v1: event_type →
    ``on_<event name>``; payments, allocations and refunds also in runs (``post_run``)."""
    h = LedgerHandlers(setup)
    return {
        PaymentAuthorized.event_type: Batched(h.on_payment_authorized, h.post_run),
        MedicalAccountAllocated.event_type: Batched(h.on_medical_account_allocated, h.post_run),
        RefundAuthorized.event_type: Batched(h.on_refund_authorized, h.post_run),
        PayerEnrolled.event_type: h.on_payer_enrolled,
        # The ledger shows receipt faces at read time: a missing key is shown erased.
        **PersonKeyCopies(None, remember_erased=False).handlers(),
    }


def payer_id_hash(payment: PaymentDetails) -> str | None:
    """The payer's keyed ID hash: carried since issue 11, else the beneficiary's when
    the payer insures themself."""
    if payment.payer_id_hash:
        return payment.payer_id_hash
    b = payment.beneficiary
    return b.id_number_hash if b.relation == "self" else None


def named_owner(payment: PaymentDetails) -> owners.NamedOwner | None:
    """The owner a payment names (payers enrolled before PayerEnrolled), if any."""
    if not payment.caller_id:
        return None
    return owners.NamedOwner(
        payment.payer_id, payment.caller_id, payer_id_hash(payment), payment.requested_at
    )


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


class LedgerHandlers:
    """payments.v1 → the journal: a payment, an allocation or a refund, booked once."""

    def __init__(self, setup: PostingSetup) -> None:
        self._setup = setup

    def _payment_decider(
        self, event: Event, authorized: PaymentAuthorized, context: PaymentContext
    ) -> Decide:
        return partial(
            decide_payment,
            authorized,
            context,
            causation_id=event.event_id,
            keys=self._setup.keys,
            policy=self._setup.policy,
        )

    def _allocation_decider(
        self, event: Event, allocation: MedicalAccountAllocated, context: AllocationContext
    ) -> Decide:
        return partial(
            decide_allocation,
            allocation,
            context,
            causation_id=event.event_id,
            signer=self._setup.keys.journal,
        )

    async def on_payment_authorized(self, conn: asyncpg.Connection, event: Event) -> None:
        authorized = event.payload
        assert isinstance(authorized, PaymentAuthorized)
        payment = authorized.payment
        ids = {"payment_id": payment.payment_id, "payer_id": payment.payer_id}
        context = await store.payment_context(conn, payment)
        decide = self._payment_decider(event, authorized, context)
        await self._book(conn, context, decide, "posting_skipped_already_decided", ids)
        named = named_owner(payment)
        if named is not None:  # payers enrolled before PayerEnrolled: owner from here
            await owners.record_owner(
                conn, named.payer_id, named.caller_id, named.id_number_hash, named.at
            )

    async def on_medical_account_allocated(self, conn: asyncpg.Connection, event: Event) -> None:
        allocation = event.payload
        assert isinstance(allocation, MedicalAccountAllocated)
        ids = {"allocation_id": allocation.allocation_id, "payer_id": allocation.payer_id}
        context = await store.allocation_context(conn, allocation.allocation_id)
        decide = self._allocation_decider(event, allocation, context)
        await self._book(conn, context, decide, "allocation_skipped_already_posted", ids)

    async def post_run(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        """``on_payment_authorized`` / ``on_medical_account_allocated`` /
        ``on_refund_authorized`` for each of ``events`` in order, with the head locked
        once and each table written once (``services.ledger.batch``): the same rows,
        hashes, receipts and events."""
        books = await batch.open_books(conn, events)
        named: list[owners.NamedOwner] = []
        posted: list[tuple[Decision, dict[str, str]]] = []
        for event in events:
            payload = event.payload
            if isinstance(payload, PaymentAuthorized):
                payment = payload.payment
                ids = {"payment_id": payment.payment_id, "payer_id": payment.payer_id}
                decided = books.decided(payment.payment_id)
                if decided is None:  # raises InvalidPosting as payment_context does
                    await books.read(conn, accounts_involved(payment))
                context = PaymentContext(books.head, decided, books.balances, books.last_closed)
                decide = self._payment_decider(event, payload, context)
                skipped = "posting_skipped_already_decided"
                owner = named_owner(payment)
                if owner is not None:
                    named.append(owner)
            elif isinstance(payload, MedicalAccountAllocated):
                ids = {"allocation_id": payload.allocation_id, "payer_id": payload.payer_id}
                decided = books.decided(payload.allocation_id, rejections=False)
                context_a = AllocationContext(books.head, decided, books.last_closed)
                decide = self._allocation_decider(event, payload, context_a)
                skipped = "allocation_skipped_already_posted"
            elif isinstance(payload, RefundAuthorized):
                ids = {"refund_id": payload.refund_id, "payment_id": payload.payment_id}
                context_r = await books.refund_context(conn, payload)
                decided = context_r.decided
                decide = self._refund_decider(event, payload, context_r)
                skipped = "refund_skipped_already_decided"
                if payload.caller_id:
                    named.append(
                        owners.NamedOwner(
                            payload.payer_id, payload.caller_id, None, payload.authorized_at
                        )
                    )
            else:
                raise TypeError(f"{event.event_type} is not booked in a run")
            if decided is not None:
                log.info(skipped, earlier=decided, **ids)
                continue
            now = self._setup.clock()
            decision = decide(
                now=now, clearing_day=self._setup.clearing_day(now, books.last_closed)
            )
            if isinstance(decision.outcome, Posting):
                await books.read(conn, (x.account_id for x in decision.outcome.entry.lines))
            books.record(decision)
            posted.append((decision, ids))
        await books.write(conn, self._setup.ledger_topic)
        await owners.record_owners(conn, named)
        for decision, ids in posted:  # once written, as the single path logs
            _log_decision(decision, **ids)

    async def on_refund_authorized(self, conn: asyncpg.Connection, event: Event) -> None:
        refund = event.payload
        assert isinstance(refund, RefundAuthorized)
        ids = {"refund_id": refund.refund_id, "payment_id": refund.payment_id}
        context = await store.refund_context(conn, refund)
        decide = self._refund_decider(event, refund, context)
        await self._book(conn, context, decide, "refund_skipped_already_decided", ids)
        if refund.caller_id:
            await owners.record_owner(
                conn, refund.payer_id, refund.caller_id, None, refund.authorized_at
            )

    def _refund_decider(
        self, event: Event, refund: RefundAuthorized, context: RefundContext
    ) -> Decide:
        return partial(
            decide_refund,
            refund,
            context,
            causation_id=event.event_id,
            keys=self._setup.keys,
            policy=self._setup.policy,
        )

    async def on_payer_enrolled(self, conn: asyncpg.Connection, event: Event) -> None:
        """The owner of a payer's accounts (issue 11); nothing is booked."""
        enrolled = event.payload
        assert isinstance(enrolled, PayerEnrolled)
        await owners.record_owner(
            conn,
            enrolled.payer_id,
            enrolled.caller_id,
            enrolled.id_number_hash,
            enrolled.enrolled_at,
        )
        log.info("payer_owner_recorded", payer_id=enrolled.payer_id, caller=enrolled.caller_id)

    async def _book(
        self,
        conn: asyncpg.Connection,
        context: PostingContext,
        decide: Decide,
        skipped: str,
        ids: dict[str, str],
    ) -> None:
        """Decide on ``context`` now, on the clearing day it falls in, and record the
        decision (journal, projections, outbox); logged as ``skipped`` when the event
        was decided before."""
        if context.decided is not None:
            log.info(skipped, earlier=context.decided, **ids)
            return
        now = self._setup.clock()
        decision = decide(now=now, clearing_day=self._setup.clearing_day(now, context.last_closed))
        await store.record_decision(conn, context.head, decision, topic=self._setup.ledger_topic)
        _log_decision(decision, **ids)
