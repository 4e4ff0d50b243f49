"""The sender worker: delivers pending notifications to the SMS gateway.

Claims due rows with ``FOR UPDATE SKIP LOCKED`` in small batches (several instances
share the work), with their phones' person keys (or the keys' erasure) read in the
same statement, posts them concurrently (at most ``batch_size`` in flight, over
kept-alive connections: ``shared.outbound.JsonPoster``, a fraction of httpx's CPU per
request), and in the same transaction marks the delivered ones sent in one statement
with their ``NotificationSent`` outbox rows in another, and counts each failure and
schedules its next try (1 s, 2 s, 4 s ... capped at 60 s; ``failed`` after the last).
A crash after the gateway accepted but before the commit resends the same
``message_id``; the gateway keeps one copy. It polls adaptively
(``shared.runtime.PollingWorker``) and a new notice stored in this process wakes it
once that transaction is over (``store.WAKE_CHANNEL``, ``shared.polling``); another
instance's are found by the poll. One ``sms_sent`` line per batch at info (its
notification ids); a failure is a line of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import structlog

from services.notify import domain, store
from shared.crypto import Sealer, SealError, phone_aad
from shared.events import Envelope, EventFactory, NotificationSent
from shared.outbound import JsonPoster, OutboundError, Reply
from shared.outbox import write_outbox
from shared.person_keys import PersonKeyCopies
from shared.personal import PersonKeyPending, PhoneErased, open_phone, phone_key_id
from shared.runtime import PollingWorker

log = structlog.get_logger(__name__)

EVENTS = EventFactory("notify")


@dataclass(frozen=True)
class SenderOptions:
    batch_size: int = 10
    poll_interval: float = 0.25
    timeout: float = 5.0
    max_attempts: int = domain.MAX_ATTEMPTS
    backoff_base: timedelta = domain.BASE_BACKOFF
    backoff_cap: timedelta = domain.MAX_BACKOFF


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one POST to the gateway came to: delivered, or why not and whether a retry
    could help."""

    delivered: bool
    error: str = ""
    permanent: bool = False


