"""risk.v1 and ledger.v1 handlers: lock the payment, apply the rules, stage the events.

Each handler runs inside the consumer's open transaction (the inbox dedups by
event_id). A stimulus that does not apply to the payment's state is a no-op, so a
duplicate, late or out-of-order event changes nothing and never dead-letters.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import asyncpg
import structlog

from services.payment import domain, store
from services.payment.store import StoredPayment
from shared.consumer import Handler
from shared.events import (
    Event,
    JournalEntryPosted,
    PostingRejected,
    RiskApproved,
    RiskDeclined,
    StepUpFailed,
    StepUpPassed,
    StepUpRequired,
    new_event,
)
from shared.outbox import write_outbox

log = structlog.get_logger(__name__)


async def apply_command(
    conn: asyncpg.Connection,
    *,
    payments_topic: str,
    payment_id: str,
    command: domain.Command,
    causation_id: uuid.UUID | None,
) -> StoredPayment | None:
    """Lock the payment, decide, store the new state and its events; None if unknown.

    Must run inside a transaction on ``conn``.
    """
    stored = await store.get_payment(conn, payment_id, for_update=True)
    if stored is None:
        log.warning("payment_unknown", payment_id=payment_id, command=type(command).__name__)
        return None
    new, payloads = domain.decide(stored.payment, command)
    if not payloads and new == stored.payment:
        log.info(
            "stimulus_ignored",
            payment_id=payment_id,
            status=stored.payment.status.value,
            command=type(command).__name__,
        )
        return stored
    saved = await store.save_state(conn, new)
    envelopes = [
        new_event(
            p,
            producer="payment",
            key=new.details.payer_id,
            correlation_id=payment_id,
            causation_id=causation_id,
        )
        for p in payloads
    ]
    await write_outbox(conn, payments_topic, envelopes)
    log.info(
        "payment_transition",
        payment_id=payment_id,
        from_status=stored.payment.status.value,
        to_status=new.status.value,
        events=[e.event_type for e in envelopes],
    )
    return saved


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
            return p.payment_id, domain.Post(p.seq, p.receipt)
        case PostingRejected():
            return p.payment_id, domain.RejectPosting(p.decline_code, p.message)
    return None


async def handle_event(conn: asyncpg.Connection, event: Event, *, payments_topic: str) -> None:
    """Apply one risk.v1 or ledger.v1 event to its payment."""
    found = command_of(event)
    if found is None:
        return
    payment_id, command = found
    with structlog.contextvars.bound_contextvars(payment_id=payment_id):
        await apply_command(
            conn,
            payments_topic=payments_topic,
            payment_id=payment_id,
            command=command,
            causation_id=event.event_id,
        )


HANDLED_EVENTS = (
    RiskApproved,
    RiskDeclined,
    StepUpRequired,
    StepUpPassed,
    StepUpFailed,
    JournalEntryPosted,
    PostingRejected,
)


def build_handlers(payments_topic: str) -> Mapping[str, Handler]:
    """The InboxConsumer handler map for risk.v1 and ledger.v1."""

    async def handle(conn: asyncpg.Connection, event: Event) -> None:
        await handle_event(conn, event, payments_topic=payments_topic)

    return {cls.event_type: handle for cls in HANDLED_EVENTS}
