"""Kafka handlers: an event that owes the resident an SMS becomes a pending row.

``build_handlers`` maps each event type to its ``on_<event>``; PaymentRequested owes
no SMS but names the payment's owning caller, who alone reads its notices. Each runs inside the
consumer's transaction (the inbox dedups by event_id; the row's UNIQUE(source_event_id,
kind) makes a second copy a no-op anyway). The sealed phone and code are opened here
only to write the text, which is sealed again at once: nothing clear is stored,
logged or published. Notices cost two statements per event or per run of events
(their person keys read, with their erasures, in one; the rows in the other) and one
``notification_queued`` line each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import asyncpg
import structlog

from services.notify import domain, store
from services.notify.config import NotifySettings
from services.notify.domain import Notice
from shared.consumer import Batched, Handler
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
from shared.personal import ERASED, PhoneErased, open_phone, phone_key_id
from shared.regions import BUREAU_NAMES

log = structlog.get_logger(__name__)

P = TypeVar("P", bound=EventPayload)


def build_handlers(settings: NotifySettings) -> dict[str, Handler]:
    """The InboxConsumer handler map: event_type → its handler, for every event that
    may owe the resident an SMS. The events whose notices come from the event alone
    share one ``Batched`` handler: a run of them is queued in two statements, however
    long (the person keys of all their phones, then all their rows)."""
    h = NoticeHandlers(settings.sealer(), settings.bureau_names)
    notices = Batched(h.on_notice_event, h.on_notice_events)
    return {
        PaymentRequested.event_type: h.on_payment_requested,
        StepUpRequired.event_type: notices,
        PaymentSucceeded.event_type: notices,
        PaymentDeclined.event_type: notices,
        PaymentFailed.event_type: notices,
        ReceiptIssued.event_type: notices,
        MedicalAccountAllocated.event_type: notices,
        RefundSucceeded.event_type: h.on_refund_succeeded,
        RefundFailed.event_type: h.on_refund_failed,
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

    def notices_of(self, event: Event) -> list[Notice]:
        """The notices an event owes that come from the event alone (its code opened
        with the system sealer, nothing read)."""
        p = event.payload
        if isinstance(p, StepUpRequired):
            code = self._sealer.open(p.code_sealed, aad=code_aad(p.challenge_id))
            return [domain.step_up_notice(event.event_id, p, code)]
        if isinstance(p, PaymentSucceeded):
            return domain.payment_succeeded_notices(event.event_id, p)
        if isinstance(p, PaymentDeclined | PaymentFailed):
            return [domain.payment_unsuccessful_notice(event.event_id, p)]
        if isinstance(p, ReceiptIssued):
            receipt = domain.receipt_notice(event.event_id, p)
            return [receipt] if receipt else []
        if isinstance(p, MedicalAccountAllocated):
            allocation = domain.allocation_notice(event.event_id, p, self._bureau_names)
            return [allocation] if allocation else []
        raise TypeError(f"{event.event_type} owes no notice of its own")

    async def on_notice_event(self, conn: asyncpg.Connection, event: Event) -> None:
        await self._queue(conn, self.notices_of(event))

    async def on_notice_events(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        """A run: the notices of every event in order, queued at once (the rows and logs
        ``on_notice_event`` of each in turn would leave)."""
        await self._queue(conn, [n for e in events for n in self.notices_of(e)])

    async def on_refund_succeeded(self, conn: asyncpg.Connection, event: Event) -> None:
        p = _payload(event, RefundSucceeded)
        payee = await store.payee_of_payment(conn, p.payment_id)
        await self._queue(conn, [domain.refund_succeeded_notice(event.event_id, p, payee)])

    async def on_refund_failed(self, conn: asyncpg.Connection, event: Event) -> None:
        p = _payload(event, RefundFailed)
        payee = await store.payee_of_payment(conn, p.payment_id)
        await self._queue(conn, [domain.refund_failed_notice(event.event_id, p, payee)])

    async def _queue(self, conn: asyncpg.Connection, notices: Sequence[Notice]) -> None:
        """Store each notice as a pending row, phone masked and sealed, text sealed: the
        person keys of all their phones in one statement, the rows in another. A notice
        whose person was erased (issue 11) is recorded once, failed with the reason, no
        phone and no text, never sent; one whose key is not copied here yet raises
        ``PersonKeyPending`` (the event is retried)."""
        if not notices:
            return
        keys = await self._keys.keys(
            conn, [kid for n in notices if (kid := phone_key_id(n.phone_sealed)) is not None]
        )
        rows = [self._row(notice, keys) for notice in notices]
        inserted = await store.insert_notifications(conn, rows)
        for row in rows:
            if row.id not in inserted:
                log.debug("notification_already_queued", notification_id=str(row.id))
            elif row.state == "failed":
                log.warning(
                    "notification_not_sent_person_erased",
                    notification_id=str(row.id),
                    kind=row.kind,
                    payment_id=row.payment_id,
                )
            else:
                log.info(
                    "notification_queued",
                    notification_id=str(row.id),
                    kind=row.kind,
                    payment_id=row.payment_id,
                    phone=row.phone_masked,
                )

    def _row(self, notice: Notice, keys: Mapping[str, bytes | None]) -> store.NewNotification:
        try:
            phone: str | None = open_phone(
                notice.phone_sealed, aad=notice.phone_aad, sealer=self._sealer, person_keys=keys
            )
        except PhoneErased:
            phone = None
        return store.NewNotification(
            id=notice.notification_id,
            kind=notice.kind,
            payment_id=notice.payment_id,
            payer_id=notice.payer_id,
            source_event_id=notice.source_event_id,
            phone_masked=ERASED if phone is None else mask_phone(phone),
            phone_sealed=notice.phone_sealed,
            text_sealed=""
            if phone is None
            else self._sealer.seal(notice.text, aad=domain.text_aad(notice.notification_id)),
            message_id=notice.message_id,
            payee_name=notice.payee_name,
            refund_id=notice.refund_id,
            state="failed" if phone is None else "pending",
            last_error=domain.PERSON_ERASED if phone is None else None,
        )
