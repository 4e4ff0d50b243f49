"""Composition root: ``python -m services.ledger`` (``--help`` for usage).

Builds the settings, pool, signer, handlers, consumer, outbox relay and app, and hands
them to ``shared.runtime.serve``; nothing connects at import.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from services.ledger.api import create_app
from services.ledger.config import LedgerSettings
from services.ledger.handlers import PostingSetup, build_handlers
from shared.consumer import InboxConsumer
from shared.outbox import OutboxRelay
from shared.runtime import prepare_service, serve

MIGRATIONS = Path(__file__).parent / "migrations"

USAGE = """\
The Yibao ledger: books authorized payments, allocations and refunds from payments.v1
into the hash-chained journal (ledger.v1), issues signed e-receipts, and serves
balances, statements, receipts and 查验 over HTTP (default port 8002).

Configured from the environment (LEDGER_* and the shared YIBAO_* names; see the
README's Configuration section), e.g. KAFKA_BOOTSTRAP, DATABASE_URL,
YIBAO_RECEIPT_SIGNING_KEY, YIBAO_HASH_KEY, LEDGER_VERIFY_RATE_PER_MINUTE.
"""


async def main() -> None:
    settings = LedgerSettings()
    pool = await prepare_service(settings, MIGRATIONS)
    signer = settings.receipt_signer()
    setup = PostingSetup(
        ledger_topic=settings.topics.ledger,
        keys=settings.posting_keys(signer),
        policy=settings.receipt_policy(),
    )
    consumer = InboxConsumer(
        name="ledger",
        bootstrap=settings.kafka_bootstrap,
        topics=[settings.topics.payments],
        pool=pool,
        handlers=build_handlers(setup),
    )
    relay = OutboxRelay(settings.database_url, settings.kafka_bootstrap)
    app = create_app(settings, pool, signer=signer)
    try:
        await serve(
            app,
            host=settings.host,
            port=settings.port,
            workers=[("relay", relay.run), ("consumer", consumer.run)],
        )
    finally:
        await pool.close()


def cli() -> None:
    argparse.ArgumentParser(
        prog="python -m services.ledger",
        description=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args()
    asyncio.run(main())


if __name__ == "__main__":
    cli()
