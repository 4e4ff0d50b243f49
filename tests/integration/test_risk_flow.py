"""risk against the real Kafka and PostgreSQL.

PaymentRequested / PaymentSucceeded / PaymentDeclined / PaymentFailed events are
produced to a fresh, prefixed payments topic and applied by risk's real consumer in a
fresh database; the tests then read risk.v1 events from the outbox (and, once, from
the topic after the relay published them) and drive the internal verify and resend
endpoints through httpx's ASGI transport. Tests learn an SMS code the way notify
does: by opening StepUpRequired's sealed code with the seal key.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import structlog
import structlog.testing
from aiokafka import AIOKafkaConsumer

from services.risk.api import create_app
from services.risk.config import RiskSettings
from services.risk.handlers import ExpirySweeper, RiskHandlers, build_handlers
from shared.consumer import InboxConsumer
from shared.crypto import KeyPurpose, Sealer, keyed_hash
from shared.db import create_pool, migrate
from shared.events import (
    BeneficiaryRef,
    Envelope,
    Event,
    EventPayload,
    PaymentDeclined,
    PaymentDetails,
    PaymentFailed,
    PaymentRequested,
    PaymentSucceeded,
    Purpose,
    decode,
    encode,
    new_event,
)
from shared.kafka import client_options
from shared.money import utcnow
from shared.outbox import OutboxRelay, make_producer
from shared.topics import TopicNames
from tests.support import Infra

pytestmark = pytest.mark.integration
MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "risk" / "migrations"
PHONE = "13800138000"


def outcome_payload(kind: type[EventPayload], details: PaymentDetails) -> EventPayload:
    """The payment's PaymentSucceeded, PaymentDeclined or PaymentFailed (``kind``)."""
    fields: dict[str, Any] = {
        "payment_id": details.payment_id,
        "payer_id": details.payer_id,
        "amount": details.amount,
        "method": details.method,
        "purpose_type": details.purpose.type,
        "payee_name": details.payee_name,
        "payer_phone_masked": details.payer_phone_masked,
        "payer_phone_sealed": details.payer_phone_sealed,
    }
    if kind is PaymentSucceeded:
        return PaymentSucceeded(journal_seq=1, receipt=None, **fields)
    if kind is PaymentDeclined:
        return PaymentDeclined(decline_code="verification_failed", message="no", **fields)
    return PaymentFailed(decline_code="insufficient_funds", message="no", **fields)


@dataclass
class Clock:
    """The API's clock: real time plus a shift the test can move forward."""

    shift: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return utcnow() + self.shift


