"""Transactional outbox: write events with the state change; a relay publishes them.

``write_outbox`` runs inside the caller's transaction. The relay claims unsent rows
in id order with ``FOR UPDATE SKIP LOCKED`` (never ``id > last_id``: sequences commit
out of order) and marks them sent in the same statement, publishes them with an
idempotent producer, and commits the mark only after the broker acknowledged every
one. A crash (or a failed send) before that commit rolls the mark back and republishes
the rows; consumers drop the duplicates by ``event_id``.

No NOTIFY (issue 13: ``pg_notify`` takes PostgreSQL's cluster-wide NOTIFY lock at
commit, which serialized every writing transaction). The relay polls adaptively
(``shared.polling.Pacing``): right after a full batch, a few ms after a batch that
found rows (``linger``: batches grow under load), and after empty polls at rests that
double from a few ms up to ``poll_interval``. A write through a pool connection of
this process wakes it as soon as that connection is released, its transaction over
(``shared.polling``, channel ``WAKE_CHANNEL``): the in-process writers (the API's
requests, the consumers, the workers) are published at once at low load; any other
writer (another instance) is found by the next poll.

Each message carries the envelope's CloudEvents attributes as Kafka headers
(``cloudevents_headers``: ``ce_id``, ``ce_type``, ``ce_source``, ``ce_specversion``,
``ce_time`` and ``content-type``), built from the row's columns (``row_headers``: no
parsing of the value but for rows staged before those columns). The envelope in the
value stays the truth; consumers read only ``ce_type``, to skip an event they have no
handler for without decoding it (``shared.consumer``).

An event's encoded envelope is at most ``shared.topics.MAX_EVENT_BYTES``: a larger one
is refused before it is staged (``EventTooLarge``, the caller's transaction rolls
back), because a row the broker refuses would block every later row for ever. Should
one get there anyway (a topic whose ``max.message.bytes`` was never raised), the relay
says so at error level on every attempt, naming the row (``outbox_event_too_large``).

One relay publishes per database at a time: it holds a session advisory lock, and
instances without the lock stand by and retry.

Tracing (``shared.tracing``, when on): each row keeps the ``traceparent`` of the
transaction that staged it, and ``send_row`` publishes it inside that context, so the
message's ``traceparent`` header continues the trace that wrote the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError
from aiokafka.structs import RecordMetadata

from shared import polling, tracing
from shared.errors import YibaoError
from shared.events import Envelope, encode
from shared.kafka import client_options
from shared.polling import FIRST_REST, LINGER, Pacing, Rest
from shared.topics import MAX_EVENT_BYTES, MESSAGE_BYTES

log = structlog.get_logger(__name__)

WAKE_CHANNEL = "yibao_outbox"  # shared.polling: rows staged in this process
RELAY_LOCK = 0x59_42_41_4F_52_4C_59  # "YBAORLY"
# The broker (or the producer) refused a message for its size: retrying cannot help.
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)


class EventTooLarge(YibaoError):
    """An event whose encoded envelope is over ``MAX_EVENT_BYTES``; nothing was staged."""

    def __init__(self, event_type: str, size: int, limit: int) -> None:
        super().__init__(
            f"{event_type} is {size} bytes encoded, over the {limit}-byte limit of an event"
        )
        self.event_type = event_type
        self.size = size
        self.limit = limit


@dataclass(frozen=True)
class _Row:
    topic: str
    event: Envelope
    value: bytes
    traceparent: str | None


@dataclass(eq=False)
class _Staged:
    """The rows ``write_outbox`` staged on ``conn`` inside ``staged_together``."""

    conn: asyncpg.Connection
    rows: list[_Row] = field(default_factory=list)


_together: ContextVar[_Staged | None] = ContextVar("yibao_outbox_together", default=None)


async def write_outbox(conn: asyncpg.Connection, topic: str, events: Sequence[Envelope]) -> None:
    """Stage ``events`` for ``topic`` in the caller's open transaction, with the
    caller's trace context (``traceparent``; NULL when tracing is off). The relay of
    this process is woken once ``conn`` goes back to its pool (``shared.polling``).
    Raises ``EventTooLarge`` (staging nothing) for an event over ``MAX_EVENT_BYTES``.
    Inside ``staged_together(conn)`` the rows are written at the end of that block."""
    if not events:
        return
    traceparent = tracing.current_traceparent()
    rows = []
    for event in events:
        value = encode(event)
        if len(value) > MAX_EVENT_BYTES:
            raise EventTooLarge(event.event_type, len(value), MAX_EVENT_BYTES)
        rows.append(_Row(topic, event, value, traceparent))
    together = _together.get()
    if together is not None and together.conn is conn:
        together.rows.extend(rows)
        return
    await _insert(conn, rows)


@contextlib.asynccontextmanager
async def staged_together(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """Every ``write_outbox`` on ``conn`` inside the block is written in one statement
    when the block ends without an error, in the order they were staged (issue 13: a
    new payer's payment staged three writes, a consumer's batch one per run). For a
    block inside one transaction that rolls back whole: nothing is written after an
    error, so a savepoint rolled back inside it would keep its rows. Nested blocks on
    the same connection are one."""
    current = _together.get()
    if current is not None and current.conn is conn:
        yield
        return
    staged = _Staged(conn)
    token = _together.set(staged)
    try:
        yield
    finally:
        _together.reset(token)
    await _insert(conn, staged.rows)


async def _insert(conn: asyncpg.Connection, rows: Sequence[_Row]) -> None:
    """One round trip: the rows, ids assigned in the given order, which is the order
    the relay publishes them."""
    if not rows:
        return
    await conn.execute(
        "INSERT INTO outbox (topic, key, event_id, event_type, value, traceparent, producer,"
        " occurred_at)"
        " SELECT tp, k, e, t, v, tr, p, o FROM unnest($1::text[], $2::text[], $3::uuid[],"
        " $4::text[], $5::bytea[], $6::text[], $7::text[], $8::timestamptz[])"
        " WITH ORDINALITY AS u(tp, k, e, t, v, tr, p, o, n) ORDER BY n",
        [r.topic for r in rows],
        [r.event.key for r in rows],
        [r.event.event_id for r in rows],
        [r.event.event_type for r in rows],
        [r.value for r in rows],
        [r.traceparent for r in rows],
        [r.event.producer for r in rows],
        [r.event.occurred_at for r in rows],
    )
    polling.after_release(conn, WAKE_CHANNEL)


CE_SPECVERSION = b"1.0"
_CONTENT_TYPE = ("content-type", b"application/json")


def cloudevents_headers(value: bytes) -> list[tuple[str, bytes]]:
    """The CloudEvents 1.0 attributes of an encoded envelope, as Kafka headers (the
    Kafka protocol binding's binary-mode names); none for a value that is not one."""
    try:
        envelope = json.loads(value)
        attributes = [
            ("ce_id", str(envelope["event_id"])),
            ("ce_type", str(envelope["event_type"])),
            ("ce_source", f"/yibao/{envelope['producer']}"),
            ("ce_time", str(envelope["occurred_at"])),
        ]
    except (ValueError, KeyError, TypeError):
        return []
    return [
        *((name, text.encode()) for name, text in attributes),
        ("ce_specversion", CE_SPECVERSION),
        _CONTENT_TYPE,
    ]


def row_headers(row: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """``cloudevents_headers`` of an outbox row, the same values built from its columns
    (no parsing of the value on the relay's hot path); a row staged before the
    ``producer`` and ``occurred_at`` columns existed is parsed as before."""
    if row["producer"] is None or row["occurred_at"] is None:
        return cloudevents_headers(bytes(row["value"]))
    return [
        ("ce_id", str(row["event_id"]).encode()),
        ("ce_type", row["event_type"].encode()),
        ("ce_source", b"/yibao/" + row["producer"].encode()),
        ("ce_time", rfc3339(row["occurred_at"]).encode()),
        ("ce_specversion", CE_SPECVERSION),
        _CONTENT_TYPE,
    ]


def rfc3339(moment: datetime) -> str:
    """A UTC time as the envelope's JSON writes it (``2026-11-26T15:30:59.123456Z``,
    no fraction when it is zero)."""
    text = moment.astimezone(UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


async def send_row(
    producer: AIOKafkaProducer, row: Mapping[str, Any]
) -> asyncio.Future[RecordMetadata]:
    """Queue one outbox row. Headers: the CloudEvents attributes of its envelope
    (``row_headers``) and ``traceparent`` (W3C), the trace of the transaction that
    staged the row: sent inside that context, the Kafka instrumentation's send span is
    its child and appends its own context to the (mutable) header list."""
    headers = row_headers(row)
    with tracing.publishing(row["traceparent"]):
        sent: asyncio.Future[RecordMetadata] = await producer.send(
            row["topic"], value=bytes(row["value"]), key=row["key"].encode(), headers=headers
        )
    return sent


def make_producer(bootstrap: str, **overrides: object) -> AIOKafkaProducer:
    """The one producer configuration Yibao uses: idempotent, all acks, small linger,
    this process's Kafka principal (``shared.kafka``); ``overrides`` win."""
    options: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "max_request_size": MESSAGE_BYTES,  # an event over max_batch_size: a batch alone
        "request_timeout_ms": 15000,
        **client_options(),
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


# The oldest unsent rows (ids are assigned in commit-independent order, so no
# ``id > last``), locked and marked sent in one statement; the mark commits only after
# the broker acknowledged them (``OutboxRelay.publish_batch``). RETURNING keeps no order.
_CLAIM_AND_MARK = (
    "UPDATE outbox o SET sent_at = now() FROM (SELECT id FROM outbox WHERE sent_at IS NULL"
    " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) c WHERE o.id = c.id"
    " RETURNING o.id, o.topic, o.key, o.value, o.traceparent, o.event_id, o.event_type,"
    " o.producer, o.occurred_at"
)


def _by_id(row: asyncpg.Record) -> int:
    return int(row["id"])


class OutboxRelay:
    """Publishes committed outbox rows of one database to Kafka, in order, at least once."""

    def __init__(
        self,
        dsn: str,
        bootstrap: str,
        *,
        batch_size: int = 500,
        poll_interval: float = 0.1,
        linger: float = LINGER,
        first_rest: float = FIRST_REST,
        max_backoff: float = 5.0,
        purge_after_days: int = 7,
        after_publish: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self._dsn = dsn
        self._bootstrap = bootstrap
        self._batch_size = batch_size
        self._pacing = Pacing(poll_interval, linger=linger, first_rest=first_rest)
        self._max_backoff = max_backoff
        self._purge_after_days = purge_after_days
        self._after_publish = after_publish  # test hook: runs before the mark commits
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.published = 0

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def wake(self) -> None:
        """End the current rest early: rows were committed (``shared.polling``)."""
        self._wake.set()

    async def run(self) -> None:
        """Hold the relay lock, then publish until stopped; survives broker outages.
        Woken by this process's writes while it holds the lock (``WAKE_CHANNEL``)."""
        conn = await asyncpg.connect(self._dsn)
        try:
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK):
                log.debug("outbox_relay_standby")
                if await self._sleep(2.0):
                    return
            polling.listen(WAKE_CHANNEL, self.wake)
            try:
                log.info("outbox_relay_started")
                await self._publish_loop(conn)
            finally:
                polling.unlisten(WAKE_CHANNEL, self.wake)
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _rest(self, rest: Rest) -> bool:
        """Rest as ``Pacing`` said (a linger only ``stop`` ends; a wake-up stays set for
        the caller to see); True when the relay should stop."""
        if rest.seconds > 0:
            until = self._wake if rest.wakeable else self._stopping
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), rest.seconds)
        return self._stopping.is_set()

    async def _sleep(self, seconds: float) -> bool:
        """Wait for a wake-up or ``seconds``; True when the relay should stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()
        return self._stopping.is_set()

    async def _publish_loop(self, conn: asyncpg.Connection) -> None:
        producer: AIOKafkaProducer | None = None
        backoff = 0.2
        last_purge = 0.0
        look_first = False
        try:
            while not self._stopping.is_set():
                try:
                    if producer is None:
                        producer = make_producer(self._bootstrap)
                        await producer.start()
                    # Cleared before the claim: a wake-up during it means rows it may
                    # not have seen, so the rest after it ends at once.
                    self._wake.clear()
                    if look_first and not await self._any_unsent(conn):
                        sent = 0
                    else:
                        sent = await self.publish_batch(conn, producer)
                    backoff = 0.2
                    if time.monotonic() - last_purge > 3600:
                        await self._purge(conn)
                        last_purge = time.monotonic()
                    rest = self._pacing.after(sent, full=sent >= self._batch_size)
                    if await self._rest(rest):
                        return
                    # After a full batch (more is waiting) or a wake-up (rows were
                    # committed) claim at once; after a linger or a quiet rest, one
                    # cheap look first: an empty claim costs three round trips.
                    look_first = rest.seconds > 0 and not self._wake.is_set()
                except (KafkaError, OSError, TimeoutError) as exc:
                    log.warning("outbox_publish_failed", error=repr(exc), retry_in=backoff)
                    if producer is not None:
                        with contextlib.suppress(Exception):
                            await producer.stop()
                        producer = None
                    if await self._sleep(backoff):
                        return
                    backoff = min(backoff * 2, self._max_backoff)
        finally:
            if producer is not None:
                with contextlib.suppress(Exception):
                    await producer.stop()

    async def publish_batch(self, conn: asyncpg.Connection, producer: AIOKafkaProducer) -> int:
        """Claim and mark one batch (one statement), publish it, commit the mark once
        the broker has every row; returns how many rows were sent."""
        async with conn.transaction():
            rows = sorted(await conn.fetch(_CLAIM_AND_MARK, self._batch_size), key=_by_id)
            if not rows:
                return 0
            # Sends are queued in id order; the idempotent producer keeps each
            # partition's order, so each payer's events leave in the order written.
            try:
                futures = [await send_row(producer, r) for r in rows]
                await asyncio.gather(*futures)
            except _TOO_LARGE:
                largest = max(rows, key=lambda r: len(r["value"]))
                log.exception(
                    "outbox_event_too_large",
                    event_id=str(largest["event_id"]),
                    event_type=largest["event_type"],
                    topic=largest["topic"],
                    bytes=len(largest["value"]),
                    effect="every later event of this database waits behind it",
                    fix=f"give the topic max.message.bytes={MESSAGE_BYTES}"
                    " (python -m deploy.topics sets it)",
                )
                raise
            if self._after_publish is not None:
                await self._after_publish(len(rows))
        self.published += len(rows)
        return len(rows)

    @staticmethod
    async def _any_unsent(conn: asyncpg.Connection) -> bool:
        """Whether a claim would find rows (one autocommitted statement on the partial
        index of unsent rows; a row locked by a claim elsewhere counts too)."""
        return bool(
            await conn.fetchval("SELECT EXISTS (SELECT 1 FROM outbox WHERE sent_at IS NULL)")
        )

    async def _purge(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            "DELETE FROM outbox WHERE sent_at < now() - make_interval(days => $1)",
            self._purge_after_days,
        )
