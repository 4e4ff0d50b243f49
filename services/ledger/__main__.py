"""Composition root: ``python -m services.ledger``."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.ledger import store
from services.ledger.api import create_app
from services.ledger.config import LedgerSettings
from services.ledger.domain import PostingKeys
from services.ledger.handlers import LedgerHandlers
from services.ledger.signing import ReceiptSigner
from shared.consumer import InboxConsumer
from shared.outbox import OutboxRelay
from shared.runtime import prepare_service, serve

MIGRATIONS = Path(__file__).parent / "migrations"


async def main() -> None:
    settings = LedgerSettings()
    pool = await prepare_service(settings, MIGRATIONS)
    async with pool.acquire() as conn:
        await store.backfill_projections(conn)
    signer = ReceiptSigner(settings.signing_seed())
    handlers = LedgerHandlers(
        ledger_topic=settings.topics.ledger,
        keys=PostingKeys(check_key=settings.hash_key_bytes(), signer=signer),
        policy=settings.receipt_policy(),
    )
    consumer = InboxConsumer(
        name="ledger",
        bootstrap=settings.kafka_bootstrap,
        topics=[settings.topics.payments],
        pool=pool,
        handlers=handlers.handlers(),
    )
    relay = OutboxRelay(settings.database_url, settings.kafka_bootstrap)
    app = create_app(
        pool=pool,
        signer=signer,
        api_keys=settings.api_key_list(),
        rate_per_minute=settings.verify_rate_per_minute,
        font_path=settings.receipt_font,
    )
    try:
        await serve(
            app,
            host=settings.host,
            port=settings.port,
            workers=[("relay", relay.run), ("consumer", consumer.run)],
        )
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main())
