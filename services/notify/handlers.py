"""Kafka handlers: an event that owes the resident an SMS becomes a pending row.

``build_handlers`` maps each event type to its ``on_<event>``; PaymentRequested owes
no SMS but names the payment's owning caller, who alone reads its notices. Each runs inside the
consumer's transaction (the inbox dedups by event_id; the row's UNIQUE(source_event_id,
kind) makes a second copy a no-op anyway). The sealed phone and code are opened here
only to write the text, which is sealed again at once: nothing clear is stored,
logged or published. A notice costs two statements (its person key read, with its
erasure, in one; the row in the other) and one ``notification_queued`` line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

import asyncpg
import structlog

from services.notify import domain, store
from services.notify.config import NotifySettings
from services.notify.domain import Notice
from shared.consumer import Handler
from shared.crypto import Sealer, code_aad, phone_aad
from shared.events import (
    Event,
    EventPayload,
    MedicalAccountAllocated,
    PayerCodeIssued,
    PaymentDeclined,
    PaymentFailed,
    PaymentRequested,
    PaymentSucceeded,
    ReceiptIssued,
    RefundFailed,
    RefundSucceeded,
    StepUpRequired,
)
from shared.masking import mask_phone
from shared.person_keys import PersonKeyCopies
from shared.personal import ERASED, PhoneErased
from shared.regions import BUREAU_NAMES

log = structlog.get_logger(__name__)

P = TypeVar("P", bound=EventPayload)


def build_handlers(settings: NotifySettings) -> dict[str, Handler]:
    """The InboxConsumer handler map: event_type → ``on_<event name>``, for every event
    that may owe the resident an SMS."""
    h = NoticeHandlers(settings.sealer(), settings.bureau_names)
    return {
        PaymentRequested.event_type: h.on_payment_requested,
        StepUpRequired.event_type: h.on_step_up_required,
        PaymentSucceeded.event_type: h.on_payment_succeeded,
        PaymentDeclined.event_type: h.on_payment_declined,
        PaymentFailed.event_type: h.on_payment_failed,
        ReceiptIssued.event_type: h.on_receipt_issued,
        RefundSucceeded.event_type: h.on_refund_succeeded,
        RefundFailed.event_type: h.on_refund_failed,
        MedicalAccountAllocated.event_type: h.on_medical_account_allocated,
        PayerCodeIssued.event_type: h.on_payer_code_issued,
        # person-keys.v1, consumed apart (shared.person_keys.person_key_consumer)
        **h.person_key_handlers(),
    }


def _payload(event: Event, cls: type[P]) -> P:
    """The event's payload as the type its handler was registered for."""
    if not isinstance(event.payload, cls):
        raise TypeError(f"{event.event_type} handed to the handler of {cls.event_type}")
    return event.payload


