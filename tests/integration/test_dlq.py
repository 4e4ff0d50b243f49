"""``yibao-dlq``: dead letters are listed with their cause and, once fixed, replayed
into their topic, where each consumer group applies them exactly once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from shared.consumer import Handler, InboxConsumer
from shared.db import create_pool
from shared.dlq import main, read_dead_letters
from shared.events import Event, LimitReleased, encode
from shared.kafka import client_options
from shared.topics import TopicNames
from tests.integration.backbone_app import envelope_for, handlers, prepare
from tests.support import Infra, eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(new_database: Callable[[], Awaitable[str]]) -> AsyncIterator[asyncpg.Pool]:
    dsn = await new_database()
    await prepare(dsn)
    p = await create_pool(dsn)
    yield p
    await p.close()


async def seqs(pool: asyncpg.Pool) -> list[int]:
    return [r["seq"] for r in await pool.fetch("SELECT seq FROM effects ORDER BY id")]


async def cli(*argv: str) -> int:
    """The console command, run as an operator would (its own event loop, in a thread)."""
    return await asyncio.to_thread(main, list(argv))


@contextlib.asynccontextmanager
async def consuming(
    infra: Infra, pool: asyncpg.Pool, topic: str, group: str, handler: Handler
) -> AsyncIterator[InboxConsumer]:
    c = InboxConsumer(
        name=group,
        bootstrap=infra.kafka_bootstrap,
        topics=[topic],
        pool=pool,
        handlers={"LimitReleased": handler},
        max_attempts=2,
        retry_backoff=0.01,
    )
    task = asyncio.create_task(c.run())
    try:
        yield c
    finally:
        c.stop()
        await asyncio.wait_for(task, 30)


async def test_dead_letters_are_listed_then_replayed_once_fixed(
    infra: Infra,
    pool: asyncpg.Pool,
    kafka_topics: TopicNames,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic, group = kafka_topics.payments, f"{kafka_topics.prefix}g"
    record = handlers()["LimitReleased"]
    broken = True

    async def flaky(conn: asyncpg.Connection, event: Event) -> None:
        assert isinstance(event.payload, LimitReleased)
        if broken and event.payload.payment_id == "u-d-2":
            raise RuntimeError("bureau table missing region 990000")
        await record(conn, event)

    producer = AIOKafkaProducer(
        bootstrap_servers=infra.kafka_bootstrap, enable_idempotence=True, **client_options()
    )
    await producer.start()
    try:
        for value in (
            encode(envelope_for("u-d", 1)),
            b"\xff not json",
            encode(envelope_for("u-d", 2)),
        ):
            await producer.send_and_wait(topic, value=value, key=b"u-d")
    finally:
        await producer.stop()

    async with consuming(infra, pool, topic, group, flaky) as c:
        await eventually(lambda: c.stats.dead_lettered == 2)
    assert await seqs(pool) == [1]

    letters = await read_dead_letters(infra.kafka_bootstrap, topic)
    assert [(d.dlq_offset, d.offset, d.replayable) for d in letters] == [
        (0, 1, False),
        (1, 2, True),
    ]
    assert letters[1].error == "RuntimeError: bureau table missing region 990000"
    assert letters[1].consumer == group and letters[1].key == "u-d"

    args = ["--bootstrap", infra.kafka_bootstrap, "--topic-prefix", kafka_topics.prefix]
    assert await cli(*args, "list", "payments.v1") == 0
    listed = capsys.readouterr().out
    assert "bureau table missing region 990000" in listed and "2 dead letter(s)" in listed

    # The undecodable one is refused by name; the event is sent back once the cause is fixed.
    assert await cli(*args, "replay", "payments.v1", "--offset", "0") == 1
    broken = False
    assert await cli(*args, "replay", "payments.v1", "--all") == 0
    out = capsys.readouterr().out
    assert "replayed dlq@1" in out and "skipped dlq@0" in out
    # A second replay (an operator's repeat) changes nothing: the inbox drops it.
    assert await cli(*args, "replay", "payments.v1", "--offset", "1") == 0

    async with consuming(infra, pool, topic, group, flaky) as c:
        await eventually(lambda: c.stats.applied + c.stats.duplicates >= 2)
    assert await seqs(pool) == [1, 2]
    assert (c.stats.applied, c.stats.duplicates, c.stats.dead_lettered) == (1, 1, 0)
    assert await cli(*args, "replay", "payments.v1", "--offset", "7") == 1  # no such letter

    # Replayed messages carry the CloudEvents headers, as the outbox relay sends them.
    reader = AIOKafkaConsumer(
        topic,
        bootstrap_servers=infra.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **client_options(),
    )
    await reader.start()
    try:
        on_topic: list[ConsumerRecord[bytes, bytes]] = []
        while len(on_topic) < 5:  # the test's three, then the two replays
            batch = await reader.getmany(timeout_ms=10_000)
            assert batch, f"only {len(on_topic)} messages on {topic}"
            on_topic += [r for rs in batch.values() for r in rs]
    finally:
        await reader.stop()
    replayed = [r for r in on_topic if r.offset >= 3]  # after the test's own three
    assert [dict(r.headers) for r in on_topic if r.offset < 3] == [{}, {}, {}]
    assert replayed and all(dict(r.headers)["ce_type"] == b"LimitReleased" for r in replayed)
