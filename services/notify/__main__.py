"""Composition root: python -m services.notify (relay + consumer + sender + HTTP)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import structlog

from services.notify.api import create_app
from services.notify.config import NotifySettings
from services.notify.handlers import NotifyHandlers
from services.notify.sender import SenderOptions, SmsSender
from shared.consumer import InboxConsumer
from shared.crypto import Sealer
from shared.http import CallerKeys
from shared.outbox import OutboxRelay
from shared.runtime import prepare_service, serve

log = structlog.get_logger(__name__)


def sender_options(settings: NotifySettings) -> SenderOptions:
    return SenderOptions(
        batch_size=settings.send_batch_size,
        poll_interval=settings.send_poll_seconds,
        timeout=settings.sms_timeout_seconds,
        max_attempts=settings.send_max_attempts,
        backoff_base=timedelta(seconds=settings.send_backoff_base_seconds),
        backoff_cap=timedelta(seconds=settings.send_backoff_cap_seconds),
    )


async def main() -> None:
    settings = NotifySettings()
    pool = await prepare_service(settings, Path(__file__).parent / "migrations")
    dsn = settings.database_url
    sealer = Sealer(settings.seal_key_bytes())
    topics = settings.topics
    relay = OutboxRelay(dsn, settings.kafka_bootstrap)
    consumer = InboxConsumer(
        name="notify",
        bootstrap=settings.kafka_bootstrap,
        topics=[topics.payments, topics.risk, topics.ledger],
        pool=pool,
        handlers=NotifyHandlers(sealer).handlers(),
    )
    sender = SmsSender(
        dsn=dsn,
        pool=pool,
        sealer=sealer,
        gateway_url=settings.sms_gateway_url,
        notify_topic=topics.notify,
        options=sender_options(settings),
    )
    app = create_app(pool, CallerKeys(settings.api_key_list()))
    log.info("notify_starting", port=settings.port, sms_gateway=settings.sms_gateway_url)
    try:
        await serve(
            app,
            host=settings.host,
            port=settings.port,
            workers=[("relay", relay.run), ("consumer", consumer.run), ("sender", sender.run)],
        )
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main())
