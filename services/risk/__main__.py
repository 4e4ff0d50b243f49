"""Composition root: ``python -m services.risk``.

settings → logging → database and migrations → pool → app + outbox relay + payments.v1
consumer + challenge expiry sweeper → serve. Nothing connects at import.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import structlog

from services.risk.api import create_app
from services.risk.config import RiskSettings
from services.risk.handlers import ExpirySweeper, build_handlers
from shared import fastloop
from shared.consumer import InboxConsumer
from shared.outbox import OutboxRelay
from shared.person_keys import person_key_consumer
from shared.runtime import prepare_service, serve

MIGRATIONS = Path(__file__).parent / "migrations"
log = structlog.get_logger(__name__)


async def main() -> None:
    settings = RiskSettings.load_or_exit()
    pool = await prepare_service(settings, MIGRATIONS)
    rules = settings.rules()
    topics = settings.topics
    relay = OutboxRelay(settings.database_url, settings.kafka_bootstrap)
    consumer = InboxConsumer(
        name=settings.service,
        bootstrap=settings.kafka_bootstrap,
        topics=[topics.payments],
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
    sweeper = ExpirySweeper(
        pool, rules=rules, topics=topics, interval=settings.sweep_interval_seconds
    )
    log.info("risk_starting", port=settings.port, topics=[topics.payments, topics.risk])
    try:
        await serve(
            create_app(settings, pool),
            host=settings.host,
            port=settings.port,
            workers=[
                ("relay", relay.run),
                ("consumer", consumer.run),
                ("person_keys", keys.run),
                ("sweeper", sweeper.run),
            ],
        )
    finally:
        await pool.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.risk",
        description="Yibao risk service: daily caps and SMS step-up over payments.v1, the"
        " internal challenge API and GET /v1/payers/{payer_id}/daily-cap (default port"
        " 8003). Configured by environment variables (RISK_* and the shared YIBAO_*,"
        " KAFKA_BOOTSTRAP, DATABASE_URL; see docs/operators.md, Configuration).",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args()
    fastloop.run(main())
