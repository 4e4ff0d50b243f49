"""notify end to end within the service: real Kafka, PostgreSQL and HTTP to the gateway.

Events are produced to this test's own topics; the real consumer, sender and relay run
against a fresh database; the development gateway listens on a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from structlog.testing import capture_logs

from services.notify import api, domain, gateway, store
from services.notify.config import NotifySettings
from services.notify.handlers import build_handlers
from services.notify.sender import SenderOptions, SmsSender
from shared import polling
from shared.consumer import Batched, InboxConsumer
from shared.crypto import Sealer, b64e, code_aad, phone_aad
from shared.db import create_pool, migrate
from shared.events import (
    BeneficiaryRef,
    Envelope,
    Event,
    EventPayload,
    PaymentDeclined,
    PaymentDetails,
    PaymentRequested,
    PaymentSucceeded,
    Purpose,
    ReceiptIssued,
    StepUpRequired,
    decode,
    encode,
    new_event,
)
from shared.kafka import client_options
from shared.outbox import OutboxRelay, make_producer
from shared.topics import TopicNames
from tests.support import Infra, serving

pytestmark = pytest.mark.integration

MIGRATIONS = Path(gateway.__file__).parent / "migrations"
T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T | None]], within: float = 40.0) -> T:
    """Poll ``check`` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within} s (last: {value!r})")
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def running_gateway(fail_first: int = 0) -> AsyncIterator[str]:
    async with serving(gateway.create_app(None, fail_first)) as url:
        yield url


@dataclass
class Notify:
    bootstrap: str
    dsn: str
    pool: asyncpg.Pool
    sealer: Sealer
    topics: TopicNames
    gateway_url: str
    consumer: InboxConsumer
    sender: SmsSender

    async def produce(self, *envelopes: Envelope) -> None:
        producer = make_producer(self.bootstrap)
        await producer.start()
        try:
            for env in envelopes:
                topic = {
                    "risk": self.topics.risk,
                    "ledger": self.topics.ledger,
                }.get(env.producer, self.topics.payments)
                await producer.send_and_wait(topic, encode(env), key=env.key.encode())
        finally:
            await producer.stop()

    async def messages(self, phone: str) -> list[dict[str, Any]]:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{self.gateway_url}/messages", params={"phone": phone})
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    async def rows(self, payment_id: str) -> list[asyncpg.Record]:
        async with self.pool.acquire() as conn:
            return list(
                await conn.fetch(
                    "SELECT * FROM notifications WHERE payment_id = $1 ORDER BY created_at",
                    payment_id,
                )
            )


def caller_name(key: str) -> str:
    """The pseudonymous id ``shared.http`` gives a caller key."""
    return "caller_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _settings() -> NotifySettings:
    """Settings with a seal key of this test's own."""
    return NotifySettings(YIBAO_SEAL_KEY=b64e(os.urandom(32)))


@contextlib.asynccontextmanager
async def running_notify(
    infra: Infra,
    new_database: Callable[..., Awaitable[str]],
    topics: TopicNames,
    *,
    fail_first: int = 0,
    with_relay: bool = False,
) -> AsyncIterator[Notify]:
    dsn = await new_database()
    await migrate(dsn, MIGRATIONS)
    pool = await create_pool(dsn, max_size=5)
    settings = _settings()
    sealer = Sealer(settings.seal_key_bytes())
    async with running_gateway(fail_first) as url:
        consumer = InboxConsumer(
            name=f"notify-{topics.prefix}",
            bootstrap=infra.kafka_bootstrap,
            topics=[topics.payments, topics.risk, topics.ledger],
            pool=pool,
            handlers=build_handlers(settings),
        )
        sender = SmsSender(
            pool=pool,
            sealer=sealer,
            gateway_url=url,
            notify_topic=topics.notify,
            options=SenderOptions(backoff_base=timedelta(milliseconds=300)),
        )
        relay = OutboxRelay(dsn, infra.kafka_bootstrap)
        workers = [consumer.run(), sender.run()] + ([relay.run()] if with_relay else [])
        tasks = [asyncio.create_task(w) for w in workers]
        try:
            yield Notify(infra.kafka_bootstrap, dsn, pool, sealer, topics, url, consumer, sender)
        finally:
            consumer.stop()
            sender.stop()
            relay.stop()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(task, 15)
            await pool.close()


