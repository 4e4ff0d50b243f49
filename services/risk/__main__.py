"""Composition root: python -m services.risk.

settings → logging → database and migrations → pool → app + outbox relay + payments.v1
consumer + challenge expiry sweeper → serve.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from services.risk.api import create_app
from services.risk.config import RiskSettings
from services.risk.handlers import ExpirySweeper, RiskHandlers
from shared.consumer import InboxConsumer
from shared.outbox import OutboxRelay
from shared.runtime import prepare_service, serve

MIGRATIONS = Path(__file__).parent / "migrations"
log = structlog.get_logger(__name__)


async def main() -> None:
    settings = RiskSettings()
    pool = await prepare_service(settings, MIGRATIONS)
    dsn = settings.database_url
    rules = settings.rules()
    topics = settings.topics
    handlers = RiskHandlers(
        rules=rules,
        topics=topics,
        seal_key=settings.seal_key_bytes(),
        hash_key=settings.hash_key_bytes(),
    )
    relay = OutboxRelay(dsn, settings.kafka_bootstrap)
    consumer = InboxConsumer(
        name=settings.service,
        bootstrap=settings.kafka_bootstrap,
        topics=[topics.payments],
        pool=pool,
        handlers=handlers.handlers(),
    )
    sweeper = ExpirySweeper(
        pool, rules=rules, topics=topics, interval=settings.sweep_interval_seconds
    )
    app = create_app(settings, pool)
    log.info("risk_starting", port=settings.port, topics=[topics.payments, topics.risk])
    try:
        await serve(
            app,
            host=settings.host,
            port=settings.port,
            workers=[("relay", relay.run), ("consumer", consumer.run), ("sweeper", sweeper.run)],
        )
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main())