class NoticeHandlers:
    """Turns events into sealed pending notices (the sender delivers them)."""

    def __init__(self, sealer: Sealer, bureau_names: Mapping[str, str] = BUREAU_NAMES) -> None:
        self._sealer = sealer
        self._keys = PersonKeyCopies(
            sealer, remember_erased=True, on_erased=store.scrub_erased_phones
        )
        self._bureau_names = bureau_names

    def person_key_handlers(self) -> dict[str, Handler]:
        return self._keys.handlers()

    async def on_payment_requested(self, conn: asyncpg.Connection, event: Event) -> None:
        """No SMS: remember which caller owns the payment (it alone reads its notices)."""
        p = _payload(event, PaymentRequested).payment
        if p.caller_id is not None:
            await store.remember_owner(conn, p.payment_id, p.caller_id)

    async def on_step_up_required(self, conn: asyncpg.Connection, event: Event) -> None:
        p = _payload(event, StepUpRequired)
        code = self._sealer.open(p.code_sealed, aad=code_aad(p.challenge_id))
        await self._queue(conn, [domain.step_up_notice(event.event_id, p, code)])

    async def on_payer_code_issued(self, conn: asyncpg.Connection, event: Event) -> None:
        p = _payload(event, PayerCodeIssued)
        if not p.phone_masked:  # since issue 11 inside the sealed phone: the texts name it
            try:
                phone = await self._keys.open_phone(conn, p.phone_sealed, aad=phone_aad(p.code_id))
            except PhoneErased:
                phone = None  # erased: its notices are recorded, never sent (``_queue``)
            if phone is not None:
                p = p.model_copy(update={"phone_masked": mask_phone(phone)})
        code = self._sealer.open(p.code_sealed, aad=code_aad(p.code_id))
        await self._queue(conn, domain.payer_code_notices(event.event_id, p, code))

    async def on_payment_succeeded(self, conn: asyncpg.Connection, event: Event) -> None:
        p = _payload(event, PaymentSucceeded)
        await self._queue(conn, domain.payment_succeeded_notices(event.event_id, p))

    async def on_payment_declined(self, conn: asyncpg.Connection, event: Event) -> None:
        p = _payload(event, PaymentDeclined)
        await self._queue(conn, [domain.payment_unsuccessful_notice(event.event_id, p)])

    async def on_payment_failed(self, conn: asyncpg.Connection, event: Event) -> None:
        p = _payload(event, PaymentFailed)
        await self._queue(conn, [domain.payment_unsuccessful_notice(event.event_id, p)])

    async def on_receipt_issued(self, conn: asyncpg.Connection, event: Event) -> None:
        notice = domain.receipt_notice(event.event_id, _payload(event, ReceiptIssued))
        await self._queue(conn, [notice] if notice else [])

    async def on_refund_succeeded(self, conn: asyncpg.Connection, event: Event) -> None:
        p = _payload(event, RefundSucceeded)
        payee = await store.payee_of_payment(conn, p.payment_id)
        await self._queue(conn, [domain.refund_succeeded_notice(event.event_id, p, payee)])

    async def on_refund_failed(self, conn: asyncpg.Connection, event: Event) -> None:
        p = _payload(event, RefundFailed)
        payee = await store.payee_of_payment(conn, p.payment_id)
        await self._queue(conn, [domain.refund_failed_notice(event.event_id, p, payee)])

    async def on_medical_account_allocated(self, conn: asyncpg.Connection, event: Event) -> None:
        p = _payload(event, MedicalAccountAllocated)
        notice = domain.allocation_notice(event.event_id, p, self._bureau_names)
        await self._queue(conn, [notice] if notice else [])

    async def _queue(self, conn: asyncpg.Connection, notices: Iterable[Notice]) -> None:
        """Store each notice as a pending row, phone masked and sealed, text sealed."""
        for notice in notices:
            try:
                phone = await self._keys.open_phone(conn, notice.phone_sealed, aad=notice.phone_aad)
            except PhoneErased:
                await self._not_sent_erased(conn, notice)
                continue
            row = store.NewNotification(
                id=notice.notification_id,
                kind=notice.kind,
                payment_id=notice.payment_id,
                payer_id=notice.payer_id,
                source_event_id=notice.source_event_id,
                phone_masked=mask_phone(phone),
                phone_sealed=notice.phone_sealed,
                text_sealed=self._sealer.seal(
                    notice.text, aad=domain.text_aad(notice.notification_id)
                ),
                message_id=notice.message_id,
                payee_name=notice.payee_name,
                refund_id=notice.refund_id,
            )
            if not await store.insert_notification(conn, row):
                log.debug("notification_already_queued", notification_id=str(row.id))
                continue
            log.info(
                "notification_queued",
                notification_id=str(row.id),
                kind=row.kind,
                payment_id=row.payment_id,
                phone=row.phone_masked,
            )

    async def _not_sent_erased(self, conn: asyncpg.Connection, notice: Notice) -> None:
        """The resident was erased (issue 11): their phone opens for nobody. The notice is
        recorded once, failed with the reason, no phone and no text; never sent."""
        row = store.NewNotification(
            id=notice.notification_id,
            kind=notice.kind,
            payment_id=notice.payment_id,
            payer_id=notice.payer_id,
            source_event_id=notice.source_event_id,
            phone_masked=ERASED,
            phone_sealed=notice.phone_sealed,
            text_sealed="",
            message_id=notice.message_id,
            payee_name=notice.payee_name,
            refund_id=notice.refund_id,
            state="failed",
            last_error=domain.PERSON_ERASED,
        )
        inserted = await store.insert_notification(conn, row)
        if inserted:
            log.warning(
                "notification_not_sent_person_erased",
                notification_id=str(row.id),
                kind=row.kind,
                payment_id=row.payment_id,
            )
