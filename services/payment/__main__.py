"""Composition root: ``python -m services.payment`` starts the API, relay and consumer."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import asyncpg
import structlog

from services.payment import store
from services.payment.api import create_app
from services.payment.config import Settings
from services.payment.handlers import build_handlers
from shared.consumer import InboxConsumer
from shared.outbox import OutboxRelay
from shared.runtime import prepare_service, serve

log = structlog.get_logger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


async def purge_idempotency_keys(pool: asyncpg.Pool, interval: float) -> None:
    """Delete idempotency keys past their expiry, every ``interval`` seconds."""
    while True:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            purged = await store.purge_keys(pool)
            if purged:
                log.info("idempotency_keys_purged", count=purged)
        await asyncio.sleep(interval)


async def main() -> None:
    settings = Settings()
    pool = await prepare_service(settings, MIGRATIONS)
    try:
        app = create_app(settings, pool)
        relay = OutboxRelay(settings.database_url, settings.kafka_bootstrap)
        topics = settings.topics
        consumer = InboxConsumer(
            name="payment",
            bootstrap=settings.kafka_bootstrap,
            topics=[topics.risk, topics.ledger],
            pool=pool,
            handlers=build_handlers(topics.payments),
        )

        async def purge() -> None:
            await purge_idempotency_keys(pool, settings.idempotency_purge_interval_seconds)

        log.info("payment_starting", port=settings.port, topics=[topics.risk, topics.ledger])
        await serve(
            app,
            host=settings.host,
            port=settings.port,
            workers=[("relay", relay.run), ("consumer", consumer.run), ("purge", purge)],
        )
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main())