@dataclass
class Risk:
    settings: RiskSettings
    dsn: str
    pool: asyncpg.Pool
    topics: TopicNames
    client: httpx.AsyncClient
    clock: Clock
    consumer: InboxConsumer
    bootstrap: str
    tasks: list[tuple[Callable[[], None], asyncio.Task[None]]]

    # -- feeding payments.v1 -------------------------------------------------

    def details(
        self,
        payer_id: str,
        amount: int,
        *,
        method: str = "bank_card",
        payment_id: str | None = None,
        requested_at: datetime | None = None,
        payer_id_hash: str | None = None,
    ) -> PaymentDetails:
        payment_id = payment_id or f"pay_{uuid.uuid4().hex}"
        sealer = Sealer(self.settings.seal_key_bytes())
        return PaymentDetails(
            payment_id=payment_id,
            payer_id=payer_id,
            payer_phone_masked="138****8000",
            payer_phone_sealed=sealer.seal(PHONE, aad=f"phone:{payment_id}"),
            beneficiary=BeneficiaryRef(
                id_number_masked="110105********002X",
                id_number_hash=keyed_hash(
                    self.settings.hash_key_for(KeyPurpose.ID_HASH), "id", "x"
                ),
                name="张三",
                relation="self",
            ),
            purpose=Purpose(type="premium", scheme="urban_rural_resident", region="110000"),
            amount=amount,
            method=method,  # type: ignore[arg-type]
            payee_id="bureau:110000",
            payee_name="北京市医疗保障局",
            requested_at=requested_at or utcnow(),
            payer_id_hash=payer_id_hash,
            caller_id=caller_name(self.settings.api_key_list()[0]),
        )

    async def produce(self, *payloads: tuple[EventPayload, str, str]) -> list[Envelope]:
        """Produce (payload, payer_id, payment_id) events to payments.v1, in order."""
        envelopes = [
            new_event(p, producer="payment", key=payer, correlation_id=pid)
            for p, payer, pid in payloads
        ]
        producer = make_producer(self.bootstrap)
        await producer.start()
        try:
            for env in envelopes:
                await producer.send_and_wait(
                    self.topics.payments, value=encode(env), key=env.key.encode()
                )
        finally:
            await producer.stop()
        return envelopes

    async def request(self, details: PaymentDetails) -> Envelope:
        [env] = await self.produce(
            (PaymentRequested(payment=details), details.payer_id, details.payment_id)
        )
        return env

    async def outcome(self, kind: type[EventPayload], details: PaymentDetails) -> Envelope:
        payload = outcome_payload(kind, details)
        [env] = await self.produce((payload, details.payer_id, details.payment_id))
        return env

    # -- reading risk.v1 -----------------------------------------------------

    async def events(self, payment_id: str | None = None) -> list[Envelope]:
        rows = await self.pool.fetch("SELECT topic, value FROM outbox ORDER BY id")
        found = []
        for r in rows:
            assert r["topic"] == self.topics.risk
            env = decode(bytes(r["value"])).envelope
            if payment_id is None or env.correlation_id == payment_id:
                found.append(env)
        return found

    async def wait_events(self, count: int, payment_id: str | None = None) -> list[Envelope]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = await self.events(payment_id)
            if len(found) >= count:
                return found
            await asyncio.sleep(0.1)
        raise AssertionError(f"expected {count} risk events, have {await self.events(payment_id)}")

    async def wait_applied(self, applied: int) -> None:
        deadline = time.monotonic() + 60
        while self.consumer.stats.applied + self.consumer.stats.duplicates < applied:
            if time.monotonic() > deadline:
                raise AssertionError(f"consumer applied only {self.consumer.stats}")
            await asyncio.sleep(0.1)

    def code_of(self, step_up: Envelope) -> str:
        sealer = Sealer(self.settings.seal_key_bytes())
        p = step_up.payload
        return sealer.open(p["code_sealed"], aad=f"code:{p['challenge_id']}")

    # -- the internal endpoints ---------------------------------------------

    def _internal(self) -> dict[str, str]:
        return {"X-Internal-Token": self.settings.internal_token.get_secret_value()}

    async def verify(self, payment_id: str, code: str) -> httpx.Response:
        return await self.client.post(
            "/internal/v1/challenges/verify",
            json={"payment_id": payment_id, "code": code},
            headers=self._internal(),
        )

    async def resend(self, payment_id: str) -> httpx.Response:
        return await self.client.post(
            "/internal/v1/challenges/resend",
            json={"payment_id": payment_id},
            headers=self._internal(),
        )

    def start(self, worker: OutboxRelay | ExpirySweeper) -> None:
        self.tasks.append((worker.stop, asyncio.create_task(worker.run())))


@pytest.fixture
async def risk(
    infra: Infra, new_database: Callable[[], Awaitable[str]], kafka_topics: TopicNames
) -> AsyncIterator[Risk]:
    dsn = await new_database()
    await migrate(dsn, MIGRATIONS)
    settings = RiskSettings(
        dsn=dsn,
        YIBAO_TOPIC_PREFIX=kafka_topics.prefix,
        KAFKA_BOOTSTRAP=infra.kafka_bootstrap,
        phone_codes_per_hour=1000,  # one test phone for all; its limit: test_risk_trust.py
        cap_follows_person=True,  # off by default (services/risk/config.py); tested here
    )
    pool = await create_pool(dsn)
    consumer = InboxConsumer(
        name=f"risk-{secrets.token_hex(4)}",
        bootstrap=infra.kafka_bootstrap,
        topics=[kafka_topics.payments],
        pool=pool,
        handlers=build_handlers(settings),
    )
    clock = Clock()
    app = create_app(settings, pool, clock=clock)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://risk"
    ) as client:
        r = Risk(
            settings, dsn, pool, kafka_topics, client, clock, consumer, infra.kafka_bootstrap, []
        )
        r.tasks.append((consumer.stop, asyncio.create_task(consumer.run())))
        try:
            yield r
        finally:
            for stop, _ in r.tasks:
                stop()
            for _, task in r.tasks:
                await asyncio.wait_for(task, 30)
            await pool.close()


