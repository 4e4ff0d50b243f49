"""Kafka handlers: an event that owes the resident an SMS becomes a pending row.

Runs inside the consumer's transaction (the inbox dedups by event_id; the row's
UNIQUE(source_event_id, kind) makes a second copy a no-op anyway). The sealed phone
and code are opened here only to write the text, which is sealed again at once:
nothing clear is stored, logged or published.
"""

from __future__ import annotations

import asyncpg
import structlog

from services.notify import domain, store
from shared.consumer import Handler
from shared.crypto import Sealer
from shared.events import Event
from shared.masking import mask_phone

log = structlog.get_logger(__name__)

# The events that cause an SMS (domain.notice_for decides the kind).
EVENT_TYPES = (
    "StepUpRequired",
    "PaymentSucceeded",
    "PaymentDeclined",
    "PaymentFailed",
    "ReceiptIssued",
)


class NotifyHandlers:
    def __init__(self, sealer: Sealer) -> None:
        self._sealer = sealer

    def handlers(self) -> dict[str, Handler]:
        return {event_type: self.on_event for event_type in EVENT_TYPES}

    async def on_event(self, conn: asyncpg.Connection, event: Event) -> None:
        notice = domain.notice_for(event)
        if notice is None:
            return
        phone = self._sealer.open(notice.phone_sealed, aad=notice.phone_aad)
        code = None
        if notice.code_sealed is not None and notice.code_aad is not None:
            code = self._sealer.open(notice.code_sealed, aad=notice.code_aad)
        text = domain.render(event, code=code)
        row = store.NewNotification(
            id=notice.notification_id,
            kind=notice.kind,
            payment_id=notice.payment_id,
            payer_id=notice.payer_id,
            source_event_id=notice.source_event_id,
            phone_masked=mask_phone(phone),
            phone_sealed=notice.phone_sealed,
            text_sealed=self._sealer.seal(text, aad=domain.text_aad(notice.notification_id)),
            message_id=notice.message_id,
        )
        inserted = await store.insert_notification(conn, row)
        log.info(
            "notification_queued" if inserted else "notification_already_queued",
            notification_id=str(row.id),
            kind=row.kind,
            payment_id=row.payment_id,
            phone=row.phone_masked,
        )