class SmsSender(PollingWorker):
    name = "sms_sender"
    listen_to = store.WAKE_CHANNEL

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        sealer: Sealer,
        gateway_url: str,
        notify_topic: str,
        options: SenderOptions | None = None,
    ) -> None:
        self._opts = options or SenderOptions()
        super().__init__(poll_interval=self._opts.poll_interval, batch_size=self._opts.batch_size)
        self._pool = pool
        self._sealer = sealer
        self._keys = PersonKeyCopies(sealer, remember_erased=True)
        self._gateway = gateway_url.rstrip("/")
        self._topic = notify_topic
        self._poster: JsonPoster | None = None

    async def run(self) -> None:
        """Send until stopped; woken by new notices of this process, else polling."""
        poster = JsonPoster(
            self._gateway, timeout=self._opts.timeout, max_connections=self._opts.batch_size
        )
        self._poster = poster
        log.info("sms_sender_started", gateway=self._gateway + "/sms")
        try:
            await super().run()
        finally:
            self._poster = None
            await poster.close()

    async def any_due(self) -> bool:
        """One autocommitted statement, where an empty claim costs a transaction."""
        return await store.any_due(self._pool)

    async def run_once(self) -> int:
        assert self._poster is not None, "run_once runs inside run()"
        return await self.send_due(self._poster)

    async def send_due(self, poster: JsonPoster) -> int:
        """Claim one batch of due rows, try each once, record the outcomes; returns the count."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await store.claim_due(conn, self._opts.batch_size)
            if not rows:
                return 0
            keys = self._opened_keys(rows)
            outcomes = await asyncio.gather(*(self._deliver(poster, row, keys) for row in rows))
            sent = [row for row, outcome in zip(rows, outcomes, strict=True) if outcome.delivered]
            await self._record_sent(conn, sent)
            for row, outcome in zip(rows, outcomes, strict=True):
                if not outcome.delivered:
                    await self._record_failure(conn, row, outcome)
        return len(rows)

    def _opened_keys(self, rows: list[store.DueNotification]) -> dict[str, bytes | None]:
        """The person keys of the claimed rows' phones, as ``PersonKeyCopies.keys``
        answers (read with the claim): opened; None when erased; absent when not copied
        here yet."""
        keys: dict[str, bytes | None] = {}
        for row in rows:
            kid = phone_key_id(row.phone_sealed)
            if kid is None or kid in keys:
                continue
            if row.key_sealed is not None:  # a copy wins, as in PersonKeyCopies.keys
                keys[kid] = self._keys.open_copy(kid, row.key_sealed)
            elif row.key_erased:
                keys[kid] = None
        return keys

    async def _deliver(
        self,
        poster: JsonPoster,
        row: store.DueNotification,
        keys: Mapping[str, bytes | None],
    ) -> DeliveryOutcome:
        """One POST of ``row`` to the gateway (its clear phone and text exist only here).
        A phone whose person was erased since it was queued is never sent (permanent)."""
        try:
            phone = open_phone(
                row.phone_sealed,
                aad=phone_aad(row.payment_id),
                sealer=self._sealer,
                person_keys=keys,
            )
            text = self._sealer.open(row.text_sealed, aad=domain.text_aad(row.id))
        except PhoneErased:
            return DeliveryOutcome(False, domain.PERSON_ERASED, True)
        except PersonKeyPending:
            return DeliveryOutcome(False, "the phone's person key is not copied here yet")
        except SealError:
            return DeliveryOutcome(False, "sealed phone or text does not open with this key", True)
        body = {"phone": phone, "text": text, "message_id": row.message_id}
        try:
            response = await poster.post("/sms", body)
        except OutboundError as exc:
            return DeliveryOutcome(False, f"gateway unreachable: {exc}")
        if response.is_success:
            return DeliveryOutcome(True)
        return DeliveryOutcome(
            False,
            f"gateway answered {response.status_code}{_error_code(response)}",
            domain.is_permanent(response.status_code),
        )

    async def _record_sent(
        self, conn: asyncpg.Connection, rows: list[store.DueNotification]
    ) -> None:
        """The delivered rows: marked sent, and their NotificationSent staged (one
        statement each for the whole batch), and one line for the batch."""
        if not rows:
            return
        await store.mark_sent(conn, [(row.id, row.attempts + 1) for row in rows])
        await write_outbox(conn, self._topic, [_sent_event(row) for row in rows])
        if len(rows) == 1:
            log.info("sms_sent", **_fields(rows[0]))
            return
        log.info(
            "sms_sent",
            count=len(rows),
            notification_ids=[str(row.id) for row in rows],
            kinds=[row.kind for row in rows],
            payment_ids=[row.payment_id for row in rows],
        )

    async def _record_failure(
        self, conn: asyncpg.Connection, row: store.DueNotification, outcome: DeliveryOutcome
    ) -> None:
        attempts = row.attempts + 1
        retry_in = domain.after_failure(
            attempts,
            permanent=outcome.permanent,
            max_attempts=self._opts.max_attempts,
            base=self._opts.backoff_base,
            cap=self._opts.backoff_cap,
        )
        await store.record_failure(
            conn, row.id, attempts=attempts, retry_in=retry_in, error=outcome.error
        )
        if retry_in is None:
            log.error("sms_gave_up", error=outcome.error, **_fields(row))
        else:
            log.warning(
                "sms_send_failed",
                error=outcome.error,
                retry_in=retry_in.total_seconds(),
                **_fields(row),
            )


def _fields(row: store.DueNotification) -> dict[str, object]:
    """What a log line says of a notification: ids, kind, masked phone, this attempt."""
    return {
        "notification_id": str(row.id),
        "kind": row.kind,
        "payment_id": row.payment_id,
        "phone": row.phone_masked,
        "attempts": row.attempts + 1,
    }


def _error_code(response: Reply) -> str:
    """The gateway's error code when it sent an error object (never the body itself)."""
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return ""
    return f" ({code})" if isinstance(code, str) and code.isidentifier() else ""


def _sent_event(row: store.DueNotification) -> Envelope:
    return EVENTS.new(
        NotificationSent(
            notification_id=str(row.id),
            kind=row.kind,
            payment_id=row.payment_id,
            source_event_id=row.source_event_id,
            phone_masked=row.phone_masked,
            message_id=row.message_id,
        ),
        key=row.payer_id,
        correlation_id=row.payment_id,
        causation_id=row.source_event_id,
    )