def payer() -> str:
    return f"u-{secrets.token_hex(4)}"


def caller_name(key: str) -> str:
    """The pseudonymous id ``shared.http`` gives a caller key."""
    return "caller_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def figures(env: Envelope) -> tuple[str, int, int, int]:
    p = env.payload
    return p["day"], p["cap"], p["used"], p["remaining"]


# ---------------------------------------------------------------------------


async def test_ten_payments_reach_the_cap_and_the_eleventh_is_declined(risk: Risk) -> None:
    who = payer()
    now = utcnow()
    payments = [risk.details(who, 500_000, requested_at=now) for _ in range(11)]
    for d in payments:
        await risk.request(d)
    events = await risk.wait_events(11)
    assert [e.event_type for e in events] == ["StepUpRequired"] * 10 + ["RiskDeclined"]
    day = events[0].payload["day"]
    for i, (env, d) in enumerate(zip(events, payments, strict=True)):
        assert env.correlation_id == d.payment_id
        assert env.key == who
        assert env.producer == "risk"
        assert env.payload["payment_id"] == d.payment_id
        if i < 10:
            used = 500_000 * (i + 1)
            assert figures(env) == (day, 5_000_000, used, 5_000_000 - used)
            assert env.payload["amount"] == 500_000
            assert env.payload["payee_name"] == "北京市医疗保障局"
            assert env.payload["payer_phone_sealed"] == d.payer_phone_sealed
            assert len(risk.code_of(env)) == 6
    declined = events[10].payload
    assert figures(events[10]) == (day, 5_000_000, 5_000_000, 0)
    assert declined["decline_code"] == "daily_limit_exceeded"
    assert declined["message"] == (
        "daily cap 50,000.00 CNY reached; 0.00 CNY left today; resets 00:00 Asia/Shanghai"
    )

    cap = await risk.client.get(
        f"/v1/payers/{who}/daily-cap",
        headers={"Authorization": f"Bearer {risk.settings.api_key_list()[0]}"},
    )
    assert cap.status_code == 200
    body = cap.json()
    assert (body["cap"], body["used"], body["remaining"]) == (5_000_000, 5_000_000, 0)
    assert body["day"] == day
    unauthorised = await risk.client.get(f"/v1/payers/{who}/daily-cap")
    assert unauthorised.status_code == 401
    assert unauthorised.json()["error"]["param"] == "Authorization"

    # The relay publishes exactly these events to the prefixed risk topic.
    risk.start(OutboxRelay(risk.dsn, risk.bootstrap, poll_interval=0.1))
    reader = AIOKafkaConsumer(
        risk.topics.risk,
        bootstrap_servers=risk.bootstrap,
        auto_offset_reset="earliest",
        group_id=f"read-{secrets.token_hex(4)}",
        **client_options(),
    )
    await reader.start()
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while len(seen) < 11 and time.monotonic() < deadline:
            batch = await reader.getmany(timeout_ms=500)
            seen += [decode(m.value).envelope.event_id.hex for ms in batch.values() for m in ms]
    finally:
        await reader.stop()
    assert seen == [e.event_id.hex for e in events]


