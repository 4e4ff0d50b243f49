"""Refunds: asked over HTTP, sent to the bank (bank card) or the ledger at once, and
settled by the ledger's refund entry (with its red receipt) on ledger.v1.

``Refunds.create`` locks the payment row, so two refunds of one payment are checked
one after the other against what it paid (refunds in flight count), and stores the
refund with its ``RefundAuthorized`` (or its bank call) in one transaction, once per
(caller, Idempotency-Key). ``apply_refund_command`` is the one transactional step of
every later stimulus (the bank's answer, the ledger's entry or rejection).
"""

from __future__ import annotations

import base64
import secrets
import uuid

import asyncpg
import structlog

from services.payment import refund_domain, store, validation, webhooks
from services.payment.config import PaymentSettings
from services.payment.intake import IdempotentRequests, IntakeResponse
from services.payment.payments import not_found, stage_events
from services.payment.refund_domain import RefundCommand
from services.payment.schemas import RefundCreate, RefundPublic, refund_view
from services.payment.store import StoredRefund
from shared.crypto import KeyPurpose
from shared.errors import NotFound
from shared.money import utcnow
from shared.topics import TopicNames

log = structlog.get_logger(__name__)


def refund_route(payment_id: str) -> str:
    return f"POST /v1/payments/{payment_id}/refunds"


def new_refund_id() -> str:
    """``re_`` + 120 random bits in base32 (see ``intake.new_payment_id``)."""
    return "re_" + base64.b32encode(secrets.token_bytes(15)).decode().lower()


async def apply_refund_command(
    conn: asyncpg.Connection,
    topics: TopicNames,
    refund_id: str,
    command: RefundCommand,
    *,
    causation_id: uuid.UUID | None,
) -> StoredRefund | None:
    """Lock the payment then the refund, decide, store, stage the events; None if unknown.

    Must run inside a transaction on ``conn``.
    """
    found = await store.get_refund(conn, refund_id)
    if found is None:
        log.warning("refund_unknown", refund_id=refund_id, command=type(command).__name__)
        return None
    payment = await store.get_payment(conn, found.refund.payment_id, for_update=True)
    stored = await store.get_refund(conn, refund_id, for_update=True)
    assert payment is not None  # refunds and payments are never deleted
    assert stored is not None
    new, payloads = refund_domain.decide_refund(stored.refund, payment.payment, command)
    if not payloads and new == stored.refund:
        log.info("refund_stimulus_ignored", refund_id=refund_id, status=stored.refund.status.value)
        return stored
    saved = await store.save_refund(conn, new)
    await webhooks.record_refund_change(conn, stored.refund.public_status, saved)
    types = await stage_events(
        conn,
        topics.payments,
        payloads,
        key=payment.payment.details.payer_id,
        correlation_id=payment.payment.id,
        causation_id=causation_id,
    )
    log.info(
        "refund_transition",
        refund_id=refund_id,
        from_status=stored.refund.status.value,
        to_status=new.status.value,
        events=types,
    )
    return saved


def _refund_not_found(refund_id: str) -> NotFound:
    return NotFound(f"no refund {refund_id!r} for this caller; check the id", param="id")


class Refunds:
    def __init__(
        self, settings: PaymentSettings, pool: asyncpg.Pool, requests: IdempotentRequests
    ) -> None:
        self._pool = pool
        self._requests = requests
        self._topics = settings.topics
        self._fingerprint_key = settings.hash_key_for(KeyPurpose.FINGERPRINT)

    async def create(
        self, caller: str, key: str, payment_id: str, body: RefundCreate
    ) -> IntakeResponse:
        """Refund part of the caller's payment, once per (caller, key): 202 processing."""
        fingerprint = validation.request_fingerprint(
            self._fingerprint_key, refund_route(payment_id), body.model_dump(mode="json")
        )

        async def open_refund(conn: asyncpg.Connection) -> tuple[str, int, str]:
            saved = await self._open(conn, caller, payment_id, body)
            return saved.refund.id, 202, refund_view(saved).model_dump_json()

        return await self._requests.once(caller, key, fingerprint, open_refund)

    async def _open(
        self, conn: asyncpg.Connection, caller: str, payment_id: str, body: RefundCreate
    ) -> StoredRefund:
        stored = await store.get_payment(conn, payment_id, caller=caller, for_update=True)
        if stored is None:
            raise not_found(payment_id)
        payment = stored.payment
        totals = await store.refund_totals(conn, payment_id)
        refund, payloads = refund_domain.open_refund(
            payment,
            refund_id=new_refund_id(),
            amount=body.amount,
            reason=body.reason,
            committed=totals.committed,
            now=utcnow(),
        )
        saved = await store.insert_refund(conn, refund, caller=caller)
        if refund_domain.starts_bank_refund(None, refund):
            await store.insert_bank_call(
                conn,
                reference=refund.id,
                kind="refund",
                payment_id=payment_id,
                refund_id=refund.id,
                debit_reference=payment.bank_debit.reference if payment.bank_debit else payment_id,
                payer_ref=payment.details.payer_id,
                amount=refund.amount,
            )
        await stage_events(
            conn,
            self._topics.payments,
            payloads,
            key=payment.details.payer_id,
            correlation_id=payment_id,
            causation_id=None,
        )
        structlog.contextvars.bind_contextvars(payment_id=payment_id, refund_id=refund.id)
        log.info("refund_requested", amount=refund.amount, method=payment.details.method)
        return saved

    async def view(self, caller: str, refund_id: str) -> RefundPublic:
        """``GET /v1/refunds/{id}``: the caller's own refund, else 404."""
        stored = await store.get_refund(self._pool, refund_id, caller=caller)
        if stored is None:
            raise _refund_not_found(refund_id)
        return refund_view(stored)
