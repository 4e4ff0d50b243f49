"""Moving a stored payment through its state machine, and reading it for a caller.

``apply_command`` is the one transactional step every stimulus goes through (risk.v1
and ledger.v1 events, the resident's SMS code, the bank's answer): lock the payment
row, call the pure ``domain.decide``, store the new state (with the bank debit it
starts, in the same statement; the stored payment is built from what was read and
decided, not read back) and stage its payments.v1 events in the outbox, all in the
caller's transaction. ``apply_commands`` does the same for a run of a consumer's
events in fewer statements (issue 13). A stimulus that does not apply
to the current state changes nothing, so a redelivered event is a no-op.
"""

from __future__ import annotations

import uuid

import asyncpg
import structlog

from services.payment import domain, store, webhooks
from services.payment.schemas import PaymentPublic, public_view
from services.payment.store import StoredPayment
from shared.errors import NotFound
from shared.events import Envelope, EventFactory, EventPayload
from shared.outbox import write_outbox

log = structlog.get_logger(__name__)

EVENTS = EventFactory("payment")


async def stage_events(
    conn: asyncpg.Connection,
    topic: str,
    payloads: list[EventPayload],
    *,
    key: str,
    correlation_id: str,
    causation_id: uuid.UUID | None,
) -> list[str]:
    """Write ``payloads`` to the outbox in the caller's transaction; their event types."""
    envelopes = [
        EVENTS.new(p, key=key, correlation_id=correlation_id, causation_id=causation_id)
        for p in payloads
    ]
    await write_outbox(conn, topic, envelopes)
    return [e.event_type for e in envelopes]


async def apply_command(
    conn: asyncpg.Connection,
    *,
    payments_topic: str,
    payment_id: str,
    command: domain.Command,
    causation_id: uuid.UUID | None,
    locked: StoredPayment | None = None,
) -> StoredPayment | None:
    """Lock the payment, decide, store the new state and its events; None if unknown.

    Must run inside a transaction on ``conn``; ``locked``: the payment as already
    locked (FOR UPDATE) and read in it.
    """
    stored = locked or await store.get_payment(conn, payment_id, for_update=True)
    if stored is None:
        log.warning("payment_unknown", payment_id=payment_id, command=type(command).__name__)
        return None
    saved, envelopes = await _transition(conn, stored, command, causation_id, {})
    await write_outbox(conn, payments_topic, envelopes)
    return saved


Step = tuple[str, domain.Command, uuid.UUID | None]  # payment id, command, causing event


async def apply_commands(
    conn: asyncpg.Connection, *, payments_topic: str, steps: list[Step]
) -> None:
    """``apply_command`` of each step in turn, with the effects it would have, in
    fewer statements: the payments locked at once (in id order), the webhook
    endpoints asked once per caller and event type, the events staged in one write.
    Must run inside a transaction on ``conn``."""
    locked = await store.lock_payments(conn, [payment_id for payment_id, _, _ in steps])
    known: webhooks.Wanting = {}
    envelopes: list[Envelope] = []
    for payment_id, command, causation_id in steps:
        stored = locked.get(payment_id)
        if stored is None:
            log.warning("payment_unknown", payment_id=payment_id, command=type(command).__name__)
            continue
        with structlog.contextvars.bound_contextvars(payment_id=payment_id):
            locked[payment_id], staged = await _transition(
                conn, stored, command, causation_id, known
            )
        envelopes.extend(staged)
    await write_outbox(conn, payments_topic, envelopes)


async def _transition(
    conn: asyncpg.Connection,
    stored: StoredPayment,
    command: domain.Command,
    causation_id: uuid.UUID | None,
    known: webhooks.Wanting,
) -> tuple[StoredPayment, list[Envelope]]:
    """Decide, store the new state (with its webhook event): the payment as saved and
    the payments.v1 events to stage."""
    payment_id = stored.payment.id
    new, payloads = domain.decide(stored.payment, command)
    if not payloads and new == stored.payment:
        log.debug(
            "stimulus_ignored",
            payment_id=payment_id,
            status=stored.payment.status.value,
            command=type(command).__name__,
        )
        return stored, []
    # Same statement as awaiting_bank: the BankWorker will ask the bank, with the
    # payment id as the stable reference.
    saved = await store.save_state(
        conn, new, stored=stored, stage_debit=domain.starts_bank_debit(stored.payment, new)
    )
    await webhooks.record_payment_change(conn, stored.payment.public_status, saved, known)
    envelopes = [
        EVENTS.new(
            p, key=new.details.payer_id, correlation_id=payment_id, causation_id=causation_id
        )
        for p in payloads
    ]
    # One line per payment at its end (succeeded, declined, failed); the steps between
    # are debug.
    level = log.info if new.status in domain.FINAL_STATES else log.debug
    level(
        "payment_transition",
        payment_id=payment_id,
        from_status=stored.payment.status.value,
        to_status=new.status.value,
        events=[e.event_type for e in envelopes],
    )
    return saved, envelopes


def not_found(payment_id: str) -> NotFound:
    """Another caller's payment gets the answer of a payment that does not exist: 404,
    not 403, so a caller cannot learn that an id exists (see ``payer_domain.payer_not_found``).
    The same goes for verification, resend and refunds of it."""
    return NotFound(f"no payment {payment_id!r} for this caller; check the id", param="id")


async def read_payment(
    conn: asyncpg.Connection | asyncpg.Pool, payment_id: str, *, caller: str
) -> StoredPayment:
    """The caller's own payment, or 404 (someone else's payment is not found either)."""
    stored = await store.get_payment(conn, payment_id, caller=caller)
    if stored is None:
        raise not_found(payment_id)
    return stored


async def view_payment(
    pool: asyncpg.Pool, payment_id: str, *, caller: str, policy: domain.BankPolicy
) -> PaymentPublic:
    """``GET /v1/payments/{id}``: the caller's payment as the API shows it, with its
    refunds and when its money is expected and arrived."""
    stored = await read_payment(pool, payment_id, caller=caller)
    totals = await store.refund_totals(pool, payment_id)
    return public_view(stored, totals=totals, policy=policy)