async def test_decline_and_failure_release_headroom_success_keeps_it(risk: Risk) -> None:
    who = payer()
    now = utcnow()
    payments = [risk.details(who, 1_000_000, requested_at=now) for _ in range(5)]
    for d in payments:
        await risk.request(d)
    await risk.wait_events(5)
    assert [e.payload["used"] for e in await risk.events()] == [
        1_000_000,
        2_000_000,
        3_000_000,
        4_000_000,
        5_000_000,
    ]

    first = await risk.outcome(PaymentSucceeded, payments[0])
    declined = await risk.outcome(PaymentDeclined, payments[1])
    failed = await risk.outcome(PaymentFailed, payments[2])
    again = await risk.outcome(PaymentFailed, payments[2])  # a second outcome: no effect
    # The same request again, under a new event id: already decided, nothing new.
    await risk.request(payments[3])
    await risk.wait_applied(5 + 5)
    events = await risk.events()
    released = [e for e in events if e.event_type == "LimitReleased"]
    summary = [(e.payload["payment_id"], e.payload["amount"], e.payload["used"]) for e in released]
    assert summary == [
        (payments[1].payment_id, 1_000_000, 4_000_000),
        (payments[2].payment_id, 1_000_000, 3_000_000),
    ]
    assert [e.causation_id for e in released] == [declined.event_id, failed.event_id]
    assert len(events) == 7
    assert first.event_id not in {e.causation_id for e in events}
    assert again.event_id not in {e.causation_id for e in events}

    states = dict(await risk.pool.fetch("SELECT payment_id, state FROM reservations"))
    assert [states[d.payment_id] for d in payments] == [
        "kept",
        "released",
        "released",
        "reserved",
        "reserved",
    ]
    row = await risk.pool.fetchrow(
        "SELECT kept, reserved FROM payer_day_usage WHERE payer_id = $1", who
    )
    assert (row["kept"], row["reserved"]) == (1_000_000, 2_000_000)

    # The released headroom is usable again: exactly up to the cap, then not a fen more.
    refill = risk.details(who, 2_000_000, requested_at=now)
    over = risk.details(who, 1, requested_at=now)
    await risk.request(refill)
    await risk.request(over)
    await risk.wait_events(9)
    tail = (await risk.events())[-2:]
    assert [e.event_type for e in tail] == ["StepUpRequired", "RiskDeclined"]
    assert figures(tail[0])[2:] == (5_000_000, 0)


async def test_day_boundary_and_wallet_rule(risk: Risk) -> None:
    who = payer()
    before = datetime.fromisoformat("2027-03-01T15:59:59+00:00")
    after = datetime.fromisoformat("2027-03-01T16:00:00+00:00")
    late = risk.details(who, 5_000_000, method="medical_account", requested_at=before)
    early = risk.details(who, 5_000_000, method="medical_account", requested_at=after)
    small = risk.details(who, 100, method="wallet", requested_at=after)
    wallet = risk.details(payer(), 150_000, method="wallet", requested_at=after)
    await risk.request(late)
    await risk.request(early)
    await risk.request(small)
    await risk.wait_events(3)
    events = await risk.events()
    assert [(e.event_type, e.payload["day"]) for e in events] == [
        ("StepUpRequired", "2027-03-01"),
        ("StepUpRequired", "2027-03-02"),
        ("RiskDeclined", "2027-03-02"),  # the day is full, even for 1.00 CNY
    ]
    for _ in range(4):
        await risk.request(wallet.model_copy(update={"payment_id": f"pay_{uuid.uuid4().hex}"}))
    await risk.wait_events(7)
    tail = (await risk.events())[-4:]
    assert [e.event_type for e in tail] == ["RiskApproved"] * 3 + ["RiskDeclined"]
    assert figures(tail[3])[1:] == (500_000, 450_000, 50_000)
    assert "wallet" in tail[3].payload["message"]


