"""Composition root of notify: settings → logging → database and migrations → pool →
app + outbox relay + consumer (payments.v1, risk.v1, ledger.v1) + SMS sender → serve.

    python -m services.notify          # NOTIFY_* and the shared YIBAO_* settings
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from pathlib import Path

import structlog

from services.notify.api import create_app
from services.notify.config import NotifySettings
from services.notify.handlers import build_handlers
from services.notify.sender import SmsSender
from shared.consumer import InboxConsumer
from shared.crypto import Sealer
from shared.outbox import OutboxRelay
from shared.runtime import prepare_service, serve

MIGRATIONS = Path(__file__).parent / "migrations"
log = structlog.get_logger(__name__)


async def run_notify(settings: NotifySettings) -> None:
    pool = await prepare_service(settings, MIGRATIONS)
    dsn = settings.database_url
    sealer = Sealer(settings.seal_key_bytes())
    topics = settings.topics
    relay = OutboxRelay(dsn, settings.kafka_bootstrap)
    consumer = InboxConsumer(
        name=settings.service,
        bootstrap=settings.kafka_bootstrap,
        topics=[topics.payments, topics.risk, topics.ledger],
        pool=pool,
        handlers=build_handlers(sealer, bureau_names=settings.bureau_names),
    )
    sender = SmsSender(
        dsn=dsn,
        pool=pool,
        sealer=sealer,
        gateway_url=settings.sms_gateway_url,
        notify_topic=topics.notify,
        options=settings.sender_options(),
    )
    app = create_app(settings, pool)
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


def main(argv: Sequence[str] | None = None) -> None:
    argparse.ArgumentParser(
        prog="python -m services.notify",
        description="Yibao notify: sends the SMS codes, result, receipt, refund and"
        " balance-change notices, each once.",
        epilog="Configured by the environment: NOTIFY_PORT, SMS_GATEWAY_URL, NOTIFY_SEND_*,"
        " and the shared KAFKA_BOOTSTRAP, DATABASE_URL (or NOTIFY_DSN), YIBAO_* (README).",
    ).parse_args(argv)
    asyncio.run(run_notify(NotifySettings()))


if __name__ == "__main__":
    main()
