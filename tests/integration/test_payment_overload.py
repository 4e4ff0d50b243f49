"""Load shedding (issue 13): POST /v1/payments answers 503 overloaded while the
pipeline holds ``overload_max_in_flight`` payments, and accepts again once it drains.
Real PostgreSQL; the payments stay ``requested`` because no consumer runs here, and the
test finishes them through the consumer's own handler (a risk decline)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from services.payment.__main__ import MIGRATIONS
from services.payment.api import create_app
from services.payment.config import PaymentSettings
from services.payment.overload import IN_FLIGHT_SQL, LATE_ENOUGH
from shared.db import create_pool, migrate
from shared.events import RiskDeclined
from tests.integration.test_payment_api import (
    KEY,
    OTHER_KEY,
    Service,
    body,
    cap_fields,
    headers,
)
from tests.support import Infra, random_prefix

pytestmark = pytest.mark.integration

BOUND = 3


@asynccontextmanager
async def running(
    infra: Infra, new_database: Callable[[], Awaitable[str]], **overload: Any
) -> AsyncIterator[Service]:
    """The payment API on a fresh database with these overload settings; counted on
    every request (no timing in tests)."""
    dsn = await new_database()
    await migrate(dsn, MIGRATIONS)
    pool = await create_pool(dsn)
    settings = PaymentSettings(
        environment="development",
        dsn=dsn,
        topic_prefix=random_prefix(),
        api_keys=f"{KEY},{OTHER_KEY}",
        risk_url="http://127.0.0.1:9",
        kafka_bootstrap=infra.kafka_bootstrap,
        overload_check_interval_seconds=0,
        **overload,
    )
    app = create_app(settings, pool)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://payment") as client:
        yield Service(settings, pool, client)
    await pool.close()


@pytest.fixture
async def service(
    infra: Infra, new_database: Callable[[], Awaitable[str]]
) -> AsyncIterator[Service]:
    async with running(
        infra, new_database, overload_max_in_flight=BOUND, overload_retry_after_seconds=2
    ) as service:
        yield service


async def test_sheds_above_the_bound_and_accepts_again_below_it(service: Service) -> None:
    accepted = [await service.create() for _ in range(BOUND)]

    shed_key = "order-shed-1"
    data = body()
    refused = await service.client.post("/v1/payments", json=data, headers=headers(shed_key))
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "2"
    error = refused.json()["error"]
    assert (error["code"], error["retryable"], error["retry_after"]) == ("overloaded", True, 2)
    # Refused before anything was written: no payment, no idempotency claim.
    assert await service.pool.fetchval("SELECT count(*) FROM payments") == BOUND
    assert await service.pool.fetchval("SELECT count(*) FROM idempotency_keys") == BOUND

    # Every caller is refused while full, whatever the body.
    again = await service.client.post("/v1/payments", json=body(), headers=headers())
    assert again.status_code == 503

    # One accepted payment is decided: below the bound, the same request is accepted.
    first = accepted[0]
    await service.feed(
        RiskDeclined(**cap_fields(first), decline_code="daily_limit_exceeded", message="cap")
    )
    retried = await service.client.post("/v1/payments", json=data, headers=headers(shed_key))
    assert retried.status_code == 202, retried.text
    assert await service.pool.fetchval("SELECT count(*) FROM payments") == BOUND + 1


async def test_payments_waiting_for_their_payer_do_not_count(service: Service) -> None:
    for _ in range(BOUND):
        await service.create()
    await service.pool.execute("UPDATE payments SET status = 'requires_verification'")
    response = await service.client.post("/v1/payments", json=body(), headers=headers())
    assert response.status_code == 202, response.text


async def test_the_count_reads_the_unfinished_payments_index(service: Service) -> None:
    async with service.pool.acquire() as conn:
        await conn.execute("SET enable_seqscan = off")  # what a large table would choose
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN " + IN_FLIGHT_SQL.replace("$1", "10").replace("$2", "1.5")
            )
        )
        await conn.execute("RESET enable_seqscan")
    assert "payments_unfinished" in plan, plan


async def test_zero_turns_shedding_off(
    infra: Infra, new_database: Callable[[], Awaitable[str]]
) -> None:
    async with running(infra, new_database, overload_max_in_flight=0) as service:
        for _ in range(3):
            r = await service.client.post("/v1/payments", json=body(), headers=headers())
            assert r.status_code == 202, r.text


@pytest.fixture
async def waiting_service(
    infra: Infra, new_database: Callable[[], Awaitable[str]]
) -> AsyncIterator[Service]:
    """Only the wait bound: no count bound, shed while LATE_ENOUGH wait over 60 s."""
    async with running(
        infra, new_database, overload_max_in_flight=0, overload_max_wait_seconds=60
    ) as service:
        yield service


async def test_sheds_while_enough_payments_wait_too_long(waiting_service: Service) -> None:
    service = waiting_service
    accepted = [await service.create() for _ in range(LATE_ENOUGH + 2)]
    # Fresh payments, however many: no count bound here, so still accepted.
    assert (await service.client.post("/v1/payments", json=body(), headers=headers())).is_success

    # One fewer than LATE_ENOUGH waited past the bound (e.g. one stuck on a poisoned
    # event): the door stays open.
    late_ids = [p["id"] for p in accepted[:LATE_ENOUGH]]
    await service.pool.execute(
        "UPDATE payments SET updated_at = now() - interval '2 minutes' WHERE id = ANY($1)",
        late_ids[:-1],
    )
    assert (await service.client.post("/v1/payments", json=body(), headers=headers())).is_success

    # LATE_ENOUGH late: refused, and the message says why.
    await service.pool.execute(
        "UPDATE payments SET updated_at = now() - interval '2 minutes' WHERE id = ANY($1)",
        late_ids,
    )
    refused = await service.client.post("/v1/payments", json=body(), headers=headers())
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert error["code"] == "overloaded"
    assert f"{LATE_ENOUGH} of them waiting longer than 60 s" in error["message"]

    # A late payment moves on (decided): below LATE_ENOUGH again, accepted again.
    await service.feed(
        RiskDeclined(**cap_fields(accepted[0]), decline_code="daily_limit_exceeded", message="cap")
    )
    again = await service.client.post("/v1/payments", json=body(), headers=headers())
    assert again.status_code == 202, again.text


async def test_a_retry_of_an_accepted_request_is_answered_while_shedding(
    service: Service,
) -> None:
    """A caller whose first attempt timed out retries with the same key: while the door
    is closed it still learns the payment it already has (a replay), not 503."""
    key = "order-timed-out-1"
    data = body()
    first = await service.client.post("/v1/payments", json=data, headers=headers(key))
    assert first.status_code == 202, first.text
    for _ in range(BOUND - 1):
        await service.create()
    fresh = await service.client.post("/v1/payments", json=body(), headers=headers())
    assert fresh.status_code == 503  # full
    again = await service.client.post("/v1/payments", json=data, headers=headers(key))
    assert again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"]
    assert await service.pool.fetchval("SELECT count(*) FROM payments") == BOUND
