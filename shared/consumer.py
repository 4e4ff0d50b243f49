"""Idempotent consumer: apply each event once, over at-least-once delivery.

A fetched batch is applied in one database transaction that records every applied
``event_id`` in ``inbox`` (a duplicate stops there) together with the handlers'
effects. Kafka offsets are committed only after the database commit: a crash in
between redelivers the batch, and the inbox turns the redelivery into a no-op.

The batch is first tried whole: one statement records the batch's event ids, then
each new event's handler runs, with no per-message savepoint (fewest round trips).
If any handler raises, that transaction is rolled back and the batch is applied
again carefully: each message in its own savepoint (inbox row, then handler), so one
bad event is retried and dead-lettered alone while the others commit.

A handler that keeps failing (``max_attempts`` tries with backoff) and a message that
cannot be decoded go to ``<topic>.dlq`` with the error and their origin; the consumer
moves on. Failures below the handlers (database or broker down) retry the whole batch
after seeking back, so nothing is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from shared.dlq import DeadLetter
from shared.events import Event, decode
from shared.outbox import make_producer
from shared.topics import dlq

log = structlog.get_logger(__name__)

Handler = Callable[[asyncpg.Connection, Event], Awaitable[None]]
Record: TypeAlias = ConsumerRecord[bytes, bytes]
Batch = Mapping[TopicPartition, Sequence[Record]]

# Errors that mean "the database is gone", not "this event is bad": retry the batch.
_INFRA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    ConnectionError,
    OSError,
)


class _HandlerFailed(Exception):
    """A handler raised on the fast path: roll back and apply the batch carefully."""


def _bound(record: Record, event: Event) -> contextlib.AbstractContextManager[None]:
    """Log context for one message: its event id, type, correlation and origin."""
    env = event.envelope
    return structlog.contextvars.bound_contextvars(
        event_id=str(env.event_id),
        event_type=env.event_type,
        correlation_id=env.correlation_id,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
    )


@dataclass
class _Dead:
    record: Record
    error: BaseException


@dataclass
class ConsumerStats:
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    redelivered_batches: int = 0
    careful_batches: int = 0  # batches re-applied message by message after a handler failed
    dead: list[str] = field(default_factory=list)


class InboxConsumer:
    """Consumes ``topics`` as group ``name`` and applies events through ``handlers``.

    ``handlers`` maps an ``event_type`` to ``async handler(conn, event)``; the handler
    runs inside the open transaction and writes its effects (and outbox rows) on
    ``conn``. Event types without a handler are skipped.
    """

    def __init__(
        self,
        *,
        name: str,
        bootstrap: str,
        topics: Sequence[str],
        pool: asyncpg.Pool,
        handlers: Mapping[str, Handler],
        max_attempts: int = 3,
        retry_backoff: float = 0.1,
        batch_size: int = 500,
        after_commit: Callable[[Batch], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self._bootstrap = bootstrap
        self._topics = list(topics)
        self._pool = pool
        self._handlers = dict(handlers)
        self._max_attempts = max_attempts
        self._retry_backoff = retry_backoff
        self._batch_size = batch_size
        self._after_commit = after_commit  # test hook: runs after the DB commit
        self._stopping = asyncio.Event()
        self.stats = ConsumerStats()
        self.assigned: set[TopicPartition] = set()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            *self._topics,
            bootstrap_servers=self._bootstrap,
            group_id=self.name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._batch_size,
            session_timeout_ms=10000,
            heartbeat_interval_ms=1000,
        )
        producer = make_producer(self._bootstrap)
        await producer.start()
        await consumer.start()
        log.info("consumer_started", consumer=self.name, topics=self._topics)
        backoff = 0.2
        try:
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=self._batch_size)
                self.assigned = set(consumer.assignment())
                if not batch:
                    continue
                try:
                    await self._apply(batch, producer)
                except (*_INFRA_ERRORS, KafkaError, TimeoutError) as exc:
                    log.warning("batch_failed_will_retry", error=repr(exc), retry_in=backoff)
                    self.stats.redelivered_batches += 1
                    for tp, records in batch.items():
                        consumer.seek(tp, records[0].offset)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.2
                if self._after_commit is not None:
                    await self._after_commit(batch)
                offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
                try:
                    await consumer.commit(offsets)
                except (CommitFailedError, KafkaError) as exc:
                    # Lost the partitions in a rebalance: the new owner redelivers from
                    # the last committed offset and the inbox drops what we applied.
                    log.warning("offset_commit_failed", error=repr(exc))
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
            with contextlib.suppress(Exception):
                await producer.stop()

    async def _apply(self, batch: Batch, producer: AIOKafkaProducer) -> None:
        self.stats.batches += 1
        # Each message decoded once, in batch order: its event, or why it is not one.
        decoded: list[tuple[Record, Event | Exception]] = []
        for records in batch.values():
            for record in records:
                try:
                    decoded.append((record, decode(record.value)))
                except Exception as exc:
                    decoded.append((record, exc))
        handled = [
            (record, event)
            for record, event in decoded
            if isinstance(event, Event) and event.event_type in self._handlers
        ]
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await self._apply_whole(conn, handled)
                await self._dead_letters(
                    producer,
                    [_Dead(record, exc) for record, exc in decoded if isinstance(exc, Exception)],
                )
                return
        except _HandlerFailed as failed:
            log.info("batch_applied_carefully", reason=repr(failed.__cause__))
        self.stats.careful_batches += 1
        async with self._pool.acquire() as conn, conn.transaction():
            dead: list[_Dead] = []
            for record, event in decoded:
                if isinstance(event, Exception):
                    dead.append(_Dead(record, event))
                elif event.event_type in self._handlers:
                    await self._apply_one(conn, record, event, dead)
            await self._dead_letters(producer, dead)

    async def _dead_letters(self, producer: AIOKafkaProducer, dead: list[_Dead]) -> None:
        # Dead letters are acknowledged by the broker before the transaction
        # commits: a crash in between retries them, it never loses them.
        for item in dead:
            await self._dead_letter(producer, item)

    async def _apply_whole(
        self, conn: asyncpg.Connection, handled: list[tuple[Record, Event]]
    ) -> None:
        """The fast path: the batch's inbox rows in one statement, then every new event's
        handler; raises ``_HandlerFailed`` (the caller rolls back) on an error."""
        if not handled:
            return
        firsts: dict[uuid.UUID, tuple[Record, Event]] = {}
        for record, event in handled:  # a copy later in the same batch is a duplicate
            firsts.setdefault(event.envelope.event_id, (record, event))
        first_copies = list(firsts.values())
        fresh = {
            row["event_id"]
            for row in await conn.fetch(
                "INSERT INTO inbox (consumer, event_id, topic, kafka_partition, kafka_offset)"
                " SELECT $1, * FROM unnest($2::uuid[], $3::text[], $4::int[], $5::bigint[])"
                " ON CONFLICT DO NOTHING RETURNING event_id",
                self.name,
                [event.envelope.event_id for _, event in first_copies],
                [record.topic for record, _ in first_copies],
                [record.partition for record, _ in first_copies],
                [record.offset for record, _ in first_copies],
            )
        }
        for record, event in first_copies:
            if event.envelope.event_id not in fresh:
                continue
            with _bound(record, event):
                try:
                    await self._handlers[event.event_type](conn, event)
                except _INFRA_ERRORS:
                    raise
                except Exception as exc:
                    raise _HandlerFailed from exc
        self.stats.applied += len(fresh)
        self.stats.duplicates += len(handled) - len(fresh)

    async def _apply_one(
        self, conn: asyncpg.Connection, record: Record, event: Event, dead: list[_Dead]
    ) -> None:
        handler = self._handlers[event.event_type]
        env = event.envelope
        with _bound(record, event):
            for attempt in range(1, self._max_attempts + 1):
                try:
                    async with conn.transaction():  # a savepoint inside the batch
                        first = await conn.fetchval(
                            "INSERT INTO inbox (consumer, event_id, topic, kafka_partition,"
                            " kafka_offset) VALUES ($1, $2, $3, $4, $5)"
                            " ON CONFLICT DO NOTHING RETURNING true",
                            self.name,
                            env.event_id,
                            record.topic,
                            record.partition,
                            record.offset,
                        )
                        if not first:
                            self.stats.duplicates += 1
                            return
                        await handler(conn, event)
                except _INFRA_ERRORS:
                    raise
                except Exception as exc:
                    if attempt == self._max_attempts:
                        log.exception("handler_failed_dead_lettering", error=repr(exc))
                        dead.append(_Dead(record, exc))
                        return
                    log.warning("handler_failed_retrying", error=repr(exc), attempt=attempt)
                    await asyncio.sleep(self._retry_backoff * 2 ** (attempt - 1))
                else:
                    self.stats.applied += 1
                    return

    async def _dead_letter(self, producer: AIOKafkaProducer, item: _Dead) -> None:
        letter = DeadLetter.of(item.record, item.error, self.name)
        await producer.send_and_wait(dlq(letter.topic), value=letter.encode(), key=item.record.key)
        self.stats.dead_lettered += 1
        self.stats.dead.append(letter.error)
        log.error("dead_lettered", topic=letter.topic, offset=letter.offset, error=letter.error)