# --- events as the other services publish them ---------------------------------------


def _phone() -> str:
    return "138" + f"{secrets.randbelow(10**8):08d}"


@dataclass
class Payment:
    payment_id: str
    payer_id: str
    phone: str
    sealer: Sealer

    @property
    def phone_sealed(self) -> str:
        return self.sealer.seal(self.phone, aad=phone_aad(self.payment_id))

    @property
    def phone_masked(self) -> str:
        return self.phone[:3] + "****" + self.phone[-4:]

    def envelope(self, payload: EventPayload, producer: str) -> Envelope:
        return new_event(
            payload,
            producer=producer,  # type: ignore[arg-type]
            key=self.payer_id,
            correlation_id=self.payment_id,
            causation_id=uuid.uuid4(),
        )

    def step_up(self, code: str, amount: int = 600000) -> Envelope:
        challenge_id = f"ch-{uuid.uuid4().hex[:10]}"
        return self.envelope(
            StepUpRequired(
                payment_id=self.payment_id,
                payer_id=self.payer_id,
                day="2027-01-15",
                cap=5_000_000,
                used=amount,
                remaining=5_000_000 - amount,
                challenge_id=challenge_id,
                expires_at=datetime.now(UTC) + timedelta(minutes=5),
                amount=amount,
                payee_name="北京市医疗保障局",
                code_sealed=self.sealer.seal(code, aad=code_aad(challenge_id)),
                payer_phone_sealed=self.phone_sealed,
            ),
            "risk",
        )

    def requested(self, *, caller_id: str, amount: int = 600000) -> Envelope:
        details = PaymentDetails(
            payment_id=self.payment_id,
            payer_id=self.payer_id,
            payer_phone_masked=self.phone_masked,
            payer_phone_sealed=self.phone_sealed,
            beneficiary=BeneficiaryRef(
                id_number_masked="110105********002X",
                id_number_hash="h",
                name="张三",
                relation="self",
            ),
            purpose=Purpose(type="premium", scheme="urban_rural_resident", region="110000"),
            amount=amount,
            method="bank_card",
            payee_id="bureau:110000",
            payee_name="北京市医疗保障局",
            requested_at=datetime.now(UTC),
            caller_id=caller_id,
        )
        return self.envelope(PaymentRequested(payment=details), "payment")

    def _outcome(self, amount: int) -> dict[str, Any]:
        return {
            "payment_id": self.payment_id,
            "payer_id": self.payer_id,
            "amount": amount,
            "method": "bank_card",
            "purpose_type": "premium",
            "payee_name": "北京市医疗保障局",
            "payer_phone_masked": self.phone_masked,
            "payer_phone_sealed": self.phone_sealed,
        }

    def succeeded(self, amount: int = 600000) -> Envelope:
        return self.envelope(
            PaymentSucceeded(**self._outcome(amount), journal_seq=1, receipt=None), "payment"
        )

    def declined(self, amount: int = 600000) -> Envelope:
        return self.envelope(
            PaymentDeclined(
                **self._outcome(amount),
                decline_code="verification_failed",
                message="5 wrong codes",
            ),
            "payment",
        )

    def receipt(self, check_code: str, amount: int = 600000) -> Envelope:
        face = {
            "code": "11012327",
            "number": f"{secrets.randbelow(10**10):010d}",
            "check_code": check_code,
            "total": amount,
        }
        return self.envelope(
            ReceiptIssued(
                payment_id=self.payment_id,
                payer_id=self.payer_id,
                journal_seq=1,
                receipt=face,
                signature="c2ln",
                key_id="k1",
                payer_phone_sealed=self.phone_sealed,
            ),
            "ledger",
        )


def _payment(sealer: Sealer) -> Payment:
    return Payment(f"pay-{uuid.uuid4().hex[:12]}", f"u-{uuid.uuid4().hex[:8]}", _phone(), sealer)


# --- tests ------------------------------------------------------------------------------


