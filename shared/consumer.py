"""Idempotent consumer: apply each event once, over at-least-once delivery.

A fetched batch is applied in one database transaction that records every applied
``event_id`` in ``inbox`` (a duplicate stops there) together with the handlers'
effects. Kafka offsets are committed only after the database commit: a crash in
between redelivers the batch, and the inbox turns the redelivery into a no-op. So
offsets need not follow every batch: they are committed at most every
``commit_every`` seconds (and when the consumer stops), one request instead of one
per batch (issue 13: under load a group committed tens of times a second); a crash or
a rebalance redelivers at most that much more, which the inbox drops.

The batch is first tried whole: one statement records the batch's event ids, then
each new event's handler runs, with no per-message savepoint (fewest round trips), and
the outbox rows every handler staged are written in one statement at the end
(``shared.outbox.staged_together``; with tracing on, inside each event's span).
If any handler raises, that transaction is rolled back and the batch is applied
again carefully: each message in its own savepoint (inbox row, then handler), so one
bad event is retried and dead-lettered alone while the others commit.

Set-based handlers (``Batched``): on the fast path, each maximal run of consecutive
new events (in applied order, duplicates already dropped by the inbox) whose handlers
share one ``Batched.many`` is handed to it at once, so a handler can read and write
each table once per run instead of once per event. The careful path still applies
one message per savepoint, through ``Batched.one``, so a poison event is isolated and
dead-lettered alone. ``Batched.many`` must leave exactly what ``Batched.one`` applied
to each event in order would (the ledger proves it in its tests). With tracing on,
runs are of one event, so every event keeps its own span and trace context.

A handler that keeps failing (``max_attempts`` tries with backoff) and a message that
cannot be decoded go to ``<topic>.dlq`` with the error and their origin; the consumer
moves on. Failures below the handlers (database or broker down) and transient database
errors raised in a handler (deadlock, serialization failure, lock timeout, connection
loss, pool timeout: ``shared.db.is_transient_db_error``) are never the event's fault:
the whole batch is rolled back and re-run after seeking back, with backoff, so nothing
is skipped or dead-lettered.

Events from newer code: an event type this group has no handler for (unknown to this
code or not its business) is skipped, its offset committed, and logged once per type
and version. The type is read first from the message's ``ce_type`` header (set by the
outbox relay and ``yibao-dlq replay`` from the same envelope, ``shared.outbox``), so
such an event is skipped without decoding its value (issue 13: most of what a group
receives is not its business); a message without the header (published before it
existed) is decoded and skipped as before.

An event type it does handle but in a ``schema_version`` newer than this code reads
PAUSES its partition: the events before it are applied and committed, the consumer
seeks back to it and retries every ``pause_seconds`` with a loud error log,
committing nothing past it and dead-lettering nothing, until a consumer that reads
that version (an upgrade) takes over. Other partitions go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from shared import tracing
from shared.db import is_transient_db_error
from shared.dlq import DeadLetter
from shared.errors import UndecodableEvent
from shared.events import Envelope, Event, decode_envelope, decode_payload, payload_type
from shared.kafka import client_options
from shared.metrics import watch_consumer
from shared.outbox import make_producer, staged_together
from shared.topics import dlq

log = structlog.get_logger(__name__)

Handler = Callable[[asyncpg.Connection, Event], Awaitable[None]]
BatchHandler = Callable[[asyncpg.Connection, list[Event]], Awaitable[None]]
Record: TypeAlias = ConsumerRecord[bytes, bytes]
Batch = Mapping[TopicPartition, Sequence[Record]]


class _HandlerFailed(Exception):
    """A handler raised on the fast path: roll back and apply the batch carefully."""


class _Retry(Exception):
    """The database or a lost race, not the event: roll back and re-run the batch."""


@dataclass(frozen=True)
class _Skip:
    """An event this group has no handler for: committed past, not applied."""


@dataclass(frozen=True)
class _Newer:
    """A handled event type in a ``schema_version`` this code cannot read: pause here."""

    reason: str


Decoded = Event | _Skip | Exception


def _traced(group: str, record: Record, event: Event) -> contextlib.AbstractContextManager[Any]:
    """The ``<topic> process`` span of applying one event, a child of the producer's
    trace (the ``traceparent`` header); nothing when tracing is off."""
    if not tracing.enabled():
        return tracing.NO_SPAN
    return tracing.processing(
        group=group,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        headers=record.headers,
        event_id=str(event.envelope.event_id),
        event_type=event.event_type,
    )


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


@dataclass(frozen=True, eq=False)
class Batched:
    """A handler that can also apply a run of events at once (module docstring).

    Called like any ``Handler`` it applies one event through ``one`` (the careful path,
    direct calls in tests); the fast path hands a run of consecutive events whose
    handlers share ``many`` to ``many`` in one call, in order. ``many`` of a list must
    have the effects of ``one`` of each event in turn, byte for byte.
    """

    one: Handler
    many: BatchHandler

    async def __call__(self, conn: asyncpg.Connection, event: Event) -> None:
        await self.one(conn, event)


def _runs(
    handlers: Mapping[str, Handler], events: Sequence[tuple[Record, Event]]
) -> list[list[tuple[Record, Event]]]:
    """``events`` cut into the runs the fast path applies: a run of consecutive events
    whose handlers are ``Batched`` with the same ``many``, else one event alone (and
    every event alone while tracing is on: each keeps its span)."""
    runs: list[list[tuple[Record, Event]]] = []
    previous: BatchHandler | None = None
    batching = not tracing.enabled()
    for pair in events:
        handler = handlers[pair[1].event_type]
        many = handler.many if batching and isinstance(handler, Batched) else None
        if runs and many is not None and many == previous:
            runs[-1].append(pair)
        else:
            runs.append([pair])
        previous = many
    return runs


def _header_type(record: Record) -> str | None:
    """The event type the ``ce_type`` header announces, None without one."""
    for name, value in record.headers or ():
        if name == "ce_type":
            try:
                return bytes(value).decode()
            except UnicodeDecodeError:
                return None
    return None


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
    retried_batches: int = 0  # batches re-run after a transient database error
    skipped: int = 0  # events of types this group has no handler for
    pauses: int = 0  # times a partition paused on a schema_version newer than this code
    dead: list[str] = field(default_factory=list)


class InboxConsumer:
    """Consumes ``topics`` as group ``name`` and applies events through ``handlers``.

    ``handlers`` maps an ``event_type`` to ``async handler(conn, event)``; the handler
    runs inside the open transaction and writes its effects (and outbox rows) on
    ``conn``. A ``Batched`` handler also takes runs of events at once (module
    docstring). Event types without a handler are skipped.
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
        pause_seconds: float = 30.0,
        after_commit: Callable[[Batch], Awaitable[None]] | None = None,
        commit_every: float = 1.0,
    ) -> None:
        self.name = name
        self._bootstrap = bootstrap
        self._topics = list(topics)
        self._pool = pool
        self._handlers = dict(handlers)
        self._max_attempts = max_attempts
        self._retry_backoff = retry_backoff
        self._batch_size = batch_size
        self._pause_seconds = pause_seconds
        self._after_commit = after_commit  # test hook: runs after the DB commit
        self._commit_every = commit_every
        self._uncommitted: dict[TopicPartition, int] = {}  # applied, offset not yet sent
        self._committed_at = 0.0
        self._stopping = asyncio.Event()
        self._skips_logged: set[tuple[str, int | None]] = set()
        self._paused_until: dict[TopicPartition, float] = {}
        self.stats = ConsumerStats()
        self.assigned: set[TopicPartition] = set()
        self.paused: dict[TopicPartition, int] = {}  # partition → offset it waits at
        # (topic, partition) → events on the partition past this consumer's position,
        # as of the last fetch (for /metrics: shared.metrics).
        self.lag: dict[tuple[str, int], int] = {}
        watch_consumer(self)

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
            **client_options(),
        )
        producer = make_producer(self._bootstrap)
        await producer.start()
        await consumer.start()
        log.info("consumer_started", consumer=self.name, topics=self._topics)
        backoff = 0.2
        try:
            while not self._stopping.is_set():
                if time.monotonic() - self._committed_at >= self._commit_every:
                    await self._commit(consumer)
                self._resume_due(consumer)
                batch = await consumer.getmany(timeout_ms=500, max_records=self._batch_size)
                self._note_assignment(set(consumer.assignment()))
                await self._measure_lag(consumer)
                if not batch:
                    continue
                decoded, held = self._decode(batch)
                applied = {tp: records for tp, records in decoded.items() if records}
                try:
                    await self._apply(decoded, producer)
                except (_Retry, KafkaError, TimeoutError) as exc:
                    cause = exc.__cause__ if isinstance(exc, _Retry) else exc
                    log.warning("batch_failed_will_retry", error=repr(cause), retry_in=backoff)
                    self.stats.redelivered_batches += 1
                    for tp, records in batch.items():
                        consumer.seek(tp, records[0].offset)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.2
                self._hold(consumer, held)
                if not applied:
                    continue
                batch_applied = {tp: [r for r, _ in pairs] for tp, pairs in applied.items()}
                if self._after_commit is not None:
                    await self._after_commit(batch_applied)
                self._uncommitted.update(
                    {tp: records[-1].offset + 1 for tp, records in batch_applied.items()}
                )
            await self._commit(consumer)
        finally:
            log.info(
                "consumer_stopped",
                consumer=self.name,
                applied=self.stats.applied,
                duplicates=self.stats.duplicates,
                batches=self.stats.batches,
            )
            with contextlib.suppress(Exception):
                await consumer.stop()
            with contextlib.suppress(Exception):
                await producer.stop()

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        """Commit the offsets applied since the last commit, of the partitions still
        assigned (a partition a rebalance took away is redelivered to its new owner
        from its last commit, and that owner's inbox drops what was applied here)."""
        self._committed_at = time.monotonic()
        assigned = consumer.assignment()
        offsets = {tp: o for tp, o in self._uncommitted.items() if tp in assigned}
        self._uncommitted = {}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # Lost the partitions in a rebalance: their new owner redelivers from the
            # last commit and its inbox drops what was applied here.
            log.warning("offset_commit_failed", error=repr(exc))

    def _note_assignment(self, assigned: set[TopicPartition]) -> None:
        """Keep the group's current share of partitions, and log it when it changes
        (several instances of a service split their topics' partitions; a rebalance
        moves them)."""
        if assigned != self.assigned:
            log.info(
                "consumer_assigned",
                consumer=self.name,
                partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned),
            )
        self.assigned = assigned

    async def _measure_lag(self, consumer: AIOKafkaConsumer) -> None:
        """What each assigned partition holds past this consumer's position (the
        broker's high watermark, known from fetches, minus the next offset to read)."""
        lag: dict[tuple[str, int], int] = {}
        for tp in self.assigned:
            high = consumer.highwater(tp)
            if high is None:
                continue
            position = await consumer.position(tp)
            lag[(tp.topic, tp.partition)] = max(high - position, 0)
        self.lag = lag

    # -- decoding: handled, skipped, dead, or held back ------------------------------

    def _decode(
        self, batch: Batch
    ) -> tuple[dict[TopicPartition, list[tuple[Record, Decoded]]], dict[TopicPartition, Record]]:
        """Each message decoded once, in batch order. A partition stops at its first
        event of a handled type in a newer ``schema_version``: that record is held."""
        decoded: dict[TopicPartition, list[tuple[Record, Decoded]]] = {}
        held: dict[TopicPartition, Record] = {}
        for tp, records in batch.items():
            pairs = decoded.setdefault(tp, [])
            for record in records:
                item = self._decode_one(record)
                if isinstance(item, _Newer):
                    held[tp] = record
                    self._log_held(record, item)
                    break
                pairs.append((record, item))
        return decoded, held

    def _decode_one(self, record: Record) -> Decoded | _Newer:
        announced = _header_type(record)
        if announced is not None and announced not in self._handlers:
            self._log_skip(announced, None)  # not decoded: its version is unknown
            return _Skip()
        try:
            envelope = decode_envelope(record.value)
        except UndecodableEvent as exc:
            return exc
        if envelope.event_type not in self._handlers:
            self._log_skip(envelope.event_type, envelope.schema_version)
            return _Skip()
        newer = self._newer_than_known(envelope)
        if newer is not None:
            return newer
        try:
            return Event(envelope, decode_payload(envelope))
        except Exception as exc:
            return exc

    @staticmethod
    def _newer_than_known(envelope: Envelope) -> _Newer | None:
        try:
            known = payload_type(envelope.event_type).schema_version
        except UndecodableEvent:  # handled here but unknown to this code's registry
            return _Newer(f"{envelope.event_type} is not an event type this code knows")
        if envelope.schema_version > known:
            return _Newer(
                f"{envelope.event_type} schema_version {envelope.schema_version} is newer"
                f" than this code's {known}"
            )
        return None

    def _log_skip(self, event_type: str, schema_version: int | None) -> None:
        """Count a skipped event; log each type (and version, when it was decoded) once."""
        self.stats.skipped += 1
        seen = (event_type, schema_version)
        if seen not in self._skips_logged:
            self._skips_logged.add(seen)
            version = {} if schema_version is None else {"schema_version": schema_version}
            log.info(
                "event_type_skipped",
                consumer=self.name,
                event_type=event_type,
                **version,
                reason="this consumer group has no handler for it",
            )

    def _log_held(self, record: Record, newer: _Newer) -> None:
        log.error(
            "consumer_paused_on_newer_event",
            consumer=self.name,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=newer.reason,
            action="upgrade this consumer; the partition waits at this offset, nothing is"
            " committed past it or dead-lettered",
            retry_in=self._pause_seconds,
        )

    def _hold(self, consumer: AIOKafkaConsumer, held: Mapping[TopicPartition, Record]) -> None:
        """Seek each held partition back to its held record and pause it for a while."""
        for tp, record in held.items():
            consumer.seek(tp, record.offset)
            consumer.pause(tp)
            self.stats.pauses += 1
            self.paused[tp] = record.offset
            self._paused_until[tp] = time.monotonic() + self._pause_seconds

    def _resume_due(self, consumer: AIOKafkaConsumer) -> None:
        now = time.monotonic()
        due = [tp for tp, until in self._paused_until.items() if until <= now]
        for tp in due:
            del self._paused_until[tp]
            self.paused.pop(tp, None)
            if tp in consumer.assignment():
                consumer.resume(tp)

    # -- applying ----------------------------------------------------------------------

    async def _apply(
        self,
        decoded: Mapping[TopicPartition, Sequence[tuple[Record, Decoded]]],
        producer: AIOKafkaProducer,
    ) -> None:
        self.stats.batches += 1
        ordered = [pair for pairs in decoded.values() for pair in pairs]
        handled = [(record, event) for record, event in ordered if isinstance(event, Event)]
        dead = [_Dead(record, exc) for record, exc in ordered if isinstance(exc, Exception)]
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                # The batch's outbox rows in one write; with tracing on, each event's
                # rows are written inside its own span (its runs are one event each).
                together = contextlib.nullcontext() if tracing.enabled() else staged_together(conn)
                async with together:
                    await self._apply_whole(conn, handled)
                await self._dead_letters(producer, dead)
                return
        except _HandlerFailed as failed:
            log.info("batch_applied_carefully", reason=repr(failed.__cause__))
        except _Retry:
            raise
        except Exception as exc:
            if is_transient_db_error(exc):  # the pool, the connection, the commit
                raise _Retry from exc
            raise
        self.stats.careful_batches += 1
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                dead = []
                for record, event in ordered:
                    if isinstance(event, Exception):
                        dead.append(_Dead(record, event))
                    elif isinstance(event, Event):
                        await self._apply_one(conn, record, event, dead)
                await self._dead_letters(producer, dead)
        except _Retry:
            raise
        except Exception as exc:
            if is_transient_db_error(exc):
                raise _Retry from exc
            raise

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
        new = [(r, e) for r, e in first_copies if e.envelope.event_id in fresh]
        for run in _runs(self._handlers, new):
            try:
                await self._handle_run(conn, run)
            except Exception as exc:
                if is_transient_db_error(exc):
                    raise _Retry from exc
                raise _HandlerFailed from exc
        self.stats.applied += len(fresh)
        self.stats.duplicates += len(handled) - len(fresh)

    async def _handle_run(self, conn: asyncpg.Connection, run: list[tuple[Record, Event]]) -> None:
        """One event through its handler, or a run through its ``Batched.many``."""
        record, event = run[0]
        handler = self._handlers[event.event_type]
        if len(run) == 1:
            with _bound(record, event), _traced(self.name, record, event):
                await handler(conn, event)
            return
        assert isinstance(handler, Batched)
        last = run[-1][0]
        with structlog.contextvars.bound_contextvars(
            batch_events=len(run),
            topic=record.topic,
            first_offset=f"{record.partition}:{record.offset}",
            last_offset=f"{last.partition}:{last.offset}",
        ):
            await handler.many(conn, [e for _, e in run])

    async def _apply_one(
        self, conn: asyncpg.Connection, record: Record, event: Event, dead: list[_Dead]
    ) -> None:
        handler = self._handlers[event.event_type]
        env = event.envelope
        with _bound(record, event), _traced(self.name, record, event):
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
                except Exception as exc:
                    if is_transient_db_error(exc):
                        raise _Retry from exc
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
