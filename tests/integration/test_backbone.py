"""The event backbone against the real broker and database (issue: event backbone).

Every test stages events through the outbox of a fresh database, publishes them with
the relay to fresh topics, applies them with ``InboxConsumer`` and then counts the
effects row by row: exactly one row per event, whatever was done to the pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
import structlog
import structlog.testing
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError

from deploy.topics import create_topics
from shared import events, outbox
from shared.consumer import InboxConsumer
from shared.db import create_pool
from shared.events import Envelope, Event, LimitReleased, encode, new_event
from shared.kafka import client_options
from shared.logging import mask_personal_data
from shared.outbox import OutboxRelay, cloudevents_headers, make_producer
from shared.topics import TopicNames, TopicSpec, dlq
from tests.integration.backbone_app import envelope_for, handlers, prepare, stage
from tests.support import Infra, broker_frozen

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def db(new_database: Callable[[], Awaitable[str]]) -> str:
    dsn = await new_database()
    await prepare(dsn)
    return dsn


@pytest.fixture
async def pool(db: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(db)
    yield p
    await p.close()


@pytest.fixture
def topic(kafka_topics: TopicNames) -> str:
    return kafka_topics.payments  # six partitions, with its .dlq


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout} s")


async def effect_rows(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch("SELECT event_id, key, seq, consumer_tag FROM effects ORDER BY id")
    finally:
        await conn.close()


async def applied_exactly_once(dsn: str, expected: int) -> bool:
    rows = await effect_rows(dsn)
    return len(rows) == expected


def assert_once_each(rows: list[asyncpg.Record], keys: list[str], per_key: int) -> None:
    ids = [r["event_id"] for r in rows]
    assert len(ids) == len(set(ids)), "an event was applied twice"
    assert sorted((r["key"], r["seq"]) for r in rows) == sorted(
        (k, s) for k in keys for s in range(1, per_key + 1)
    )


class Running:
    """Background tasks of a test, stopped and awaited at the end."""

    def __init__(self) -> None:
        self._items: list[tuple[Callable[[], None], asyncio.Task[None]]] = []

    def start(self, worker: InboxConsumer | OutboxRelay) -> asyncio.Task[None]:
        task = asyncio.create_task(worker.run())
        self._items.append((worker.stop, task))
        return task

    async def stop_all(self) -> None:
        for stop, _ in self._items:
            stop()
        for _, task in self._items:
            await asyncio.wait_for(task, 30)


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    r = Running()
    yield r
    await r.stop_all()


def consumer(
    infra: Infra, pool: asyncpg.Pool, topic: str, group: str, **kw: object
) -> InboxConsumer:
    return InboxConsumer(
        name=group,
        bootstrap=infra.kafka_bootstrap,
        topics=[topic],
        pool=pool,
        handlers=kw.pop("handlers", None) or handlers(),
        **kw,  # type: ignore[arg-type]
    )


def relay(infra: Infra, db: str) -> OutboxRelay:
    return OutboxRelay(db, infra.kafka_bootstrap, poll_interval=0.1)


async def outbox_unsent(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"))
    finally:
        await conn.close()


def run_app(*args: str) -> int:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration.backbone_app", *args],
        cwd=REPO,
        capture_output=True,
        timeout=120,
        check=False,
    )
    return proc.returncode


# ---------------------------------------------------------------------------


async def test_duplicated_messages_apply_once(
    infra: Infra, db: str, pool: asyncpg.Pool, topic: str, running: Running
) -> None:
    keys = ["u-a", "u-b", "u-c"]
    await stage(db, topic, keys, 20)
    running.start(relay(infra, db))
    c = consumer(infra, pool, topic, f"g-{os.urandom(4).hex()}")
    running.start(c)
    await wait_until(lambda: applied_exactly_once(db, 60))

    # Produce every message a second time, byte for byte, as a flaky producer would.
    conn = await asyncpg.connect(db)
    rows = await conn.fetch("SELECT key, value FROM outbox ORDER BY id")
    await conn.close()
    producer = make_producer(infra.kafka_bootstrap)
    await producer.start()
    try:
        for r in rows:
            await producer.send(topic, value=bytes(r["value"]), key=r["key"].encode())
        await producer.flush()
    finally:
        await producer.stop()

    async def all_duplicates_seen() -> bool:
        return c.stats.duplicates >= 60

    await wait_until(all_duplicates_seen)
    assert_once_each(await effect_rows(db), keys, 20)
    assert c.stats.applied == 60
    assert c.stats.careful_batches == 0  # no handler failed: every batch went the fast path


async def test_the_same_event_twice_in_one_batch_applies_once(
    infra: Infra, db: str, pool: asyncpg.Pool, topic: str, running: Running
) -> None:
    value = encode(envelope_for("u-t", 1))
    producer = AIOKafkaProducer(
        bootstrap_servers=infra.kafka_bootstrap, enable_idempotence=True, **client_options()
    )
    await producer.start()
    try:  # both copies are on the topic before the consumer starts: one fetch, one batch
        for _ in range(2):
            await producer.send_and_wait(topic, value=value, key=b"u-t")
    finally:
        await producer.stop()
    c = consumer(infra, pool, topic, f"g-{os.urandom(4).hex()}")
    running.start(c)
    await wait_until(lambda: applied_exactly_once(db, 1))

    async def both_seen() -> bool:
        return c.stats.applied + c.stats.duplicates >= 2

    await wait_until(both_seen)
    assert [(r["key"], r["seq"]) for r in await effect_rows(db)] == [("u-t", 1)]
    assert (c.stats.applied, c.stats.duplicates, c.stats.batches) == (1, 1, 1)


async def test_consumer_killed_after_db_commit_before_offset_commit(
    infra: Infra, db: str, pool: asyncpg.Pool, topic: str, running: Running
) -> None:
    keys = ["u-k1", "u-k2"]
    await stage(db, topic, keys, 10)
    r = relay(infra, db)
    running.start(r)

    async def published() -> bool:
        return await outbox_unsent(db) == 0

    await wait_until(published)
    group = f"g-{os.urandom(4).hex()}"
    code = await asyncio.to_thread(
        run_app, "consume-then-die", db, infra.kafka_bootstrap, topic, group
    )
    assert code == 9, "the doomed consumer should die right after its database commit"
    doomed = [row for row in await effect_rows(db) if row["consumer_tag"] == "doomed"]
    assert doomed, "the doomed consumer applied nothing before dying"

    c = consumer(infra, pool, topic, group)
    running.start(c)

    async def redelivered() -> bool:
        # What the dead consumer applied comes again (its offsets were never committed).
        return c.stats.duplicates >= len(doomed)

    await wait_until(redelivered)
    await wait_until(lambda: applied_exactly_once(db, 20))
    await asyncio.sleep(1.0)  # anything still in flight would show up now
    assert_once_each(await effect_rows(db), keys, 10)
    assert c.stats.duplicates == len(doomed)


async def test_relay_killed_after_publish_before_marking_sent(
    infra: Infra, db: str, pool: asyncpg.Pool, topic: str, running: Running
) -> None:
    keys = ["u-r1", "u-r2"]
    await stage(db, topic, keys, 5)
    code = await asyncio.to_thread(run_app, "relay-then-die", db, infra.kafka_bootstrap)
    assert code == 9
    assert await outbox_unsent(db) == 10, "rows must stay unsent when the relay dies"

    c = consumer(infra, pool, topic, f"g-{os.urandom(4).hex()}")
    running.start(c)
    running.start(relay(infra, db))  # publishes the same ten rows again

    async def twice_delivered() -> bool:
        return c.stats.applied + c.stats.duplicates >= 20

    await wait_until(twice_delivered)
    assert await outbox_unsent(db) == 0
    assert_once_each(await effect_rows(db), keys, 5)
    assert c.stats.duplicates == 10


async def test_an_event_too_large_is_never_staged_and_one_the_broker_refuses_is_named(
    infra: Infra, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row the broker refuses for its size would hold every later row back for ever:
    ``write_outbox`` refuses an event over the limit before staging anything, and a row
    that got there anyway (a topic whose ``max.message.bytes`` was never raised) stays
    unsent while the relay names it at error level."""
    [small] = await create_topics(
        infra.kafka_bootstrap,
        f"t{os.urandom(3).hex()}.",
        [TopicSpec("small", 1, (("max.message.bytes", "2000"),))],
    )
    big = envelope_for("u-" + "x" * 4000, 1)
    conn = await asyncpg.connect(db)
    try:
        monkeypatch.setattr(outbox, "MAX_EVENT_BYTES", 2000)
        with pytest.raises(outbox.EventTooLarge) as refused:
            async with conn.transaction():
                await outbox.write_outbox(conn, small, [envelope_for("u-1", 1), big])
        assert refused.value.event_type == "LimitReleased" and refused.value.size > 4000
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
        monkeypatch.undo()

        async with conn.transaction():
            await outbox.write_outbox(conn, small, [big, envelope_for("u-1", 1)])
        producer = make_producer(infra.kafka_bootstrap)
        await producer.start()
        try:
            with structlog.testing.capture_logs() as logs, pytest.raises(MessageSizeTooLargeError):
                await relay(infra, db).publish_batch(conn, producer)
        finally:
            await producer.stop()
        [said] = [x for x in logs if x["event"] == "outbox_event_too_large"]
        assert (said["log_level"], said["event_id"]) == ("error", str(big.event_id))
        assert said["bytes"] > 4000 and said["topic"] == small
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 2
    finally:
        await conn.close()