async def test_one_sms_per_event_despite_duplicates_and_gateway_failures(
    infra: Infra, new_database: Callable[..., Awaitable[str]], kafka_topics: TopicNames
) -> None:
    async with running_notify(infra, new_database, kafka_topics, fail_first=2) as n:
        pay = _payment(n.sealer)
        code = f"{secrets.randbelow(10**6):06d}"
        step_up, success = pay.step_up(code), pay.succeeded()
        receipt = pay.receipt("Xy7k2P")
        # Every event twice, as at-least-once delivery may hand it over.
        await n.produce(step_up, success, receipt, step_up, success, receipt)

        async def all_sent() -> list[asyncpg.Record] | None:
            rows = await n.rows(pay.payment_id)
            return rows if len(rows) == 3 and all(r["state"] == "sent" for r in rows) else None

        rows = await eventually(all_sent)
        messages = await n.messages(pay.phone)
        assert n.consumer.stats.duplicates >= 3  # the inbox dropped the second copies

    texts = sorted(m["text"] for m in messages)
    assert texts == sorted(
        [
            f"【医保】验证码{code}，用于向北京市医疗保障局支付6,000.00元，5分钟内有效，请勿泄露。",
            f"【医保】您已成功向北京市医疗保障局支付6,000.00元，支付单号{pay.payment_id}。",
            f"【医保】您的电子票据已开具：票据代码11012327，票据号码{receipt.payload['receipt']['number']}，"
            "校验码Xy7k2P，金额6,000.00元，可在医保服务查验真伪。",
        ]
    )
    by_kind = {r["kind"]: r for r in rows}
    assert set(by_kind) == {"sms_code", "payment_result", "receipt"}
    expected: tuple[tuple[domain.Kind, Envelope], ...] = (
        ("sms_code", step_up),
        ("payment_result", success),
        ("receipt", receipt),
    )
    for kind, env in expected:
        assert by_kind[kind]["source_event_id"] == env.event_id
        assert by_kind[kind]["message_id"] == domain.message_id_for(env.event_id, kind)
    assert {m["message_id"] for m in messages} == {r["message_id"] for r in rows}
    # The gateway refused the first two POSTs: five tries in all, each SMS stored once.
    assert sum(r["attempts"] for r in rows) == 5
    assert all(r["phone_masked"] == pay.phone_masked for r in rows)
    assert all(r["sent_at"] is not None and r["last_error"] is None for r in rows)


async def test_nothing_clear_at_rest_and_sent_events_published(
    infra: Infra, new_database: Callable[..., Awaitable[str]], kafka_topics: TopicNames
) -> None:
    with capture_logs() as logs:  # no masking processor: our own lines must be clean
        async with running_notify(infra, new_database, kafka_topics, with_relay=True) as n:
            pay = _payment(n.sealer)
            code = f"{secrets.randbelow(10**6):06d}"
            step_up = pay.step_up(code)
            check_code = "Q" + secrets.token_hex(3)[:5]
            await n.produce(step_up, pay.receipt(check_code))

            async def delivered() -> list[dict[str, Any]] | None:
                got = await n.messages(pay.phone)
                return got if len(got) == 2 else None

            messages = await eventually(delivered)
            assert any(code in m["text"] for m in messages)
            sent_events = await _read_notify_topic(infra, kafka_topics, expected=2)

            async with n.pool.acquire() as conn:
                tables = [
                    r["tablename"]
                    for r in await conn.fetch(
                        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                    )
                ]
                dumped = []
                for table in tables:  # names come from the catalogue, not from input
                    query = f'SELECT t::text AS row FROM "{table}" t'  # noqa: S608
                    dumped += [r["row"] for r in await conn.fetch(query)]
                values = await conn.fetch("SELECT value FROM outbox")
                outbox = [bytes(r["value"]).decode() for r in values]
                row = await conn.fetchrow(
                    "SELECT id, text_sealed, phone_sealed FROM notifications"
                    " WHERE kind = 'sms_code' AND payment_id = $1",
                    pay.payment_id,
                )
    logged = json.dumps(logs, ensure_ascii=False, default=str)
    assert {"notification_queued", "sms_sent"} <= {e["event"] for e in logs}
    for clear in (code, check_code, pay.phone):
        assert clear not in logged
    assert pay.phone_masked in logged
    everything = "\n".join(dumped + outbox)
    assert "notifications" in tables
    assert code not in everything
    assert check_code not in everything
    assert pay.phone not in everything
    assert pay.phone_masked in everything
    # The sealed text opens only with its own row's binding.
    assert code in n.sealer.open(row["text_sealed"], aad=f"sms:{row['id']}")
    assert n.sealer.open(row["phone_sealed"], aad=f"phone:{pay.payment_id}") == pay.phone

    assert {e.payload.kind for e in sent_events} == {"sms_code", "receipt"}  # type: ignore[attr-defined]
    for e in sent_events:
        assert e.envelope.producer == "notify"
        assert e.envelope.key == pay.payer_id
        assert e.envelope.correlation_id == pay.payment_id
        assert e.envelope.causation_id == e.payload.source_event_id  # type: ignore[attr-defined]
        assert code not in json.dumps(e.envelope.payload)
        assert pay.phone not in json.dumps(e.envelope.payload)


