"""A tiny service built on the backbone, for the backbone's tests.

It stages ``LimitReleased`` events (one per key and sequence number) through the outbox
and applies them with an ``InboxConsumer`` whose effect is a row in ``effects`` with no
uniqueness of its own: a double apply would show as two rows. Run as a module, it is a
separate process that the tests kill at chosen points:

    python -m tests.integration.backbone_app consume-then-die DSN BOOTSTRAP TOPIC GROUP
    python -m tests.integration.backbone_app relay-then-die DSN BOOTSTRAP
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping

import asyncpg
import structlog

from shared.consumer import Batch, Handler, InboxConsumer
from shared.db import create_pool, migrate
from shared.events import Envelope, Event, LimitReleased, new_event
from shared.outbox import OutboxRelay, write_outbox

log = structlog.get_logger(__name__)

EFFECTS_SQL = """
CREATE TABLE IF NOT EXISTS effects (
    event_id uuid NOT NULL,
    key text NOT NULL,
    seq bigint NOT NULL,
    consumer_tag text NOT NULL,
    id bigserial PRIMARY KEY
)
"""


async def prepare(dsn: str) -> None:
    await migrate(dsn, None)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(EFFECTS_SQL)
    finally:
        await conn.close()


def event_for(key: str, seq: int) -> LimitReleased:
    return LimitReleased(
        payment_id=f"{key}-{seq}", payer_id=key, day="2026-11-23", amount=seq, used=0
    )


def envelope_for(key: str, seq: int) -> Envelope:
    """The envelope of ``event_for(key, seq)``, keyed by ``key`` as risk would send it."""
    return new_event(event_for(key, seq), producer="risk", key=key, correlation_id=f"{key}-{seq}")


async def stage(dsn: str, topic: str, keys: list[str], per_key: int) -> None:
    """Write ``per_key`` events for each key through the outbox, interleaved by key."""
    conn = await asyncpg.connect(dsn)
    try:
        for seq in range(1, per_key + 1):
            async with conn.transaction():
                await write_outbox(conn, topic, [envelope_for(k, seq) for k in keys])
    finally:
        await conn.close()


def recording_handler(tag: str) -> Handler:
    async def handle(conn: asyncpg.Connection, event: Event) -> None:
        payload = event.payload
        assert isinstance(payload, LimitReleased)
        await conn.execute(
            "INSERT INTO effects (event_id, key, seq, consumer_tag) VALUES ($1, $2, $3, $4)",
            event.event_id,
            payload.payer_id,
            payload.amount,
            tag,
        )

    return handle


def handlers(tag: str = "main") -> Mapping[str, Handler]:
    return {"LimitReleased": recording_handler(tag)}


async def _consume_then_die(dsn: str, bootstrap: str, topic: str, group: str) -> None:
    async def die(_batch: Batch) -> None:
        log.info("dying_after_db_commit")
        os._exit(9)  # like kill -9: no offset commit, no cleanup

    pool = await create_pool(dsn)
    consumer = InboxConsumer(
        name=group,
        bootstrap=bootstrap,
        topics=[topic],
        pool=pool,
        handlers=handlers("doomed"),
        after_commit=die,
    )
    await consumer.run()


async def _relay_then_die(dsn: str, bootstrap: str) -> None:
    async def die(_rows: int) -> None:
        os._exit(9)  # published, acknowledged, not yet marked sent

    await OutboxRelay(dsn, bootstrap, after_publish=die).run()


def main(argv: list[str]) -> None:
    mode, *args = argv
    if mode == "consume-then-die":
        asyncio.run(_consume_then_die(*args))
    elif mode == "relay-then-die":
        asyncio.run(_relay_then_die(*args))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
