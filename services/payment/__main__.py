"""Composition root: ``python -m services.payment`` starts the API, the outbox relay, the
risk.v1/ledger.v1 consumer, the bank worker, the idempotency-key purger and the stuck
payment sweeper and the webhook worker. Nothing connects at import."""

from __future__ import annotations

import argparse
from pathlib import Path

import structlog

from services.payment.api import create_app
from services.payment.bank import BankClient, BankWorker
from services.payment.config import PaymentSettings
from services.payment.handlers import build_handlers
from services.payment.intake import IdempotencyKeyPurger
from services.payment.sweeper import StuckPaymentSweeper
from services.payment.webhooks import WebhookWorker
from shared import fastloop
from shared.consumer import InboxConsumer
from shared.outbox import OutboxRelay
from shared.runtime import prepare_service, serve

log = structlog.get_logger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


async def main() -> None:
    settings = PaymentSettings.load_or_exit()
    pool = await prepare_service(settings, MIGRATIONS)
    try:
        topics = settings.topics
        relay = OutboxRelay(settings.database_url, settings.kafka_bootstrap)
        consumer = InboxConsumer(
            name=settings.service,
            bootstrap=settings.kafka_bootstrap,
            topics=[topics.risk, topics.ledger],
            pool=pool,
            handlers=build_handlers(settings),
        )
        purger = IdempotencyKeyPurger(pool, settings.idempotency_purge_interval_seconds)
        bank = BankClient(settings.bank_gateway_url, timeout=settings.bank_timeout_seconds)
        bank_worker = BankWorker(
            pool,
            bank,
            topics=topics,
            policy=settings.bank_policy(),
            poll_interval=settings.bank_poll_interval_seconds,
        )
        sweeper = StuckPaymentSweeper(
            pool,
            topics=topics,
            policy=settings.stuck_policy(),
            interval=settings.stuck_sweep_interval_seconds,
        )
        webhook_worker = WebhookWorker(pool, settings)
        log.info("payment_starting", port=settings.port, topics=[topics.risk, topics.ledger])
        await serve(
            create_app(settings, pool),
            host=settings.host,
            port=settings.port,
            workers=[
                ("relay", relay.run),
                ("consumer", consumer.run),
                ("bank", bank_worker.run),
                ("purger", purger.run),
                ("stuck_sweeper", sweeper.run),
                ("webhooks", webhook_worker.run),
            ],
        )
        await bank.aclose()
        await webhook_worker.aclose()
    finally:
        await pool.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.payment",
        description="Yibao payment service: the payment API (default port 8001), its outbox"
        " relay, its risk.v1/ledger.v1 consumer and the bank worker (BANK_GATEWAY_URL)."
        " Configured by environment variables (PAYMENT_* and the shared YIBAO_*,"
        " KAFKA_BOOTSTRAP, DATABASE_URL; see docs/operators.md, Configuration).",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args()
    fastloop.run(main())
