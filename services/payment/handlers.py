"""risk.v1 and ledger.v1 handlers: each turns its event into a state-machine command.

Each handler runs inside the consumer's open transaction (the inbox dedups by
event_id) and goes through ``payments.apply_command`` (or, for the ledger's refund
entries and rejections, ``refunds.apply_refund_command``); each is ``Batched``, so a
run of events goes through ``payments.apply_commands`` in fewer statements. A stimulus that does not
apply to the state is a no-op, so a duplicate, late or out-of-order event changes
nothing and never dead-letters. Entries that concern no payment (allocations,
settlement transfers and their arrivals: ``NOT_A_PAYMENT``) are skipped.
"""

from __future__ import annotations

import asyncpg
import structlog

from services.payment import domain, refund_domain, store
from services.payment.config import PaymentSettings
from services.payment.payments import Step, apply_command, apply_commands
from services.payment.refunds import apply_refund_command
from shared.consumer import Batched, Handler
from shared.events import (
    EntryKind,
    Event,
    JournalEntryPosted,
    PostingRejected,
    RiskApproved,
    RiskDeclined,
    StepUpFailed,
    StepUpPassed,
    StepUpRequired,
)
from shared.topics import TopicNames

log = structlog.get_logger(__name__)

# Journal entry kinds that book no payment of ours: a bureau's allocation (个账划入), a
# closed day's transfer (its payment_id is the transfer reference) and its arrival.
NOT_A_PAYMENT: frozenset[EntryKind] = frozenset({"allocation", "settlement", "settlement_arrival"})


def command_of(event: Event) -> tuple[str, domain.Command] | None:
    """The payment a risk.v1/ledger.v1 event is about and the command it means."""
    p = event.payload
    match p:
        case RiskApproved():
            return p.payment_id, domain.ApproveByRisk()
        case RiskDeclined():
            return p.payment_id, domain.DeclineByRisk(p.decline_code, p.message)
        case StepUpRequired():
            return p.payment_id, domain.RequireStepUp(p.challenge_id, p.expires_at)
        case StepUpPassed():
            return p.payment_id, domain.PassStepUp()
        case StepUpFailed():
            if not p.final:
                return None  # a wrong code with tries left changes nothing here
            return p.payment_id, domain.FailStepUp(p.decline_code)
        case JournalEntryPosted():
            return p.payment_id, domain.RecordPosting(p.seq, p.receipt, p.posted_at)
        case PostingRejected():
            return p.payment_id, domain.RejectPosting(p.decline_code, p.message)
    return None


def _alone(event: Event) -> bool:
    """Whether the event takes its own path (a refund's entry or rejection), not a
    payment's command."""
    p = event.payload
    if isinstance(p, JournalEntryPosted):
        return p.kind == "refund"
    return isinstance(p, PostingRejected) and p.refund_id is not None


class PaymentHandlers:
    """risk.v1 and ledger.v1 → the payment state machine."""

    def __init__(self, topics: TopicNames) -> None:
        self._topics = topics

    async def on_payment_event(self, conn: asyncpg.Connection, event: Event) -> None:
        """Apply one risk.v1 or ledger.v1 event to the payment it names."""
        found = command_of(event)
        if found is None:
            return
        payment_id, command = found
        with structlog.contextvars.bound_contextvars(payment_id=payment_id):
            await apply_command(
                conn,
                payments_topic=self._topics.payments,
                payment_id=payment_id,
                command=command,
                causation_id=event.event_id,
            )

    async def on_events(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        """A run of risk.v1 and ledger.v1 events (``Batched``): what each event's own
        handler would do in turn. Consecutive payment commands go through
        ``apply_commands`` together; a refund's entry or rejection is applied alone,
        in its place."""
        steps: list[Step] = []
        for event in events:
            if _alone(event):
                await self._apply(conn, steps)
                steps = []
                await self._one(conn, event)
                continue
            p = event.payload
            if isinstance(p, JournalEntryPosted) and p.kind in NOT_A_PAYMENT:
                continue
            found = command_of(event)
            if found is not None:
                steps.append((found[0], found[1], event.event_id))
        await self._apply(conn, steps)

    async def _apply(self, conn: asyncpg.Connection, steps: list[Step]) -> None:
        if steps:
            await apply_commands(conn, payments_topic=self._topics.payments, steps=steps)

    async def _one(self, conn: asyncpg.Connection, event: Event) -> None:
        if isinstance(event.payload, JournalEntryPosted):
            await self.on_journal_entry_posted(conn, event)
        else:
            await self.on_posting_rejected(conn, event)

    on_risk_approved = on_payment_event
    on_risk_declined = on_payment_event
    on_step_up_required = on_payment_event
    on_step_up_passed = on_payment_event
    on_step_up_failed = on_payment_event

    async def on_journal_entry_posted(self, conn: asyncpg.Connection, event: Event) -> None:
        """A payment posted, or a refund (with its red receipt) posted; other entries
        (``NOT_A_PAYMENT``) are not ours."""
        p = event.payload
        assert isinstance(p, JournalEntryPosted)
        if p.kind in NOT_A_PAYMENT:
            return
        if p.kind != "refund":
            await self.on_payment_event(conn, event)
            return
        if p.refund_id is None:
            log.warning("refund_entry_without_refund_id", seq=p.seq)
            return
        await store.get_payment(conn, p.payment_id, for_update=True)  # the lock order
        refund = await store.get_refund(conn, p.refund_id)
        totals = await store.refund_totals(conn, p.payment_id)
        this = refund.refund.amount if refund is not None else 0
        command = refund_domain.RecordRefundPosting(p.seq, p.receipt, totals.succeeded + this)
        with structlog.contextvars.bound_contextvars(payment_id=p.payment_id):
            await apply_refund_command(
                conn, self._topics, p.refund_id, command, causation_id=event.event_id
            )

    async def on_posting_rejected(self, conn: asyncpg.Connection, event: Event) -> None:
        """A payment's posting, or a refund's, was rejected."""
        p = event.payload
        assert isinstance(p, PostingRejected)
        if p.refund_id is None:
            await self.on_payment_event(conn, event)
            return
        command = refund_domain.FailRefund(p.decline_code, p.message)
        with structlog.contextvars.bound_contextvars(payment_id=p.payment_id):
            await apply_refund_command(
                conn, self._topics, p.refund_id, command, causation_id=event.event_id
            )


def build_handlers(settings: PaymentSettings) -> dict[str, Handler]:
    """The InboxConsumer handler map for risk.v1 and ledger.v1: event_type →
    ``on_<event name>``."""
    h = PaymentHandlers(settings.topics)
    return {
        RiskApproved.event_type: Batched(h.on_risk_approved, h.on_events),
        RiskDeclined.event_type: Batched(h.on_risk_declined, h.on_events),
        StepUpRequired.event_type: Batched(h.on_step_up_required, h.on_events),
        StepUpPassed.event_type: Batched(h.on_step_up_passed, h.on_events),
        StepUpFailed.event_type: Batched(h.on_step_up_failed, h.on_events),
        JournalEntryPosted.event_type: Batched(h.on_journal_entry_posted, h.on_events),
        PostingRejected.event_type: Batched(h.on_posting_rejected, h.on_events),
    }
