"""Every message the outbox relay publishes carries the envelope's CloudEvents
attributes as Kafka headers (issue 14), on the real broker; the value is unchanged."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from shared.events import decode, encode
from shared.kafka import client_options
from shared.outbox import OutboxRelay, cloudevents_headers, make_producer, row_headers
from shared.topics import TopicNames
from tests.integration.backbone_app import envelope_for, prepare, stage
from tests.support import Infra

pytestmark = pytest.mark.integration


def test_headers_of_an_envelope_and_of_bytes_that_are_none() -> None:
    envelope = envelope_for("u-9", 1)
    headers = dict(cloudevents_headers(encode(envelope)))
    assert headers["ce_id"] == str(envelope.event_id).encode()
    assert headers["ce_type"] == b"LimitReleased"
    assert headers["ce_source"] == b"/yibao/risk"
    assert headers["ce_specversion"] == b"1.0"
    assert headers["content-type"] == b"application/json"
    assert cloudevents_headers(b"not json") == []


@pytest.mark.parametrize("microsecond", [0, 1, 400000, 123456])
def test_headers_built_from_an_outbox_row_are_those_of_its_value(microsecond: int) -> None:
    at = datetime(2026, 11, 26, 15, 30, 59, microsecond, tzinfo=UTC)
    envelope = envelope_for("u-9", 1).model_copy(update={"occurred_at": at})
    value = encode(envelope)
    row = {
        "value": value,
        "event_id": envelope.event_id,
        "event_type": envelope.event_type,
        "producer": envelope.producer,
        # as asyncpg reads a timestamptz back: UTC, whatever the session's zone
        "occurred_at": at.astimezone(timezone(timedelta(hours=8))),
    }
    assert row_headers(row) == cloudevents_headers(value)
    # A row staged before the columns existed: its value is parsed, as before.
    assert row_headers({**row, "producer": None, "occurred_at": None}) == cloudevents_headers(value)


async def test_published_messages_carry_cloudevents_headers(
    infra: Infra, new_database: Callable[[], Awaitable[str]], kafka_topics: TopicNames
) -> None:
    dsn = await new_database()
    await prepare(dsn)
    topic = kafka_topics.risk
    await stage(dsn, topic, ["u-1", "u-2"], per_key=2)

    relay = OutboxRelay(dsn, infra.kafka_bootstrap)
    producer = make_producer(infra.kafka_bootstrap)
    await producer.start()
    conn = await asyncpg.connect(dsn)
    try:
        assert await relay.publish_batch(conn, producer) == 4
    finally:
        await conn.close()
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=infra.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=f"{topic}-ce-test",
        **client_options(),
    )
    await consumer.start()
    try:
        records = []
        while len(records) < 4:
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, "the published messages did not arrive"
            records += [r for rs in batch.values() for r in rs]
    finally:
        await consumer.stop()

    for record in records:
        event = decode(record.value)  # the envelope is untouched
        headers = {name: value.decode() for name, value in record.headers}
        assert headers == {
            "ce_id": str(event.event_id),
            "ce_type": event.event_type,
            "ce_source": "/yibao/risk",
            "ce_specversion": "1.0",
            "ce_time": event.envelope.occurred_at.isoformat().replace("+00:00", "Z"),
            "content-type": "application/json",
        }