async def test_verify_endpoint_outcomes(risk: Risk) -> None:
    who = payer()
    good, bad, late = (risk.details(who, 300_000) for _ in range(3))
    for d in (good, bad, late):
        await risk.request(d)
    events = await risk.wait_events(3)
    codes = {e.correlation_id: risk.code_of(e) for e in events}
    wrong = {pid: f"{(int(c) + 1) % 1_000_000:06d}" for pid, c in codes.items()}
    expires = {e.correlation_id: e.payload["expires_at"] for e in events}

    # wrong code: 4 left, a StepUpFailed(final=False)
    first = await risk.verify(bad.payment_id, wrong[bad.payment_id])
    assert first.status_code == 200
    body = first.json()
    assert set(body) == {"outcome", "attempts_left", "decline_code", "expires_at"}
    assert (body["outcome"], body["attempts_left"], body["decline_code"]) == (
        "wrong_code",
        4,
        None,
    )
    assert datetime.fromisoformat(body["expires_at"]) == datetime.fromisoformat(
        expires[bad.payment_id]
    )
    for left in (3, 2, 1):
        r = await risk.verify(bad.payment_id, wrong[bad.payment_id])
        assert (r.json()["outcome"], r.json()["attempts_left"]) == ("wrong_code", left)
    # four misses leave one try, and the right code on it still passes
    fifth = await risk.verify(bad.payment_id, codes[bad.payment_id])
    assert fifth.json()["outcome"] == "passed"

    # 5 wrong → exhausted, then closed
    other = risk.details(who, 300_000)
    await risk.request(other)
    [step_up] = await risk.wait_events(1, other.payment_id)
    other_wrong = f"{(int(risk.code_of(step_up)) + 1) % 1_000_000:06d}"
    for _ in range(4):
        await risk.verify(other.payment_id, other_wrong)
    exhausted = await risk.verify(other.payment_id, other_wrong)
    assert exhausted.json()["outcome"] == "exhausted"
    assert exhausted.json()["attempts_left"] == 0
    assert exhausted.json()["decline_code"] == "verification_failed"
    closed = await risk.verify(other.payment_id, risk.code_of(step_up))
    assert (closed.json()["outcome"], closed.json()["decline_code"]) == (
        "closed",
        "verification_failed",
    )
    trail = await risk.events(other.payment_id)
    steps = [(e.event_type, e.payload.get("final"), e.payload.get("attempts_left")) for e in trail]
    assert steps == [
        ("StepUpRequired", None, None),
        ("StepUpFailed", False, 4),
        ("StepUpFailed", False, 3),
        ("StepUpFailed", False, 2),
        ("StepUpFailed", False, 1),
        ("StepUpFailed", True, 0),
        ("LimitReleased", None, None),
    ]
    assert trail[5].payload["decline_code"] == "verification_failed"

    # right code → passed, then already_passed (nothing more published)
    passed = await risk.verify(good.payment_id, codes[good.payment_id])
    assert passed.json()["outcome"] == "passed"
    assert passed.json()["decline_code"] is None
    again = await risk.verify(good.payment_id, codes[good.payment_id])
    assert again.json()["outcome"] == "already_passed"
    assert [e.event_type for e in await risk.events(good.payment_id)] == [
        "StepUpRequired",
        "StepUpPassed",
    ]

    # past expires_at → expired, released; then closed
    risk.clock.shift = timedelta(seconds=301)
    expired = await risk.verify(late.payment_id, codes[late.payment_id])
    assert expired.json()["outcome"] == "expired"
    assert expired.json()["decline_code"] == "verification_expired"
    trail = await risk.events(late.payment_id)
    assert [e.event_type for e in trail] == ["StepUpRequired", "StepUpFailed", "LimitReleased"]
    assert trail[1].payload["final"] is True
    assert trail[1].payload["decline_code"] == "verification_expired"
    after = await risk.verify(late.payment_id, codes[late.payment_id])
    assert (after.json()["outcome"], after.json()["decline_code"]) == (
        "closed",
        "verification_expired",
    )

    # unknown payment → 404; no token → 401; bad body → 400
    missing = await risk.verify("pay_nope", "123456")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    no_token = await risk.client.post(
        "/internal/v1/challenges/verify", json={"payment_id": good.payment_id, "code": "1"}
    )
    assert no_token.status_code == 401
    bad_body = await risk.client.post(
        "/internal/v1/challenges/verify",
        json={"payment_id": good.payment_id},
        headers=risk._internal(),
    )
    assert bad_body.status_code == 400
    assert bad_body.json()["error"]["param"] == "code"