async def test_writes_staged_together_are_one_statement_in_staged_order(db: str) -> None:
    """``staged_together``: the block's ``write_outbox`` calls on its connection, to any
    topics, become one INSERT at its end, rows in the order staged; an error in the
    block writes none of them; another connection's writes are not held back."""
    conn, other = await asyncpg.connect(db), await asyncpg.connect(db)
    statements: list[str] = []
    conn.add_query_logger(lambda record: statements.append(record.query))
    first, second, third = (envelope_for(k, 1) for k in ("u-a", "u-b", "u-c"))
    try:
        async with conn.transaction(), outbox.staged_together(conn):
            await outbox.write_outbox(conn, "t.one", [first])
            async with outbox.staged_together(conn):  # nested: the same block
                await outbox.write_outbox(conn, "t.two", [second, third])
            await outbox.write_outbox(other, "t.other", [envelope_for("u-d", 1)])
            assert await other.fetchval("SELECT count(*) FROM outbox") == 1  # at once
            assert not any("outbox" in q for q in statements)  # held back
        rows = await conn.fetch("SELECT topic, event_id FROM outbox ORDER BY id")
        assert [(r["topic"], r["event_id"]) for r in rows] == [
            ("t.other", rows[0]["event_id"]),
            ("t.one", first.event_id),
            ("t.two", second.event_id),
            ("t.two", third.event_id),
        ]
        assert sum("INSERT INTO outbox" in q for q in statements) == 1

        async def failing_block() -> None:
            async with conn.transaction(), outbox.staged_together(conn):
                await outbox.write_outbox(conn, "t.one", [envelope_for("u-e", 1)])
                raise RuntimeError("the block fails")

        with pytest.raises(RuntimeError):
            await failing_block()
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 4
    finally:
        await conn.close()
        await other.close()


