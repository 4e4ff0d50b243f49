"""The sender worker: delivers pending notifications to the SMS gateway.

Claims due rows with ``FOR UPDATE SKIP LOCKED`` in small batches (several instances
share the work), posts them concurrently, and in the same transaction marks each one
sent with a ``NotificationSent`` outbox row, or counts the failure and schedules the
next try (1 s, 2 s, 4 s ... capped at 60 s; ``failed`` after the last). A crash after
the gateway accepted but before the commit resends the same ``message_id``; the
gateway keeps one copy. LISTEN/NOTIFY only wakes the worker early; it also polls.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import httpx
import structlog

from services.notify import domain, store
from shared.crypto import Sealer, SealError
from shared.events import Envelope, NotificationSent, new_event
from shared.outbox import write_outbox

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class SenderOptions:
    batch_size: int = 10
    poll_interval: float = 0.5
    timeout: float = 5.0
    max_attempts: int = domain.MAX_ATTEMPTS
    backoff_base: timedelta = domain.BASE_BACKOFF
    backoff_cap: timedelta = domain.MAX_BACKOFF


@dataclass(frozen=True)
class _Try:
    ok: bool
    error: str = ""
    permanent: bool = False


class SmsSender:
    def __init__(
        self,
        *,
        dsn: str,
        pool: asyncpg.Pool,
        sealer: Sealer,
        gateway_url: str,
        notify_topic: str,
        options: SenderOptions | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._dsn = dsn
        self._pool = pool
        self._sealer = sealer
        self._url = gateway_url.rstrip("/") + "/sms"
        self._topic = notify_topic
        self._opts = options or SenderOptions()
        self._transport = transport
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.sent = 0
        self.failed_tries = 0

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def _on_notify(self, *_args: object) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Send until stopped; woken by NOTIFY, else every ``poll_interval`` seconds."""
        listener = await asyncpg.connect(self._dsn)
        try:
            await listener.add_listener(store.WAKE_CHANNEL, self._on_notify)
            async with httpx.AsyncClient(
                timeout=self._opts.timeout, transport=self._transport
            ) as client:
                log.info("sms_sender_started", gateway=self._url)
                while not self._stopping.is_set():
                    done = await self.send_due(client)
                    if done >= self._opts.batch_size:
                        continue
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._opts.poll_interval)
                    self._wake.clear()
        finally:
            with contextlib.suppress(Exception):
                await listener.close()

    async def send_due(self, client: httpx.AsyncClient) -> int:
        """Claim one batch of due rows, try each once, record the outcomes; returns the count."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await store.claim_due(conn, self._opts.batch_size)
            if not rows:
                return 0
            tries = await asyncio.gather(*(self._try(client, row) for row in rows))
            sent = [row for row, result in zip(rows, tries, strict=True) if result.ok]
            await self._record_sent(conn, sent)
            for row, result in zip(rows, tries, strict=True):
                if not result.ok:
                    await self._record_failure(conn, row, result)
        return len(rows)

    async def _try(self, client: httpx.AsyncClient, row: store.DueNotification) -> _Try:
        try:
            phone = self._sealer.open(row.phone_sealed, aad=f"phone:{row.payment_id}")
            text = self._sealer.open(row.text_sealed, aad=domain.text_aad(row.id))
        except SealError:
            return _Try(False, "sealed phone or text does not open with this key", True)
        body = {"phone": phone, "text": text, "message_id": row.message_id}
        try:
            response = await client.post(self._url, json=body)
        except httpx.HTTPError as exc:
            return _Try(False, f"gateway unreachable: {type(exc).__name__}")
        if response.is_success:
            return _Try(True)
        return _Try(
            False,
            f"gateway answered {response.status_code}{_error_code(response)}",
            domain.is_permanent(response.status_code),
        )

    async def _record_sent(
        self, conn: asyncpg.Connection, rows: list[store.DueNotification]
    ) -> None:
        """The delivered rows: marked sent, and their NotificationSent staged (one
        statement each for the whole batch)."""
        if not rows:
            return
        await store.mark_sent(conn, [(row.id, row.attempts + 1) for row in rows])
        await write_outbox(conn, self._topic, [_sent_event(row) for row in rows])
        self.sent += len(rows)
        for row in rows:
            log.info("sms_sent", **_fields(row))

    async def _record_failure(
        self, conn: asyncpg.Connection, row: store.DueNotification, result: _Try
    ) -> None:
        attempts = row.attempts + 1
        self.failed_tries += 1
        retry_in = domain.after_failure(
            attempts,
            permanent=result.permanent,
            max_attempts=self._opts.max_attempts,
            base=self._opts.backoff_base,
            cap=self._opts.backoff_cap,
        )
        await store.record_failure(
            conn, row.id, attempts=attempts, retry_in=retry_in, error=result.error
        )
        if retry_in is None:
            log.error("sms_gave_up", error=result.error, **_fields(row))
        else:
            log.warning(
                "sms_send_failed",
                error=result.error,
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


def _error_code(response: httpx.Response) -> str:
    """The gateway's error code when it sent an error object (never the body itself)."""
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return ""
    return f" ({code})" if isinstance(code, str) and code.isidentifier() else ""


def _sent_event(row: store.DueNotification) -> Envelope:
    return new_event(
        NotificationSent(
            notification_id=str(row.id),
            kind=row.kind,
            payment_id=row.payment_id,
            source_event_id=row.source_event_id,
            phone_masked=row.phone_masked,
            message_id=row.message_id,
        ),
        producer="notify",
        key=row.payer_id,
        correlation_id=row.payment_id,
        causation_id=row.source_event_id,
    )
