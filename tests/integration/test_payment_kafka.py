"""payment's workers on the real broker: the relay publishes, the consumer applies.

Fresh database and fresh prefixed topics; the consumer group is named after the
prefix so it never joins the group of a running stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from services.payment.__main__ import MIGRATIONS
from services.payment.api import create_app
from services.payment.config import PaymentSettings
from services.payment.handlers import build_handlers
from shared.consumer import InboxConsumer
from shared.db import create_pool, migrate
from shared.events import (
    EventPayload,
    JournalEntryPosted,
    JournalLine,
    ReceiptRef,
    RiskApproved,
    decode,
    encode,
    new_event,
)
from shared.kafka import client_options
from shared.outbox import OutboxRelay, make_producer
from shared.topics import TopicNames
from tests.support import Infra

pytestmark = pytest.mark.integration

KEY = "yb_test_kafka"
AUTH = {"Authorization": f"Bearer {KEY}"}


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not reached within {within} s")


@pytest.fixture
async def running(
    infra: Infra, kafka_topics: TopicNames, new_database: Callable[[], Awaitable[str]]
) -> AsyncIterator[tuple[PaymentSettings, httpx.AsyncClient]]:
    dsn = await new_database()
    await migrate(dsn, MIGRATIONS)
    pool = await create_pool(dsn)
    settings = PaymentSettings(
        environment="development",
        dsn=dsn,
        topic_prefix=kafka_topics.prefix,
        api_keys=KEY,
        kafka_bootstrap=infra.kafka_bootstrap,
    )
    relay = OutboxRelay(dsn, infra.kafka_bootstrap, poll_interval=0.2)
    consumer = InboxConsumer(
        name=f"payment-{kafka_topics.prefix}",
        bootstrap=infra.kafka_bootstrap,
        topics=[kafka_topics.risk, kafka_topics.ledger],
        pool=pool,
        handlers=build_handlers(settings),
    )
    tasks = [asyncio.create_task(relay.run()), asyncio.create_task(consumer.run())]
    app = create_app(settings, pool)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://payment"
        ) as client:
            yield settings, client
    finally:
        relay.stop()
        consumer.stop()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 30)
        await pool.close()


async def publish(
    bootstrap: str, topic: str, payloads: list[EventPayload], key: str, payment_id: str
) -> None:
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        for payload in payloads:
            envelope = new_event(payload, producer="risk", key=key, correlation_id=payment_id)
            # Deliver every event twice: at-least-once delivery must not matter.
            for _ in range(2):
                await producer.send_and_wait(topic, encode(envelope), key=key.encode())
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, expected: int, within: float = 60.0) -> list[Any]:
    """Events on ``topic`` from the start: until ``expected`` arrived or ``within`` s passed."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        **client_options(),
    )
    await consumer.start()
    found: list[Any] = []
    try:
        deadline = time.monotonic() + within
        while len(found) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                found.extend(decode(r.value) for r in records)
    finally:
        await consumer.stop()
    return found


async def test_a_payment_travels_through_kafka(
    running: tuple[PaymentSettings, httpx.AsyncClient], infra: Infra
) -> None:
    settings, client = running
    topics = settings.topics
    payer = f"u-{uuid.uuid4().hex[:8]}"
    body = {
        "payer_id": payer,
        "payer_phone": "13700137000",
        # "self": a medical account pays for a relative only once bound (test_payer_codes.py)
        "beneficiary": {"id_number": "11010519491231002X", "name": "李四", "relation": "self"},
        "purpose": {
            "type": "premium",
            "scheme": "commercial_health",
            "region": "440100",
            "period": "2027",
        },
        "amount": 43500,
        "method": "medical_account",
    }
    response = await client.post(
        "/v1/payments", json=body, headers={**AUTH, "Idempotency-Key": uuid.uuid4().hex}
    )
    assert response.status_code == 202
    payment = response.json()

    # The payment enrolled its payer: PayerEnrolled, then PaymentRequested.
    enrolled, requested = await read_topic(infra.kafka_bootstrap, topics.payments, 2)
    assert (enrolled.event_type, enrolled.envelope.key) == ("PayerEnrolled", payer)
    assert requested.event_type == "PaymentRequested"
    assert requested.envelope.key == payer
    assert requested.payload.payment.payee_name == "广州市医疗保障局"

    figures = {
        "payment_id": payment["id"],
        "payer_id": payer,
        "day": "2026-11-24",
        "cap": 5_000_000,
        "used": 43500,
        "remaining": 5_000_000 - 43500,
    }
    await publish(
        infra.kafka_bootstrap, topics.risk, [RiskApproved(**figures)], payer, payment["id"]
    )
    receipt = ReceiptRef(code="44012627", number="0000000009", check_code="Z9Y8X7")
    posted = JournalEntryPosted(
        seq=1,
        transaction_id="tx_1",
        payment_id=payment["id"],
        payer_id=payer,
        kind="premium",
        lines=(
            JournalLine(account_id=f"medical:{payer}", amount=-43500),
            JournalLine(account_id="bureau:440100:premium", amount=43500),
        ),
        posted_at=datetime.now(UTC),
        receipt=receipt,
        prev_hash="0" * 64,
        hash="1" * 64,
    )
    await publish(infra.kafka_bootstrap, topics.ledger, [posted], payer, payment["id"])

    async def succeeded() -> bool:
        shown = await client.get(f"/v1/payments/{payment['id']}", headers=AUTH)
        return bool(shown.json()["status"] == "succeeded")

    await eventually(succeeded)
    shown = (await client.get(f"/v1/payments/{payment['id']}", headers=AUTH)).json()
    assert shown["receipt"]["number"] == "0000000009"

    await read_topic(infra.kafka_bootstrap, topics.payments, 4)
    # Wait a little longer for a fifth event that must never come.
    published = await read_topic(infra.kafka_bootstrap, topics.payments, 5, within=3.0)
    assert published[0].event_type == "PayerEnrolled"
    published = published[1:]
    assert [e.event_type for e in published] == [
        "PaymentRequested",
        "PaymentAuthorized",
        "PaymentSucceeded",
    ]
    assert all(e.envelope.correlation_id == payment["id"] for e in published)
    assert published[2].payload.receipt == receipt
