"""Composition root of notify: settings → logging → database and migrations → pool →
app + outbox relay + consumer (payments.v1, risk.v1, ledger.v1) + SMS sender → serve.

    python -m services.notify          # NOTIFY_* and the shared YIBAO_* settings
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import structlog

from services.notify.api import create_app
from services.notify.config import NotifySettings
from services.notify.handlers import build_handlers
from services.notify.sender import SmsSender
from shared import fastloop
from shared.consumer import InboxConsumer
from shared.outbox import OutboxRelay
from shared.person_keys import person_key_consumer
from shared.runtime import prepare_service, serve

MIGRATIONS = Path(__file__).parent / "migrations"
log = structlog.get_logger(__name__)


async def main() -> None:
    settings = NotifySettings.load_or_exit()
    pool = await prepare_service(settings, MIGRATIONS)
    dsn = settings.database_url
    topics = settings.topics
    relay = OutboxRelay(dsn, settings.kafka_bootstrap)
    consumer = InboxConsumer(
        name=settings.service,
        bootstrap=settings.kafka_bootstrap,
        topics=[topics.payments, topics.risk, topics.ledger],
        pool=pool,
        handlers=build_handlers(settings),
    )
    keys = person_key_consumer(  # person-keys.v1: the keys sealing phones (issue 11)
        service=settings.service,
        bootstrap=settings.kafka_bootstrap,
        topic=topics.person_keys,
        pool=pool,
        handlers=build_handlers(settings),
    )
    sender = SmsSender(
        pool=pool,
        sealer=settings.sealer(),
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
            workers=[
                ("relay", relay.run),
                ("consumer", consumer.run),
                ("person_keys", keys.run),
                ("sender", sender.run),
            ],
        )
    finally:
        await pool.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.notify",
        description="Yibao notify: sends the SMS codes and the result, receipt, refund and"
        " balance-change notices, each once, through the SMS gateway; GET"
        " /v1/notifications?payment_id= (default port 8004). Configured by environment"
        " variables (NOTIFY_*, SMS_GATEWAY_URL and the shared YIBAO_*, KAFKA_BOOTSTRAP,"
        " DATABASE_URL; see docs/operators.md, Configuration).",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args()
    fastloop.run(main())