async def _read_notify_topic(infra: Infra, topics: TopicNames, expected: int) -> list[Event]:
    consumer = AIOKafkaConsumer(
        topics.notify,
        bootstrap_servers=infra.kafka_bootstrap,
        group_id=f"reader-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        **client_options(),
    )
    await consumer.start()
    events: list[Event] = []
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while len(events) < expected and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            events += [decode(r.value) for rs in batch.values() for r in rs]
    finally:
        await consumer.stop()
    assert len(events) == expected
    return events


async def test_declined_notice_and_permanent_refusal(
    infra: Infra, new_database: Callable[..., Awaitable[str]], kafka_topics: TopicNames
) -> None:
    async with running_notify(infra, new_database, kafka_topics) as n:
        pay = _payment(n.sealer)
        broken = Payment(f"pay-{uuid.uuid4().hex[:12]}", "u-broken", "12345", n.sealer)
        await n.produce(pay.declined(), broken.succeeded())

        async def settled() -> list[asyncpg.Record] | None:
            rows = await n.rows(pay.payment_id) + await n.rows(broken.payment_id)
            return rows if len(rows) == 2 and all(r["state"] != "pending" for r in rows) else None

        rows = await eventually(settled)
        good, bad = sorted(rows, key=lambda r: r["payment_id"] == broken.payment_id)
        messages = await n.messages(pay.phone)
    assert [m["text"] for m in messages] == [
        "【医保】您向北京市医疗保障局支付6,000.00元未成功：短信验证码多次输入错误，请重新发起支付。"
        f"支付单号{pay.payment_id}。"
    ]
    assert (good["state"], good["attempts"]) == ("sent", 1)
    # The gateway said 400 (not a mobile number): retrying cannot help, so notify gives up.
    assert (bad["state"], bad["attempts"]) == ("failed", 1)
    assert "400" in bad["last_error"]


async def test_handler_is_idempotent_even_without_the_inbox(
    new_database: Callable[..., Awaitable[str]], infra: Infra
) -> None:
    dsn = await new_database()
    await migrate(dsn, MIGRATIONS)
    settings = _settings()
    sealer = Sealer(settings.seal_key_bytes())
    on_payment_succeeded = build_handlers(settings)["PaymentSucceeded"]
    env = _payment(sealer).succeeded()
    event = decode(encode(env))
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(2):
            async with conn.transaction():
                await on_payment_succeeded(conn, event)
        assert await conn.fetchval("SELECT count(*) FROM notifications") == 1
    finally:
        await conn.close()


