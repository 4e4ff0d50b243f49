"""SMS step-up through the payment API against the real risk service (both on PostgreSQL).

payment and risk each get a fresh database. Events travel between them by reading
one side's outbox and applying the rows with the other side's handlers (the consumer
path minus Kafka, which test_payment_kafka.py covers); payment reaches risk's verify
endpoint over HTTP in-process (``httpx.ASGITransport``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from services.payment.__main__ import MIGRATIONS as PAYMENT_MIGRATIONS
from services.payment.api import create_app as create_payment_app
from services.payment.config import PaymentSettings
from services.payment.handlers import PaymentHandlers
from services.payment.risk_client import RiskClient
from services.risk.__main__ import MIGRATIONS as RISK_MIGRATIONS
from services.risk.api import create_app as create_risk_app
from services.risk.config import RiskSettings
from services.risk.handlers import build_handlers
from shared.consumer import Handler
from shared.crypto import Sealer
from shared.db import create_pool, migrate
from shared.events import Event, StepUpRequired, decode
from shared.money import utcnow
from tests.support import random_prefix

pytestmark = pytest.mark.integration

KEY = "yb_test_verification"
AUTH = {"Authorization": f"Bearer {KEY}"}


@dataclass
class Pair:
    settings: PaymentSettings
    payment_pool: asyncpg.Pool
    risk_pool: asyncpg.Pool
    risk_handlers: dict[str, Handler]
    client: httpx.AsyncClient
    clock_offset: list[timedelta] = field(default_factory=lambda: [timedelta(0)])
    seen: set[uuid.UUID] = field(default_factory=set)

    async def _new_events(self, pool: asyncpg.Pool) -> list[Event]:
        rows = await pool.fetch("SELECT value FROM outbox ORDER BY id")
        events = [decode(bytes(r["value"])) for r in rows]
        fresh = [e for e in events if e.event_id not in self.seen]
        self.seen.update(e.event_id for e in fresh)
        return fresh

    async def to_risk(self) -> list[Event]:
        """Apply payment's new payments.v1 events with risk's handlers."""
        events = await self._new_events(self.payment_pool)
        table = self.risk_handlers
        for event in events:
            handler = table.get(event.event_type)
            if handler is not None:
                async with self.risk_pool.acquire() as conn, conn.transaction():
                    await handler(conn, event)
        return events

    async def to_payment(self) -> list[Event]:
        """Apply risk's new risk.v1 events with payment's handlers."""
        events = await self._new_events(self.risk_pool)
        for event in events:
            async with self.payment_pool.acquire() as conn, conn.transaction():
                await PaymentHandlers(self.settings.topics).on_payment_event(conn, event)
        return events

    async def payment_events(self, payment_id: str) -> list[str]:
        rows = await self.payment_pool.fetch("SELECT value FROM outbox ORDER BY id")
        return [
            e.event_type
            for e in (decode(bytes(r["value"])) for r in rows)
            if e.envelope.correlation_id == payment_id
        ]


@pytest.fixture
async def pair(new_database: Callable[[], Awaitable[str]]) -> AsyncIterator[Pair]:
    payment_dsn, risk_dsn = await new_database(), await new_database()
    await migrate(payment_dsn, PAYMENT_MIGRATIONS)
    await migrate(risk_dsn, RISK_MIGRATIONS)
    payment_pool, risk_pool = await create_pool(payment_dsn), await create_pool(risk_dsn)
    prefix = random_prefix()
    settings = PaymentSettings(
        environment="development", dsn=payment_dsn, topic_prefix=prefix, api_keys=KEY
    )
    risk_settings = RiskSettings(
        YIBAO_ENVIRONMENT="development", dsn=risk_dsn, YIBAO_TOPIC_PREFIX=prefix, API_KEY=KEY
    )
    offset = [timedelta(0)]

    def clock() -> datetime:
        return utcnow() + offset[0]

    risk_app = create_risk_app(risk_settings, risk_pool, clock=clock)
    risk_client = RiskClient(
        "http://risk",
        settings.internal_token.get_secret_value(),
        transport=httpx.ASGITransport(app=risk_app),
    )
    app = create_payment_app(settings, payment_pool, risk=risk_client)
    handlers = build_handlers(risk_settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://payment"
    ) as client:
        yield Pair(settings, payment_pool, risk_pool, handlers, client, offset)
    await payment_pool.close()
    await risk_pool.close()


def large_payment() -> dict[str, Any]:
    return {
        "payer_id": f"u-{uuid.uuid4().hex[:8]}",
        "payer_phone": "13900139000",
        # "self": a medical account pays for a relative only once bound (test_payer_codes.py)
        "beneficiary": {"id_number": "11010519491231002X", "name": "张三", "relation": "self"},
        "purpose": {
            "type": "premium",
            "scheme": "flexible_employment",
            "region": "310000",
            "period": "2027-03",
        },
        "amount": 300_000,  # at or above the step-up threshold (2,000 CNY)
        "currency": "CNY",
        "method": "medical_account",  # bank cards wait for the bank: test_payment_bank.py
    }


async def stepped_up(pair: Pair) -> tuple[dict[str, Any], str]:
    """A payment waiting for its SMS code, and that code (opened as notify would)."""
    response = await pair.client.post(
        "/v1/payments",
        json=large_payment(),
        headers={**AUTH, "Idempotency-Key": uuid.uuid4().hex},
    )
    assert response.status_code == 202, response.text
    payment = response.json()
    await pair.to_risk()
    [step_up] = [e for e in await pair.to_payment() if e.event_type == "StepUpRequired"]
    assert isinstance(step_up.payload, StepUpRequired)
    code = Sealer(pair.settings.seal_key_bytes()).open(
        step_up.payload.code_sealed, aad=f"code:{step_up.payload.challenge_id}"
    )
    shown = await read(pair, payment["id"])
    assert shown["status"] == "requires_verification"
    assert shown["next_action"]["type"] == "sms_verification"
    return payment, code


async def read(pair: Pair, payment_id: str) -> dict[str, Any]:
    response = await pair.client.get(f"/v1/payments/{payment_id}", headers=AUTH)
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


async def submit(pair: Pair, payment_id: str, code: str) -> httpx.Response:
    return await pair.client.post(
        f"/v1/payments/{payment_id}/verification", json={"code": code}, headers=AUTH
    )


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def test_wrong_then_right_code_authorizes(pair: Pair) -> None:
    payment, code = await stepped_up(pair)
    response = await submit(pair, payment["id"], wrong(code))
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["attempts_left"]) == ("verification_failed", 4)
    assert (await read(pair, payment["id"]))["status"] == "requires_verification"

    response = await submit(pair, payment["id"], code)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "processing"
    assert response.json()["next_action"] is None
    before = await pair.payment_events(payment["id"])
    assert before[-1] == "PaymentAuthorized"

    # risk's StepUpPassed arrives after the synchronous answer: a no-op.
    applied = await pair.to_payment()
    assert "StepUpPassed" in [e.event_type for e in applied]
    assert await pair.payment_events(payment["id"]) == before

    again = await submit(pair, payment["id"], code)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "verification_not_pending"


async def test_passed_event_first_then_sync_answer(pair: Pair) -> None:
    """Whichever of the event and the HTTP answer comes first wins; the other is a no-op."""
    payment, code = await stepped_up(pair)
    # Ask risk directly (as a crashed earlier attempt would have), deliver its event first.
    answer = await RiskClient(
        "http://risk",
        pair.settings.internal_token.get_secret_value(),
        transport=httpx.ASGITransport(app=create_risk_app_from(pair)),
    ).verify(payment["id"], code)
    assert answer is not None
    assert answer.outcome == "passed"
    await pair.to_payment()
    assert (await read(pair, payment["id"]))["status"] == "processing"
    assert (await pair.payment_events(payment["id"])).count("PaymentAuthorized") == 1


def create_risk_app_from(pair: Pair) -> Any:
    settings = RiskSettings(YIBAO_ENVIRONMENT="development", API_KEY=KEY)
    return create_risk_app(settings, pair.risk_pool)


async def test_five_wrong_codes_decline(pair: Pair) -> None:
    payment, code = await stepped_up(pair)
    for left in (4, 3, 2, 1):
        response = await submit(pair, payment["id"], wrong(code))
        assert response.json()["error"]["attempts_left"] == left
    response = await submit(pair, payment["id"], wrong(code))
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["attempts_left"]) == ("verification_failed", 0)
    shown = await read(pair, payment["id"])
    assert (shown["status"], shown["decline_code"]) == ("declined", "verification_failed")
    events = await pair.payment_events(payment["id"])
    assert events[-1] == "PaymentDeclined"

    await pair.to_payment()  # risk's StepUpFailed(final): already applied
    assert await pair.payment_events(payment["id"]) == events
    # The right code after the challenge died changes nothing either.
    late = await submit(pair, payment["id"], code)
    assert late.status_code == 409


async def test_expired_code_declines(pair: Pair) -> None:
    payment, code = await stepped_up(pair)
    pair.clock_offset[0] = timedelta(minutes=6)
    response = await submit(pair, payment["id"], code)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "verification_expired"
    shown = await read(pair, payment["id"])
    assert (shown["status"], shown["decline_code"]) == ("declined", "verification_expired")
    assert (await pair.payment_events(payment["id"]))[-1] == "PaymentDeclined"


async def test_resend_waits_a_minute_then_moves_the_expiry(pair: Pair) -> None:
    payment, old_code = await stepped_up(pair)
    first_expiry = (await read(pair, payment["id"]))["next_action"]["expires_at"]
    resend_path = f"/v1/payments/{payment['id']}/verification/resend"

    too_soon = await pair.client.post(resend_path, headers=AUTH)
    assert too_soon.status_code == 429
    error = too_soon.json()["error"]
    assert error["code"] == "resend_too_soon"
    assert 0 < error["retry_after"] <= 60

    pair.clock_offset[0] = timedelta(seconds=61)
    resent = await pair.client.post(resend_path, headers=AUTH)
    assert resent.status_code == 200, resent.text
    shown = resent.json()
    assert shown["status"] == "requires_verification"
    assert shown["next_action"]["expires_at"] > first_expiry
    assert (await read(pair, payment["id"]))["next_action"] == shown["next_action"]

    # risk's StepUpRequired for the resend arrives after the synchronous answer: no-op.
    before = await pair.payment_events(payment["id"])
    [again] = [e for e in await pair.to_payment() if e.event_type == "StepUpRequired"]
    assert await pair.payment_events(payment["id"]) == before
    assert isinstance(again.payload, StepUpRequired)
    new_code = Sealer(pair.settings.seal_key_bytes()).open(
        again.payload.code_sealed, aad=f"code:{again.payload.challenge_id}"
    )
    if new_code != old_code:
        stale = await submit(pair, payment["id"], old_code)
        assert stale.json()["error"]["code"] == "verification_failed"
    assert (await submit(pair, payment["id"], new_code)).status_code == 200
    assert (await pair.client.post(resend_path, headers=AUTH)).status_code == 409
