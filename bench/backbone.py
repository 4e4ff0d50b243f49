"""Benchmark: outbox -> relay -> Kafka -> idempotent consumer, on the real servers.

Stages N events through the transactional outbox (in transactions of --txn-size),
publishes them with the relay and applies them with an InboxConsumer whose effect
is one row per event. Prints throughput (events/s) and the latency from each event's
``occurred_at`` to its effect's commit (p50/p99/max).

    .venv/bin/python -m bench.backbone --events 20000             # burst: max throughput
    .venv/bin/python -m bench.backbone --events 20000 --rate 1000 # steady load: latency

Uses KAFKA_BOOTSTRAP/DATABASE_URL when set, else the local stack (deploy/stack.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
import uuid

import asyncpg

from deploy import stack
from deploy.common import kafka_admin_env, layout, read_env_file
from shared.consumer import InboxConsumer
from shared.db import create_pool, migrate
from shared.events import Event, LimitReleased, new_event
from shared.outbox import OutboxRelay, write_outbox

EFFECTS = """
CREATE TABLE IF NOT EXISTS bench_effects (
    event_id uuid NOT NULL, occurred_at timestamptz NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


async def handle(conn: asyncpg.Connection, event: Event) -> None:
    await conn.execute(
        "INSERT INTO bench_effects (event_id, occurred_at) VALUES ($1, $2)",
        event.event_id,
        event.envelope.occurred_at,
    )


async def stage(
    dsn: str, topic: str, events: int, txn_size: int, keys: int, rate: float | None
) -> float:
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        for start in range(0, events, txn_size):
            if rate:  # pace the writes: latency at a steady load, not a backlog's
                ahead = start / rate - (time.perf_counter() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            async with conn.transaction():
                batch = []
                for i in range(start, min(start + txn_size, events)):
                    key = f"u-{i % keys}"
                    payload = LimitReleased(
                        payment_id=f"p{i}", payer_id=key, day="2026-11-23", amount=i, used=0
                    )
                    batch.append(
                        new_event(payload, producer="risk", key=key, correlation_id=f"p{i}")
                    )
                await write_outbox(conn, topic, batch)
    finally:
        await conn.close()
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--txn-size", type=int, default=50, help="events per outbox transaction")
    parser.add_argument("--keys", type=int, default=1000, help="distinct partition keys (payers)")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="staged events per second (default: as fast as possible)",
    )
    args = parser.parse_args()

    kafka, admin = os.environ.get("KAFKA_BOOTSTRAP"), os.environ.get("DATABASE_URL")
    if not (kafka and admin):
        info = stack.ensure_infra()
        kafka, admin = info.kafka_bootstrap, info.database_url
        os.environ.update(kafka_admin_env(read_env_file(layout().stack_env)))  # Kafka admin
    from tests.support import create_database, create_topics, remove_what_was_made

    run = uuid.uuid4().hex[:8]
    prefix = f"bench{run}."
    await create_topics(kafka, prefix)
    topic = prefix + "payments.v1"
    dsn = await create_database(admin, f"bench_{run}")
    try:
        await _measure(args, kafka, dsn, topic, run)
    finally:  # the run's topics and database, also after a failure or ^C
        for problem in await remove_what_was_made():
            print(f"clean-up: {problem}")


async def _measure(args: argparse.Namespace, kafka: str, dsn: str, topic: str, run: str) -> None:
    await migrate(dsn, None)
    conn = await asyncpg.connect(dsn)
    await conn.execute(EFFECTS)

    pool = await create_pool(dsn, max_size=4)
    relay = OutboxRelay(dsn, kafka, poll_interval=0.05)
    consumer = InboxConsumer(
        name=f"bench-{run}",
        bootstrap=kafka,
        topics=[topic],
        pool=pool,
        handlers={"LimitReleased": handle},
    )
    tasks = [asyncio.create_task(relay.run()), asyncio.create_task(consumer.run())]
    await asyncio.sleep(3)  # let the consumer join its group before the clock starts

    t0 = time.perf_counter()
    stage_s = await stage(dsn, topic, args.events, args.txn_size, args.keys, args.rate)
    while await conn.fetchval("SELECT count(*) FROM bench_effects") < args.events:
        await asyncio.sleep(0.05)
    total_s = time.perf_counter() - t0
    lat = [
        r[0]
        for r in await conn.fetch(
            "SELECT extract(epoch FROM applied_at - occurred_at) * 1000 FROM bench_effects"
        )
    ]
    relay.stop()
    consumer.stop()
    await asyncio.gather(*tasks)
    await pool.close()
    await conn.close()

    q = statistics.quantiles([float(x) for x in lat], n=100)
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    pace = f"paced at {args.rate:,.0f}/s" if args.rate else "unpaced (burst)"
    print(
        f"events: {args.events} in outbox transactions of {args.txn_size}, {args.keys} keys, {pace}"
    )
    print(f"staging (outbox writes): {args.events / stage_s:,.0f} events/s")
    print(
        f"end to end (outbox -> relay -> Kafka -> consumer commit): {args.events / total_s:,.0f} events/s "
        f"({total_s:.2f} s)"
    )
    print(
        f"latency occurred_at -> effect committed: p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, "
        f"max {max(float(x) for x in lat):.1f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