async def test_resend_and_sweeper(risk: Risk) -> None:
    who = payer()
    d = risk.details(who, 400_000)
    await risk.request(d)
    [step_up] = await risk.wait_events(1)
    old_code = risk.code_of(step_up)

    too_soon = await risk.resend(d.payment_id)
    assert too_soon.status_code == 429
    assert too_soon.json()["error"]["code"] == "resend_too_soon"

    risk.clock.shift = timedelta(seconds=61)
    fresh = await risk.resend(d.payment_id)
    assert fresh.status_code == 200
    assert fresh.json()["challenge_id"] == step_up.payload["challenge_id"]
    [_, second] = await risk.wait_events(2)
    assert second.event_type == "StepUpRequired"
    assert second.payload["challenge_id"] == step_up.payload["challenge_id"]
    assert datetime.fromisoformat(second.payload["expires_at"]) > datetime.fromisoformat(
        step_up.payload["expires_at"]
    )
    new_code = risk.code_of(second)
    if new_code != old_code:
        stale = await risk.verify(d.payment_id, old_code)
        assert stale.json()["outcome"] == "wrong_code"

    # The sweeper kills it once past the new expiry and releases the amount.
    sweeper = ExpirySweeper(risk.pool, rules=risk.settings.rules(), topics=risk.topics)
    assert await sweeper.sweep_once(utcnow() + timedelta(seconds=100)) == 0
    assert await sweeper.sweep_once(utcnow() + timedelta(seconds=61 + 301)) == 1
    assert await sweeper.sweep_once(utcnow() + timedelta(seconds=61 + 301)) == 0
    trail = await risk.events(d.payment_id)
    assert [e.event_type for e in trail][-2:] == ["StepUpFailed", "LimitReleased"]
    assert trail[-2].payload["final"] is True
    assert trail[-2].payload["decline_code"] == "verification_expired"
    assert trail[-1].payload["used"] == 0
    late = await risk.verify(d.payment_id, new_code)
    assert (late.json()["outcome"], late.json()["decline_code"]) == (
        "closed",
        "verification_expired",
    )
    closed = await risk.resend(d.payment_id)
    assert closed.status_code == 409


async def test_running_sweeper_expires_challenges(risk: Risk) -> None:
    d = risk.details(payer(), 300_000)
    await risk.request(d)
    await risk.wait_events(1)
    await risk.pool.execute(
        "UPDATE challenges SET expires_at = now() - interval '1 second' WHERE payment_id = $1",
        d.payment_id,
    )
    risk.start(
        ExpirySweeper(risk.pool, rules=risk.settings.rules(), topics=risk.topics, interval=0.2)
    )
    trail = await risk.wait_events(3, d.payment_id)
    assert [e.event_type for e in trail] == ["StepUpRequired", "StepUpFailed", "LimitReleased"]


async def test_no_clear_code_or_phone_in_any_column_or_log(risk: Risk) -> None:
    who = payer()
    payments = [risk.details(who, 250_000) for _ in range(3)]
    with structlog.testing.capture_logs() as logs:
        for d in payments:
            await risk.request(d)
        events = await risk.wait_events(3)
        codes = [risk.code_of(e) for e in events]
        await risk.verify(payments[0].payment_id, codes[0])
        await risk.verify(payments[1].payment_id, f"{(int(codes[1]) + 1) % 1_000_000:06d}")
        await risk.resend(payments[2].payment_id)
    assert any(entry["event"] == "payment_decided" for entry in logs)
    for entry in logs:
        for code in codes:
            assert code not in repr(entry), "a clear SMS code was logged"

    tables = [
        r["table_name"]
        for r in await risk.pool.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    ]
    assert {"payer_day_usage", "reservations", "challenges", "outbox", "inbox"} <= set(tables)
    needles = [*codes, PHONE]
    for table in tables:
        rows = await risk.pool.fetch(f'SELECT t::text AS row FROM "{table}" t')  # noqa: S608
        texts = [r["row"] for r in rows]
        if table == "outbox":  # bytea shows as hex in row text: read the JSON itself
            values = await risk.pool.fetch("SELECT value FROM outbox")
            texts += [bytes(v["value"]).decode() for v in values]
        for text in texts:
            for needle in needles:
                assert needle not in text, f"{table} holds a clear code or phone"
    # and what is stored does verify the code it sealed
    third = await risk.verify(payments[2].payment_id, codes[2])
    assert third.json()["outcome"] == "passed"