async def test_a_run_of_events_queues_what_one_by_one_would(
    new_database: Callable[..., Awaitable[str]], infra: Infra
) -> None:
    """The ``Batched`` notice handler: a run handed to ``many`` leaves the rows that
    ``one`` of each event in turn leaves (texts sealed afresh, the same when opened),
    and the run again (a redelivery) adds nothing."""
    settings = _settings()
    sealer = Sealer(settings.seal_key_bytes())
    handlers = build_handlers(settings)
    notices = handlers["PaymentSucceeded"]
    assert isinstance(notices, Batched)
    first, second = _payment(sealer), _payment(sealer)
    events = [
        decode(encode(env))
        for env in (
            first.step_up("482913"),
            second.succeeded(),
            first.declined(),
            second.receipt("55667788"),
        )
    ]
    assert all(handlers[e.event_type] is notices for e in events)  # one run on the fast path
    columns = (
        "id, kind, payment_id, payer_id, source_event_id, phone_masked, phone_sealed,"
        " text_sealed, message_id, payee_name, refund_id, state, last_error, attempts"
    )
    tables = []
    for by_run in (False, True):
        dsn = await new_database()
        await migrate(dsn, MIGRATIONS)
        conn = await asyncpg.connect(dsn)
        try:
            for _ in range(2):  # the second time: a redelivery
                async with conn.transaction():
                    if by_run:
                        await notices.many(conn, events)
                    else:
                        for event in events:
                            await notices(conn, event)
            rows = await conn.fetch(f"SELECT {columns} FROM notifications ORDER BY ctid")  # noqa: S608
        finally:
            await conn.close()
        tables.append(
            [
                {
                    **dict(r),
                    "text_sealed": sealer.open(r["text_sealed"], aad=domain.text_aad(r["id"])),
                }
                for r in rows
            ]
        )
    one_by_one, run = tables
    assert [r["kind"] for r in run] == [r["kind"] for r in one_by_one]
    assert len(run) >= 4 and run == one_by_one
    assert any("482913" in r["text_sealed"] for r in run)  # the step-up code, opened


async def test_notifications_api(
    infra: Infra, new_database: Callable[..., Awaitable[str]], kafka_topics: TopicNames
) -> None:
    async with running_notify(infra, new_database, kafka_topics) as n:
        pay = _payment(n.sealer)
        await n.produce(pay.requested(caller_id=caller_name("k-test")), pay.succeeded())
        await eventually(lambda: _sent(n, pay.payment_id))
        app = api.create_app(NotifySettings(YIBAO_API_KEYS="k-test,k-other"), n.pool)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://notify") as client:
            listed = await client.get(
                "/v1/notifications",
                params={"payment_id": pay.payment_id},
                headers={"Authorization": "Bearer k-test"},
            )
            # Another caller's payment and a payment never seen: the same 404.
            foreign, unknown = [
                await client.get(
                    "/v1/notifications",
                    params={"payment_id": payment_id},
                    headers={"Authorization": "Bearer k-other"},
                )
                for payment_id in (pay.payment_id, "pay-never-seen")
            ]
            anonymous = await client.get("/v1/notifications", params={"payment_id": "x"})
            no_param = await client.get(
                "/v1/notifications", headers={"Authorization": "Bearer k-test"}
            )
            health = await client.get("/healthz")
    assert listed.status_code == 200
    (item,) = listed.json()
    assert set(item) == {"id", "kind", "state", "phone", "attempts", "sent_at"}
    assert (item["kind"], item["state"], item["phone"], item["attempts"]) == (
        "payment_result",
        "sent",
        pay.phone_masked,
        1,
    )
    for refused in (foreign, unknown):
        assert refused.status_code == 404
        assert refused.json()["error"]["code"] == "not_found"
    assert foreign.json()["error"]["message"] == unknown.json()["error"]["message"].replace(
        "pay-never-seen", pay.payment_id
    )
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthorized"
    assert no_param.status_code == 400
    assert no_param.json()["error"]["param"] == "payment_id"
    assert health.status_code == 200


async def _sent(n: Notify, payment_id: str) -> bool:
    rows = await n.rows(payment_id)
    return bool(rows) and all(r["state"] == "sent" for r in rows)


async def test_resend_after_a_crash_is_deduplicated_by_the_gateway(
    infra: Infra, new_database: Callable[..., Awaitable[str]], kafka_topics: TopicNames
) -> None:
    async with running_notify(infra, new_database, kafka_topics) as n:
        pay = _payment(n.sealer)
        await n.produce(pay.succeeded())
        await eventually(lambda: _sent(n, pay.payment_id))
        # As if notify crashed after the gateway accepted but before its commit.
        async with n.pool.acquire() as conn:
            await conn.execute(
                "UPDATE notifications SET state = 'pending', sent_at = NULL,"
                " next_attempt_at = now() WHERE payment_id = $1",
                pay.payment_id,
            )
            polling.after_release(conn, store.WAKE_CHANNEL)  # wakes the sender on release
        await eventually(lambda: _sent(n, pay.payment_id))
        messages = await n.messages(pay.phone)
        (row,) = await n.rows(pay.payment_id)
    assert len(messages) == 1
    assert row["attempts"] == 2
    assert messages[0]["message_id"] == row["message_id"]
