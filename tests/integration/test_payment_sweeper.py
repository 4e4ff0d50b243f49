"""Payments stuck in a non-final state (issue 11), on PostgreSQL: the sweeper publishes
a quiet payment's last event again (once per period, never a second decision) and
declines a payment whose SMS code expired long ago."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from services.payment.__main__ import MIGRATIONS
from services.payment.api import create_app
from services.payment.config import PaymentSettings
from services.payment.handlers import build_handlers
from services.payment.sweeper import StuckPaymentSweeper
from shared.db import create_pool, migrate
from shared.events import Event, EventPayload, RiskApproved, StepUpRequired, decode, new_event
from shared.money import utcnow
from tests.support import random_prefix

pytestmark = pytest.mark.integration

KEY = "yb_test_sweeper"
AUTH = {"Authorization": f"Bearer {KEY}"}


@dataclass
class Service:
    settings: PaymentSettings
    pool: asyncpg.Pool
    client: httpx.AsyncClient
    sweeper: StuckPaymentSweeper

    async def create(self, amount: int = 38000) -> dict[str, Any]:
        body = {
            "payer_id": f"u-{uuid.uuid4().hex[:8]}",
            "payer_phone": "13800138000",
            "beneficiary": {"id_number": "11010519491231002X", "name": "张三", "relation": "self"},
            "purpose": {
                "type": "premium",
                "scheme": "commercial_health",  # no schedule: any amount (test_premiums.py)
                "region": "110000",
                "period": "2027",
            },
            "amount": amount,
            "currency": "CNY",
            "method": "medical_account",
        }
        answer = await self.client.post(
            "/v1/payments", json=body, headers={**AUTH, "Idempotency-Key": uuid.uuid4().hex}
        )
        assert answer.status_code == 202, answer.text
        result: dict[str, Any] = answer.json()
        return result

    async def feed(self, payload: EventPayload) -> None:
        envelope = new_event(
            payload, producer="risk", key="x", correlation_id=getattr(payload, "payment_id", None)
        )
        async with self.pool.acquire() as conn, conn.transaction():
            await build_handlers(self.settings)[payload.event_type](conn, Event(envelope, payload))

    async def published(self, payment_id: str) -> list[str]:
        rows = await self.pool.fetch("SELECT value FROM outbox ORDER BY id")
        events = [decode(bytes(r["value"])) for r in rows]
        return [e.event_type for e in events if e.envelope.correlation_id == payment_id]

    async def status(self, payment_id: str) -> dict[str, Any]:
        answer = await self.client.get(f"/v1/payments/{payment_id}", headers=AUTH)
        result: dict[str, Any] = answer.json()
        return result


@pytest.fixture
async def service(new_database: Callable[[], Awaitable[str]]) -> AsyncIterator[Service]:
    dsn = await new_database()
    await migrate(dsn, MIGRATIONS)
    pool = await create_pool(dsn)
    settings = PaymentSettings(
        environment="development", dsn=dsn, topic_prefix=random_prefix(), api_keys=KEY
    )
    sweeper = StuckPaymentSweeper(pool, topics=settings.topics, policy=settings.stuck_policy())
    app = create_app(settings, pool)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://payment"
    ) as client:
        yield Service(settings, pool, client, sweeper)
    await pool.close()


def figures(payment_id: str) -> dict[str, Any]:
    return {
        "payment_id": payment_id,
        "payer_id": "x",
        "day": "2027-01-01",
        "cap": 5_000_000,
        "used": 0,
        "remaining": 5_000_000,
    }


async def test_a_quiet_requested_payment_is_published_again_once_per_period(
    service: Service,
) -> None:
    payment = await service.create()
    now = utcnow()
    assert await service.sweeper.sweep_once(now + timedelta(minutes=9)) == 0
    assert await service.sweeper.sweep_once(now + timedelta(minutes=11)) == 1
    assert await service.published(payment["id"]) == ["PaymentRequested"] * 2
    # Not again within the period; again after it.
    assert await service.sweeper.sweep_once(now + timedelta(minutes=12)) == 0
    assert await service.sweeper.sweep_once(now + timedelta(minutes=22)) == 1
    assert await service.published(payment["id"]) == ["PaymentRequested"] * 3
    nudges = await service.pool.fetchval("SELECT nudges FROM payments WHERE id = $1", payment["id"])
    assert nudges == 2
    assert (await service.status(payment["id"]))["status"] == "processing"


async def test_a_quiet_authorized_payment_gets_its_authorization_again(service: Service) -> None:
    payment = await service.create()
    await service.feed(RiskApproved(**figures(payment["id"])))
    assert await service.published(payment["id"]) == ["PaymentRequested", "PaymentAuthorized"]
    assert await service.sweeper.sweep_once(utcnow() + timedelta(minutes=11)) == 1
    assert await service.published(payment["id"]) == [
        "PaymentRequested",
        "PaymentAuthorized",
        "PaymentAuthorized",  # the ledger books once per payment id: a copy books nothing
    ]
    stats = service.sweeper.stats
    assert (stats.republished, stats.expired) == (1, 0)


async def test_a_long_expired_code_declines_the_payment(service: Service) -> None:
    payment = await service.create(amount=300_000)
    expires = utcnow() + timedelta(minutes=5)
    step_up = StepUpRequired(
        **figures(payment["id"]),
        challenge_id="c-1",
        expires_at=expires,
        amount=300_000,
        payee_name="北京市医疗保障局",
        code_sealed="v1.x",
        payer_phone_sealed="v1.y",
    )
    await service.feed(step_up)
    assert (await service.status(payment["id"]))["status"] == "requires_verification"
    assert await service.sweeper.sweep_once(expires + timedelta(minutes=1)) == 0  # risk's turn
    assert await service.sweeper.sweep_once(expires + timedelta(minutes=2, seconds=1)) == 1
    shown = await service.status(payment["id"])
    assert (shown["status"], shown["decline_code"]) == ("declined", "verification_expired")
    assert (await service.published(payment["id"]))[-1] == "PaymentDeclined"
    # Final now: never touched again.
    assert await service.sweeper.sweep_once(expires + timedelta(hours=5)) == 0