async def test_concurrent_deciders_cannot_overrun_a_payers_cap(risk: Risk) -> None:
    """Two instances deciding for one payer at once: the payer-day row lock serialises
    them, so exactly the cap is reserved however the transactions interleave."""
    handlers = RiskHandlers(
        rules=risk.settings.rules(),
        topics=risk.topics,
        seal_key=risk.settings.seal_key_bytes(),
        code_hash_key=risk.settings.hash_key_for(KeyPurpose.CODE_HASH),
        phone_hash_key=risk.settings.hash_key_for(KeyPurpose.PHONE_HASH),
    )
    who = payer()
    now = utcnow()

    async def decide(details: PaymentDetails) -> None:
        env = new_event(
            PaymentRequested(payment=details),
            producer="payment",
            key=who,
            correlation_id=details.payment_id,
        )
        async with risk.pool.acquire() as conn, conn.transaction():
            await handlers.on_payment_requested(conn, decode(encode(env)))

    await asyncio.gather(*(decide(risk.details(who, 500_000, requested_at=now)) for _ in range(16)))
    row = await risk.pool.fetchrow(
        "SELECT kept, reserved FROM payer_day_usage WHERE payer_id = $1", who
    )
    assert (row["kept"], row["reserved"]) == (0, 5_000_000)
    states = [r["state"] for r in await risk.pool.fetch("SELECT state FROM reservations")]
    assert sorted(states) == ["declined"] * 6 + ["reserved"] * 10
    kinds = [e.event_type for e in await risk.events()]
    assert sorted(kinds) == ["RiskDeclined"] * 6 + ["StepUpRequired"] * 10


async def test_one_person_under_two_payer_ids_shares_one_cap(risk: Risk) -> None:
    """Issue 11: the cap follows the person (payer_id_hash), not the payer id a caller
    picks. Through the real consumer; the Kafka key stays the payer id."""
    person = keyed_hash(risk.settings.hash_key_for(KeyPurpose.ID_HASH), "id", f"person-{payer()}")
    first, second = payer(), payer()
    now = utcnow()
    payments = [
        risk.details(who, 500_000, requested_at=now, payer_id_hash=person)
        for who in [first, second] * 5 + [first]
    ]
    for d in payments:
        await risk.request(d)
    events = await risk.wait_events(11)
    # Two payer ids may sit on two partitions: decided in any order, but one cap.
    assert sorted(e.event_type for e in events) == ["RiskDeclined"] + ["StepUpRequired"] * 10
    keys = {e.correlation_id: e.key for e in events}
    assert keys == {d.payment_id: d.payer_id for d in payments}  # keyed by payer id still
    assert max(e.payload["used"] for e in events) == 5_000_000
    reserved = next(e for e in events if e.event_type == "StepUpRequired")
    for who in (first, second):
        cap = await risk.client.get(
            f"/v1/payers/{who}/daily-cap",
            headers={"Authorization": f"Bearer {risk.settings.api_key_list()[0]}"},
        )
        assert (cap.status_code, cap.json()["used"]) == (200, 5_000_000)
    # A decline releases what it reserved into the person's day, whichever payer id.
    await risk.outcome(
        PaymentDeclined, next(d for d in payments if d.payment_id == reserved.correlation_id)
    )
    await risk.wait_events(12)
    row = await risk.pool.fetchrow(
        "SELECT reserved FROM payer_day_usage WHERE payer_id = $1", f"person:{person}"
    )
    assert row["reserved"] == 4_500_000