async def test_broker_outage_mid_stream_loses_and_duplicates_nothing(
    infra: Infra, db: str, pool: asyncpg.Pool, topic: str, running: Running
) -> None:
    keys = ["u-o1", "u-o2", "u-o3"]
    running.start(relay(infra, db))
    running.start(consumer(infra, pool, topic, f"g-{os.urandom(4).hex()}"))
    await stage(db, topic, keys, 10)
    await wait_until(lambda: applied_exactly_once(db, 30))

    async with broker_frozen(infra):  # the broker stops answering, connections stay open
        await stage(db, topic, keys[:2], 10)  # written while the broker is away
        await asyncio.sleep(6)
    conn = await asyncpg.connect(db)
    await conn.execute("UPDATE effects SET seq = seq")  # the database kept working
    await conn.close()
    await stage(db, topic, keys[2:], 10)

    await wait_until(lambda: applied_exactly_once(db, 60), timeout=120)
    await asyncio.sleep(1.0)
    rows = await effect_rows(db)
    ids = [r["event_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 60


async def test_two_instances_split_partitions_and_survive_rebalances(
    infra: Infra, db: str, pool: asyncpg.Pool, topic: str, running: Running
) -> None:
    keys = [f"u-s{i}" for i in range(12)]
    group = f"g-{os.urandom(4).hex()}"
    running.start(relay(infra, db))
    first = consumer(infra, pool, topic, group, handlers=handlers("first"))
    first_task = running.start(first)
    await stage(db, topic, keys, 5)
    await wait_until(lambda: applied_exactly_once(db, 60))

    second = consumer(infra, pool, topic, group, handlers=handlers("second"))
    running.start(second)

    async def split() -> bool:
        return (
            bool(first.assigned)
            and bool(second.assigned)
            and not (first.assigned & second.assigned)
            and len(first.assigned | second.assigned) == 6
        )

    await wait_until(split)
    await stage(db, topic, keys, 10)  # seq 1..10 again per key: new events, new ids
    await wait_until(lambda: applied_exactly_once(db, 180))
    tags = {r["consumer_tag"] for r in (await effect_rows(db))[60:]}
    assert tags == {"first", "second"}, "both instances should have applied events"

    first.stop()  # the survivor takes every partition over
    await asyncio.wait_for(first_task, 30)
    await stage(db, topic, keys, 3)
    await wait_until(lambda: applied_exactly_once(db, 216))
    await asyncio.sleep(1.0)
    rows = await effect_rows(db)
    ids = [r["event_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 216
    assert {r["consumer_tag"] for r in rows[180:]} == {"second"}


async def test_poison_messages_go_to_the_dead_letter_topic(
    infra: Infra, db: str, pool: asyncpg.Pool, topic: str, running: Running
) -> None:
    record = handlers()["LimitReleased"]

    async def fussy(conn: asyncpg.Connection, event: Event) -> None:
        assert isinstance(event.payload, LimitReleased)
        if event.payload.payment_id == "poison":
            raise RuntimeError("this payment always fails")
        await record(conn, event)

    def env(payment_id: str, seq: int) -> bytes:
        payload = LimitReleased(
            payment_id=payment_id, payer_id="u-p", day="2026-11-23", amount=seq, used=0
        )
        return encode(new_event(payload, producer="risk", key="u-p", correlation_id=payment_id))

    producer = AIOKafkaProducer(
        bootstrap_servers=infra.kafka_bootstrap, enable_idempotence=True, **client_options()
    )
    await producer.start()
    try:
        for value in (env("ok-1", 1), b"{not json", env("poison", 2), env("ok-3", 3)):
            await producer.send_and_wait(topic, value=value, key=b"u-p")
    finally:
        await producer.stop()

    c = consumer(
        infra,
        pool,
        topic,
        f"g-{os.urandom(4).hex()}",
        handlers={"LimitReleased": fussy},
        max_attempts=2,
        retry_backoff=0.01,
    )
    running.start(c)
    await wait_until(lambda: applied_exactly_once(db, 2))
    assert [(r["key"], r["seq"]) for r in await effect_rows(db)] == [("u-p", 1), ("u-p", 3)]

    reader = AIOKafkaConsumer(
        dlq(topic),
        bootstrap_servers=infra.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **client_options(),
    )
    await reader.start()
    try:
        dead: list[dict[str, object]] = []
        deadline = time.monotonic() + 30
        while len(dead) < 2 and time.monotonic() < deadline:
            for records in (await reader.getmany(timeout_ms=500)).values():
                dead.extend(json.loads(r.value) for r in records if r.value)
    finally:
        await reader.stop()
    assert len(dead) == 2
    assert "not a valid envelope" in str(dead[0]["error"])
    assert dead[0]["topic"] == topic and dead[0]["offset"] == 1
    assert dead[1]["error"] == "RuntimeError: this payment always fails"
    assert dead[1]["offset"] == 2
    assert dead[1]["original"]["payload"]["payment_id"] == "poison"  # type: ignore[index]
    assert c.stats.careful_batches >= 1  # the failing handler sent its batch the careful way


async def test_per_key_order_is_kept_end_to_end(
    infra: Infra, db: str, pool: asyncpg.Pool, topic: str, running: Running
) -> None:
    keys = [f"u-o{i}" for i in range(8)]
    running.start(relay(infra, db))
    running.start(consumer(infra, pool, topic, f"g-{os.urandom(4).hex()}"))
    await stage(db, topic, keys, 25)
    await wait_until(lambda: applied_exactly_once(db, 200))
    rows = await effect_rows(db)
    for key in keys:
        assert [r["seq"] for r in rows if r["key"] == key] == list(range(1, 26))


async def test_logs_while_handling_carry_only_masked_personal_data(
    infra: Infra, db: str, pool: asyncpg.Pool, topic: str, running: Running
) -> None:
    log = structlog.get_logger("handler")
    record = handlers()["LimitReleased"]

    async def chatty(conn: asyncpg.Connection, event: Event) -> None:
        log.info(
            "applying", phone="13800138000", note="beneficiary 11010519491231002X", code="123456"
        )
        await record(conn, event)

    running.start(relay(infra, db))
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars, mask_personal_data]
    ) as logs:
        running.start(
            consumer(
                infra, pool, topic, f"g-{os.urandom(4).hex()}", handlers={"LimitReleased": chatty}
            )
        )
        await stage(db, topic, ["u-m"], 1)
        await wait_until(lambda: applied_exactly_once(db, 1))
    applying = [e for e in logs if e["event"] == "applying"]
    assert len(applying) == 1
    line = applying[0]
    assert line["phone"] == "138****8000"
    assert line["note"] == "beneficiary 110105********002X"
    assert line["code"] == "[redacted]"
    assert line["correlation_id"] == "u-m-1" and line["topic"] == topic
    flat = json.dumps(logs, default=str, ensure_ascii=False)
    assert "13800138000" not in flat and "11010519491231002X" not in flat and "123456" not in flat


# ---------------------------------------------------------------------------
# Transient database errors are retried; newer events are skipped or pause
# ---------------------------------------------------------------------------


Headers = list[tuple[str, bytes]]


async def send_raw(
    infra: Infra,
    topic: str,
    values: list[bytes],
    key: bytes = b"u-v",
    headers: list[Headers | None] | None = None,
) -> int:
    """Produce ``values`` under ``key``, in order, to one partition, each with its
    ``headers`` (none by default); that partition."""
    producer = AIOKafkaProducer(
        bootstrap_servers=infra.kafka_bootstrap, enable_idempotence=True, **client_options()
    )
    await producer.start()
    each = headers or [None] * len(values)
    try:
        partitions = {
            (await producer.send_and_wait(topic, value=value, key=key, headers=h)).partition
            for value, h in zip(values, each, strict=True)
        }
    finally:
        await producer.stop()
    [partition] = partitions
    return int(partition)


async def committed(infra: Infra, topic: str, group: str, partition: int) -> int | None:
    """The offset ``group`` committed on ``partition`` (None: nothing yet)."""
    reader = AIOKafkaConsumer(
        bootstrap_servers=infra.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        **client_options(),
    )
    await reader.start()
    try:
        offset = await reader.committed(TopicPartition(topic, partition))
        return None if offset is None else int(offset)
    finally:
        await reader.stop()


def limit_released(payment_id: str, seq: int, key: str = "u-v") -> Envelope:
    payload = LimitReleased(
        payment_id=payment_id, payer_id=key, day="2026-11-23", amount=seq, used=0
    )
    return new_event(payload, producer="risk", key=key, correlation_id=payment_id)


async def dead_letters(infra: Infra, topic: str) -> list[dict[str, object]]:
    reader = AIOKafkaConsumer(
        dlq(topic),
        bootstrap_servers=infra.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **client_options(),
    )
    await reader.start()
    try:
        found: list[dict[str, object]] = []
        for records in (await reader.getmany(timeout_ms=3000)).values():
            found.extend(json.loads(r.value) for r in records if r.value)
        return found
    finally:
        await reader.stop()


async def test_a_lock_timeout_in_a_handler_is_retried_never_dead_lettered(
    infra: Infra, db: str, pool: asyncpg.Pool, topic: str, running: Running
) -> None:
    """A real lock_timeout (55P03) while another transaction holds the row: today the
    handler's error dead-letters the event after three tries; it must wait instead."""
    record = handlers()["LimitReleased"]
    blocker = await asyncpg.connect(db)
    await blocker.execute("CREATE TABLE IF NOT EXISTS hot (id int PRIMARY KEY)")
    await blocker.execute("INSERT INTO hot VALUES (1) ON CONFLICT DO NOTHING")
    holding = blocker.transaction()
    await holding.start()
    await blocker.execute("SELECT * FROM hot WHERE id = 1 FOR UPDATE")

    async def contended(conn: asyncpg.Connection, event: Event) -> None:
        await conn.execute("SET LOCAL lock_timeout = '50ms'")
        await conn.execute("SELECT * FROM hot WHERE id = 1 FOR UPDATE")
        await record(conn, event)

    await send_raw(infra, topic, [encode(limit_released(f"lk-{i}", i)) for i in (1, 2, 3)])
    c = consumer(
        infra,
        pool,
        topic,
        f"g-{os.urandom(4).hex()}",
        handlers={"LimitReleased": contended},
        max_attempts=2,
        retry_backoff=0.01,
    )
    running.start(c)

    async def retried_a_while() -> bool:
        return c.stats.redelivered_batches >= 3

    try:
        await wait_until(retried_a_while)
    finally:
        await holding.rollback()
        await blocker.close()
    await wait_until(lambda: applied_exactly_once(db, 3))
    assert [r["seq"] for r in await effect_rows(db)] == [1, 2, 3]
    assert c.stats.dead_lettered == 0 and not await dead_letters(infra, topic)


@pytest.mark.parametrize(
    "transient",
    [
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
        asyncpg.exceptions.SerializationError("could not serialize access"),
        asyncpg.exceptions.InterfaceError("connection is closed"),
        TimeoutError(),  # a pool acquire that timed out
    ],
    ids=["deadlock", "serialization", "interface", "pool-timeout"],
)
async def test_transient_database_errors_rerun_the_batch_never_dead_letter(
    infra: Infra,
    db: str,
    pool: asyncpg.Pool,
    topic: str,
    running: Running,
    transient: Exception,
) -> None:
    record = handlers()["LimitReleased"]
    failures = 5  # more than max_attempts: per-message retries alone would dead-letter

    async def unlucky(conn: asyncpg.Connection, event: Event) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise RuntimeError("the store gave up") from transient  # wrapped, as stores do
        await record(conn, event)

    await send_raw(infra, topic, [encode(limit_released(f"tr-{i}", i)) for i in (1, 2)])
    c = consumer(
        infra,
        pool,
        topic,
        f"g-{os.urandom(4).hex()}",
        handlers={"LimitReleased": unlucky},
        max_attempts=2,
        retry_backoff=0.01,
    )
    running.start(c)
    await wait_until(lambda: applied_exactly_once(db, 2))
    assert [r["seq"] for r in await effect_rows(db)] == [1, 2]
    assert c.stats.redelivered_batches >= 1
    assert c.stats.dead_lettered == 0 and not await dead_letters(infra, topic)


async def test_events_without_a_handler_are_skipped_and_committed_not_dead_lettered(
    infra: Infra, db: str, pool: asyncpg.Pool, topic: str, running: Running
) -> None:
    future_type = limit_released("fx-2", 2).model_copy(update={"event_type": "PremiumRebated"})
    newer_unhandled = limit_released("fx-3", 3).model_copy(update={"event_type": "PaymentHeld"})
    partition = await send_raw(
        infra,
        topic,
        [
            encode(limit_released("fx-1", 1)),
            encode(future_type),  # unknown to this code
            encode(newer_unhandled.model_copy(update={"schema_version": 99})),
            encode(limit_released("fx-4", 4)),
        ],
    )
    group = f"g-{os.urandom(4).hex()}"
    with structlog.testing.capture_logs() as logs:
        c = consumer(infra, pool, topic, group)
        running.start(c)
        await wait_until(lambda: applied_exactly_once(db, 2))

        async def all_committed() -> bool:
            return await committed(infra, topic, group, partition) == 4

        await wait_until(all_committed)
    assert [r["seq"] for r in await effect_rows(db)] == [1, 4]
    assert (c.stats.skipped, c.stats.dead_lettered) == (2, 0)
    assert not await dead_letters(infra, topic)
    skipped = [e for e in logs if e["event"] == "event_type_skipped"]
    assert sorted(e["event_type"] for e in skipped) == ["PaymentHeld", "PremiumRebated"]


async def test_an_unhandled_type_in_the_ce_type_header_is_skipped_without_decoding(
    infra: Infra, db: str, pool: asyncpg.Pool, topic: str, running: Running
) -> None:
    handled = limit_released("hd-3", 3)
    partition = await send_raw(
        infra,
        topic,
        [
            encode(limit_released("hd-1", 1)),  # no header: decoded and handled as before
            b"not an envelope at all",  # would be dead-lettered, were it decoded
            encode(handled),  # a handled type announced by its header: decoded, handled
            encode(handled.model_copy(update={"event_type": "PremiumRebated"})),  # no header
        ],
        headers=[None, [("ce_type", b"PaymentHeld")], cloudevents_headers(encode(handled)), None],
    )
    group = f"g-{os.urandom(4).hex()}"
    with structlog.testing.capture_logs() as logs:
        c = consumer(infra, pool, topic, group)
        running.start(c)
        await wait_until(lambda: applied_exactly_once(db, 2))

        async def all_committed() -> bool:
            return await committed(infra, topic, group, partition) == 4

        await wait_until(all_committed)
    assert [r["seq"] for r in await effect_rows(db)] == [1, 3]
    assert (c.stats.skipped, c.stats.dead_lettered) == (2, 0)
    assert not await dead_letters(infra, topic)
    skipped = {e["event_type"]: e for e in logs if e["event"] == "event_type_skipped"}
    assert sorted(skipped) == ["PaymentHeld", "PremiumRebated"]
    assert "schema_version" not in skipped["PaymentHeld"]  # never decoded
    assert skipped["PremiumRebated"]["schema_version"] == 1


async def test_a_newer_schema_version_pauses_the_handling_group_until_it_is_upgraded(
    infra: Infra,
    db: str,
    pool: asyncpg.Pool,
    topic: str,
    running: Running,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    newer = limit_released("nv-2", 2).model_copy(update={"schema_version": 2})
    partition = await send_raw(
        infra,
        topic,
        [encode(limit_released("nv-1", 1)), encode(newer), encode(limit_released("nv-3", 3))],
    )
    group = f"g-{os.urandom(4).hex()}"
    bystander = f"g-{os.urandom(4).hex()}"  # no LimitReleased handler: skips all three
    with structlog.testing.capture_logs() as logs:
        c = consumer(infra, pool, topic, group, pause_seconds=0.3)
        task = running.start(c)
        running.start(
            consumer(infra, pool, topic, bystander, handlers={"Other": handlers()["LimitReleased"]})
        )

        async def paused_twice() -> bool:
            return c.stats.pauses >= 2

        await wait_until(paused_twice)  # it retries, and stays paused

        async def bystander_done() -> bool:
            return await committed(infra, topic, bystander, partition) == 3

        await wait_until(bystander_done)
    assert [r["seq"] for r in await effect_rows(db)] == [1]  # nv-3 waits behind nv-2
    assert await committed(infra, topic, group, partition) == 1
    assert c.stats.dead_lettered == 0 and not await dead_letters(infra, topic)
    loud = [e for e in logs if e["event"] == "consumer_paused_on_newer_event"]
    assert loud and loud[0]["log_level"] == "error" and loud[0]["offset"] == 1
    assert "schema_version 2 is newer" in loud[0]["reason"]

    c.stop()  # the upgrade: a consumer whose code reads version 99 takes over
    await asyncio.wait_for(task, 30)
    monkeypatch.setattr(LimitReleased, "schema_version", 2)
    monkeypatch.setitem(events._UPCASTERS, ("LimitReleased", 1), dict)
    running.start(consumer(infra, pool, topic, group))
    await wait_until(lambda: applied_exactly_once(db, 3))
    assert [r["seq"] for r in await effect_rows(db)] == [1, 2, 3]


async def test_offsets_are_committed_on_a_timer_and_on_stop_and_a_crash_redelivers(
    infra: Infra, db: str, pool: asyncpg.Pool, topic: str
) -> None:
    partition = await send_raw(
        infra, topic, [encode(limit_released(f"oc-{i}", i)) for i in (1, 2, 3)]
    )
    group = f"g-{os.urandom(4).hex()}"
    # Applied but not yet committed (the timer is an hour): killed there, nothing is
    # committed and the next consumer of the group gets all three again...
    first = consumer(infra, pool, topic, group, commit_every=3600)
    task = asyncio.create_task(first.run())
    await wait_until(lambda: applied_exactly_once(db, 3))
    assert await committed(infra, topic, group, partition) is None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await committed(infra, topic, group, partition) is None
    # ... which its inbox drops; stopped, it commits what it applied.
    second = consumer(infra, pool, topic, group, commit_every=3600)
    task = asyncio.create_task(second.run())

    async def redelivered() -> bool:
        return second.stats.duplicates == 3

    await wait_until(redelivered)
    assert await committed(infra, topic, group, partition) is None
    second.stop()
    await asyncio.wait_for(task, 30)
    assert await committed(infra, topic, group, partition) == 3
    assert [r["seq"] for r in await effect_rows(db)] == [1, 2, 3]
