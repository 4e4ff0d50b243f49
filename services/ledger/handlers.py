"""payments.v1 → ledger: post an authorized payment, or reject it, in one transaction.

The head row lock serializes posting: the decision reads the head and balances, the
projection and the journal row are written, and the ledger.v1 events are staged in
the outbox, all before the lock is released at commit.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import asyncpg
import structlog

from services.ledger import store
from services.ledger.domain import PostingKeys, accounts_involved, decide_posting, event_id_for
from services.ledger.receipts import ReceiptPolicy
from shared.consumer import Handler
from shared.events import (
    Envelope,
    Event,
    EventPayload,
    PaymentAuthorized,
    PostingRejected,
    new_event,
)
from shared.money import utcnow
from shared.outbox import write_outbox

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]


class LedgerHandlers:
    def __init__(
        self,
        *,
        ledger_topic: str,
        keys: PostingKeys,
        policy: ReceiptPolicy,
        clock: Clock = utcnow,
    ) -> None:
        self._topic = ledger_topic
        self._keys = keys
        self._policy = policy
        self._clock = clock

    def handlers(self) -> dict[str, Handler]:
        return {"PaymentAuthorized": self.on_payment_authorized}

    async def on_payment_authorized(self, conn: asyncpg.Connection, event: Event) -> None:
        authorized = event.payload
        assert isinstance(authorized, PaymentAuthorized)
        payment = authorized.payment
        bound = log.bind(payment_id=payment.payment_id, payer_id=payment.payer_id)

        head = await store.load_head(conn, lock=True)
        earlier = await store.already_decided(conn, payment.payment_id)
        if earlier is not None:
            bound.info("posting_skipped_already_decided", earlier=earlier)
            return
        balances = await store.balances_of(conn, accounts_involved(payment))
        now = self._clock()
        decision = decide_posting(
            balances, head, payment, now=now, keys=self._keys, policy=self._policy
        )

        def wrap(payload: EventPayload, at: datetime) -> Envelope:
            return new_event(
                payload,
                producer="ledger",
                key=payment.payer_id,
                correlation_id=payment.payment_id,
                causation_id=event.event_id,
                occurred_at=at,
                event_id=event_id_for(payment.payment_id, payload.event_type),
            )

        if isinstance(decision, PostingRejected):
            rejected = wrap(decision, now)
            await store.record_rejection(
                conn, decision, event_id=rejected.event_id, causation_id=event.event_id,
                rejected_at=now,
            )
            await write_outbox(conn, self._topic, [rejected])
            bound.info(
                "posting_rejected", account_id=decision.account_id,
                balance=decision.balance, amount=decision.amount,
            )
            return

        entry, receipt = decision.entry, decision.receipt
        envelopes = [wrap(entry, entry.posted_at)]
        if receipt is not None:
            envelopes.append(wrap(receipt, entry.posted_at))
        await store.append_journal(
            conn, entry, event_id=envelopes[0].event_id, receipt=receipt,
            receipt_event_id=envelopes[1].event_id if receipt else None,
        )
        await store.apply_event(conn, entry)
        if receipt is not None:
            await store.apply_event(conn, receipt)
        await write_outbox(conn, self._topic, envelopes)
        bound.info(
            "journal_entry_posted", seq=entry.seq, kind=entry.kind, amount=payment.amount,
            receipt=f"{entry.receipt.code}/{entry.receipt.number}" if entry.receipt else None,
        )
