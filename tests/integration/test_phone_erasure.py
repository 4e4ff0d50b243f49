"""Erasure of the resident's phone (issue 11) in risk and notify, on real Kafka and
PostgreSQL: each copies the person keys from person-keys.v1 with a consumer of its own
(``shared.person_keys.person_key_consumer``) and drops the copy on PersonKeyErased. A
phone whose key has not arrived yet waits for it (retried, not dead-lettered); a notice
for an erased phone is recorded once, failed with the reason, and never sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import asyncpg
import httpx
import pytest

from services.notify import domain
from services.notify.handlers import build_handlers as notify_handlers
from services.notify.sender import SenderOptions, SmsSender
from services.risk.api import create_app as create_risk_app
from services.risk.config import RiskSettings
from services.risk.handlers import build_handlers as risk_handlers
from shared.consumer import InboxConsumer
from shared.crypto import Sealer, phone_aad
from shared.db import create_pool, migrate
from shared.events import (
    BeneficiaryRef,
    Envelope,
    EventPayload,
    PaymentDetails,
    PaymentRequested,
    PaymentSucceeded,
    PersonKeyErased,
    PersonKeyIssued,
    Purpose,
    decode,
    encode,
    new_event,
)
from shared.outbox import make_producer
from shared.person_keys import person_key_consumer
from shared.personal import ERASED, new_person_key, person_key_aad, seal_phone
from shared.topics import TopicNames
from tests.integration.test_notify_flow import _settings, eventually, running_gateway
from tests.support import Infra

pytestmark = pytest.mark.integration

SERVICES = Path(__file__).resolve().parents[2] / "services"


def _phone() -> str:
    return "139" + f"{secrets.randbelow(10**8):08d}"


class Person:
    """A payer whose phone events carry sealed under their person key."""

    def __init__(self, sealer: Sealer) -> None:
        self.key_id, self.key = new_person_key()
        self.sealer = sealer
        self.phone = _phone()
        self.payer_id = f"u-{uuid.uuid4().hex[:10]}"

    def sealed(self, record_id: str) -> str:
        return seal_phone(self.key_id, self.key, self.phone, aad=phone_aad(record_id))

    def issued(self) -> Envelope:
        sealed = self.sealer.seal(self.key.hex(), aad=person_key_aad(self.key_id))
        return _event(PersonKeyIssued(key_id=self.key_id, key_sealed=sealed), self.key_id)

    def erased(self) -> Envelope:
        return _event(PersonKeyErased(key_id=self.key_id, erased_at=datetime.now(UTC)), self.key_id)

    def details(self, payment_id: str, amount: int = 600_000) -> PaymentDetails:
        return PaymentDetails(
            payment_id=payment_id,
            payer_id=self.payer_id,
            payer_phone_masked="",  # inside the blob
            payer_phone_sealed=self.sealed(payment_id),
            beneficiary=BeneficiaryRef(
                id_number_masked="110105********002X",
                id_number_hash="h",
                name="张三",
                relation="self",
            ),
            purpose=Purpose(type="premium", scheme="urban_rural_resident", region="110000"),
            amount=amount,
            method="medical_account",
            payee_id="bureau:110000",
            payee_name="北京市医疗保障局",
            requested_at=datetime.now(UTC),
            caller_id="caller_test",
        )

    def succeeded(self, payment_id: str) -> Envelope:
        payload = PaymentSucceeded(
            payment_id=payment_id,
            payer_id=self.payer_id,
            amount=600_000,
            method="medical_account",
            purpose_type="premium",
            payee_name="北京市医疗保障局",
            payer_phone_masked="",
            payer_phone_sealed=self.sealed(payment_id),
            journal_seq=1,
            receipt=None,
        )
        return _event(payload, self.payer_id)


def _event(payload: EventPayload, key: str) -> Envelope:
    return new_event(payload, producer="payment", key=key, correlation_id=None)


async def produce(bootstrap: str, topic: str, *envelopes: Envelope) -> None:
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        for env in envelopes:
            await producer.send_and_wait(topic, encode(env), key=env.key.encode())
    finally:
        await producer.stop()


class Worker(Protocol):
    async def run(self) -> None: ...
    def stop(self) -> None: ...


@contextlib.asynccontextmanager
async def running(*workers: Worker) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        yield
    finally:
        for w in workers:
            w.stop()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 15)


async def test_notify_waits_for_a_key_sends_then_never_sends_to_an_erased_phone(
    infra: Infra, new_database: Callable[..., Awaitable[str]], kafka_topics: TopicNames
) -> None:
    dsn = await new_database()
    await migrate(dsn, SERVICES / "notify" / "migrations")
    pool = await create_pool(dsn, max_size=5)
    settings = _settings()
    sealer = Sealer(settings.seal_key_bytes())
    handlers = notify_handlers(settings)
    person = Person(sealer)
    topics = kafka_topics
    consumer = InboxConsumer(
        name=f"notify-{topics.prefix}",
        bootstrap=infra.kafka_bootstrap,
        topics=[topics.payments, topics.risk, topics.ledger],
        pool=pool,
        handlers=handlers,
    )
    keys = person_key_consumer(
        service=f"notify-{topics.prefix}",
        bootstrap=infra.kafka_bootstrap,
        topic=topics.person_keys,
        pool=pool,
        handlers=handlers,
    )

    async def rows(payment_id: str) -> list[asyncpg.Record]:
        return list(
            await pool.fetch(
                "SELECT kind, state, phone_masked, text_sealed, last_error FROM notifications"
                " WHERE payment_id = $1",
                payment_id,
            )
        )

    try:
        async with running_gateway() as url:
            sender = SmsSender(
                pool=pool,
                sealer=sealer,
                gateway_url=url,
                notify_topic=topics.notify,
                options=SenderOptions(),
            )
            async with running(consumer, keys, sender):
                # The outcome first, its key a moment later: the notice waits for it.
                first = f"pay_{uuid.uuid4().hex[:20]}"
                await produce(infra.kafka_bootstrap, topics.payments, person.succeeded(first))
                await asyncio.sleep(2)
                assert await rows(first) == []
                await produce(infra.kafka_bootstrap, topics.person_keys, person.issued())
                sent = await eventually(lambda: _sent(pool, first))
                masked = person.phone[:3] + "****" + person.phone[-4:]
                assert {r["phone_masked"] for r in sent} == {masked}

                # Erasure: the copy goes, the erased id is remembered, the phone scrubbed.
                await produce(infra.kafka_bootstrap, topics.person_keys, person.erased())
                await eventually(
                    lambda: pool.fetchval(
                        "SELECT count(*) = 0 FROM person_keys WHERE key_id = $1", person.key_id
                    )
                )
                assert await pool.fetchval(
                    "SELECT count(*) FROM person_keys_erased WHERE key_id = $1", person.key_id
                )
                assert {r["phone_masked"] for r in await rows(first)} == {ERASED}

                # A notice for the erased phone after that: recorded once, never sent.
                later = f"pay_{uuid.uuid4().hex[:20]}"
                outcome = person.succeeded(later)
                await produce(infra.kafka_bootstrap, topics.payments, outcome, outcome)
                recorded = await eventually(lambda: rows(later))
                assert len(recorded) == len(sent)  # the same notices, each recorded once
                assert {
                    (r["state"], r["phone_masked"], r["text_sealed"], r["last_error"])
                    for r in recorded
                } == {("failed", ERASED, "", domain.PERSON_ERASED)}
                await asyncio.sleep(1)
                assert len(await rows(later)) == len(sent)
                async with httpx.AsyncClient() as client:  # what reached the SMS gateway
                    got = await client.get(f"{url}/messages", params={"phone": person.phone})
                assert len(got.json()) == len(sent)  # only the notices before the erasure
                # A late copy of the issued key is not kept again.
                await produce(infra.kafka_bootstrap, topics.person_keys, person.issued())
                await asyncio.sleep(1.5)
                assert not await pool.fetchval("SELECT count(*) FROM person_keys")
        assert consumer.stats.dead_lettered == keys.stats.dead_lettered == 0
    finally:
        await pool.close()


async def _sent(pool: asyncpg.Pool, payment_id: str) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            "SELECT phone_masked FROM notifications WHERE payment_id = $1 AND state = 'sent'",
            payment_id,
        )
    )


async def test_risk_copies_and_drops_person_keys_and_decides_for_an_erased_phone(
    infra: Infra, new_database: Callable[..., Awaitable[str]], kafka_topics: TopicNames
) -> None:
    dsn = await new_database()
    await migrate(dsn, SERVICES / "risk" / "migrations")
    pool = await create_pool(dsn, max_size=5)
    settings = RiskSettings(dsn=dsn, YIBAO_TOPIC_PREFIX=kafka_topics.prefix)
    handlers = risk_handlers(settings)
    person = Person(settings.sealer())
    keys = person_key_consumer(
        service=f"risk-{kafka_topics.prefix}",
        bootstrap=infra.kafka_bootstrap,
        topic=kafka_topics.person_keys,
        pool=pool,
        handlers=handlers,
    )
    try:
        async with running(keys):
            await produce(infra.kafka_bootstrap, kafka_topics.person_keys, person.issued())
            await eventually(lambda: pool.fetchval("SELECT count(*) FROM person_keys"))
            await produce(infra.kafka_bootstrap, kafka_topics.person_keys, person.erased())
            await eventually(
                lambda: pool.fetchval(
                    "SELECT count(*) FROM person_keys_erased WHERE key_id = $1", person.key_id
                )
            )
            assert await pool.fetchval("SELECT count(*) FROM person_keys") == 0
        # A step-up payment of the erased person: decided, no phone counted, no crash.
        payment_id = f"pay_{uuid.uuid4().hex[:20]}"
        event = _event(PaymentRequested(payment=person.details(payment_id, 300_000)), "k")
        decoded = decode(encode(event))
        async with pool.acquire() as conn, conn.transaction():
            await handlers["PaymentRequested"](conn, decoded)
        challenge = await pool.fetchrow(
            "SELECT phone_hash FROM challenges WHERE payment_id = $1", payment_id
        )
        assert challenge is not None and challenge["phone_hash"] is None
        assert await pool.fetchval("SELECT count(*) FROM phone_codes") == 0
        # A resend (a minute later) has no phone to send to: 409, named.
        later = datetime.now(UTC) + timedelta(seconds=61)
        app = create_risk_app(settings, pool, clock=lambda: later)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://risk"
        ) as client:
            resent = await client.post(
                "/internal/v1/challenges/resend",
                json={"payment_id": payment_id},
                headers={"X-Internal-Token": settings.internal_token.get_secret_value()},
            )
        assert resent.status_code == 409, resent.text
        assert resent.json()["error"]["code"] == "phone_erased"
    finally:
        await pool.close()