async def test_concurrent_deciders_cannot_overrun_a_persons_cap(risk: Risk) -> None:
    """Two instances deciding for one person under sixteen payer ids at once: the
    person-day row lock serialises them."""
    handlers = RiskHandlers(
        rules=risk.settings.rules(),
        topics=risk.topics,
        seal_key=risk.settings.seal_key_bytes(),
        code_hash_key=risk.settings.hash_key_for(KeyPurpose.CODE_HASH),
        phone_hash_key=risk.settings.hash_key_for(KeyPurpose.PHONE_HASH),
    )
    person = f"h-{payer()}"
    now = utcnow()

    async def decide(details: PaymentDetails) -> None:
        env = new_event(
            PaymentRequested(payment=details),
            producer="payment",
            key=details.payer_id,
            correlation_id=details.payment_id,
        )
        async with risk.pool.acquire() as conn, conn.transaction():
            await handlers.on_payment_requested(conn, decode(encode(env)))

    await asyncio.gather(
        *(
            decide(risk.details(payer(), 500_000, requested_at=now, payer_id_hash=person))
            for _ in range(16)
        )
    )
    row = await risk.pool.fetchrow(
        "SELECT kept, reserved FROM payer_day_usage WHERE payer_id = $1", f"person:{person}"
    )
    assert (row["kept"], row["reserved"]) == (0, 5_000_000)
    states = [r["state"] for r in await risk.pool.fetch("SELECT state FROM reservations")]
    assert sorted(states) == ["declined"] * 6 + ["reserved"] * 10


async def test_the_daily_cap_is_read_by_the_payers_caller_only(risk: Risk) -> None:
    who = payer()
    await risk.request(risk.details(who, 1000))
    await risk.wait_events(1)
    [owner_key] = risk.settings.api_key_list()[:1]
    other_app = create_app(
        RiskSettings(YIBAO_API_KEYS=f"{owner_key},yb_test_other"), risk.pool, clock=risk.clock
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=other_app), base_url="http://risk"
    ) as client:
        mine = await client.get(
            f"/v1/payers/{who}/daily-cap", headers={"Authorization": f"Bearer {owner_key}"}
        )
        theirs, never_seen = [
            await client.get(
                f"/v1/payers/{payer_id}/daily-cap",
                headers={"Authorization": "Bearer yb_test_other"},
            )
            for payer_id in (who, payer())
        ]
    assert (mine.status_code, mine.json()["used"]) == (200, 1000)
    assert theirs.status_code == never_seen.status_code == 404
    assert theirs.json()["error"]["code"] == never_seen.json()["error"]["code"] == "not_found"


async def test_a_copy_decided_meanwhile_is_not_decided_again(risk: Risk) -> None:
    """Two copies of one request under different event ids, applied by two transactions
    at once (two instances): the second waits for the payer's day, then finds the
    payment decided; one reservation, one event, the amount counted once."""
    handle = build_handlers(risk.settings)[PaymentRequested.event_type]
    who = payer()
    d = risk.details(who, 30_000)

    def copy() -> Event:
        payload = PaymentRequested(payment=d)
        env = new_event(payload, producer="payment", key=who, correlation_id=d.payment_id)
        return Event(env, payload)

    async with risk.pool.acquire() as first, risk.pool.acquire() as second:
        tx_first = first.transaction()
        await tx_first.start()
        await handle(first, copy())
        async with second.transaction():
            waiting = asyncio.create_task(handle(second, copy()))
            await _waits_for_a_lock(risk.pool, second.get_server_pid())  # the day row
            await tx_first.commit()
            await waiting
    events = await risk.events(d.payment_id)
    assert [e.event_type for e in events] == ["RiskApproved"]
    usage = await risk.pool.fetchrow(
        "SELECT reserved, kept FROM payer_day_usage WHERE payer_id = $1", who
    )
    assert (usage["reserved"], usage["kept"]) == (30_000, 0)
    assert (
        await risk.pool.fetchval(
            "SELECT count(*) FROM reservations WHERE payment_id = $1", d.payment_id
        )
        == 1
    )


async def _waits_for_a_lock(pool: asyncpg.Pool, pid: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        waiting = await pool.fetchval(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid
        )
        if waiting == "Lock":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"backend {pid} never waited for a lock")
