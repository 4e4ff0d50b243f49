"""/livez and /readyz on a real service app, the real PostgreSQL and Kafka (issue 14)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx
import pytest

from services.devbank.api import create_app as create_bank_app
from services.devbank.config import BankSettings
from services.notify import api, gateway
from services.notify.__main__ import MIGRATIONS
from services.notify.config import NotifySettings
from shared.db import create_pool, migrate
from shared.runtime import serve
from tests.support import Infra


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def pool(new_database: Callable[..., Awaitable[str]]) -> AsyncIterator[asyncpg.Pool]:
    dsn = await new_database()
    await migrate(dsn, MIGRATIONS)
    pool = await create_pool(dsn, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


def _client(app: object) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://probe")


async def test_readyz_follows_the_broker_a_service_points_at(
    infra: Infra, pool: asyncpg.Pool
) -> None:
    reachable = NotifySettings().model_copy(update={"kafka_bootstrap": infra.kafka_bootstrap})
    closed = reachable.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{_closed_port()}"})
    async with _client(api.create_app(reachable, pool)) as c:
        ready = await c.get("/readyz")
    async with _client(api.create_app(closed, pool)) as c:
        refused, live, health = (
            await c.get("/readyz"),
            await c.get("/livez"),
            await c.get("/healthz"),
        )
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    assert refused.status_code == 503
    assert refused.json()["error"]["failed"] == ["broker"]
    assert refused.json()["error"]["checks"]["database"] == "ok"
    assert live.status_code == 200
    assert health.status_code == 200  # /healthz stays the database ping


async def test_serve_exposes_its_workers_to_readyz(infra: Infra, pool: asyncpg.Pool) -> None:
    settings = NotifySettings().model_copy(update={"kafka_bootstrap": infra.kafka_bootstrap})
    app = api.create_app(settings, pool)
    idle = asyncio.Event()

    async def steady() -> None:
        await idle.wait()

    async def crashing() -> None:
        raise RuntimeError("worker bug")

    port = _closed_port()
    served = asyncio.create_task(
        serve(app, host="127.0.0.1", port=port, workers=[("steady", steady), ("bad", crashing)])
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            for _ in range(200):
                try:
                    answer = await c.get("/readyz")
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
                    continue
                break
    finally:
        served.cancel()
        with pytest.raises(asyncio.CancelledError):
            await served
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["failed"] == ["workers"]
    assert error["checks"]["workers"] == "bad crashed"


async def test_gateways_are_ready_while_their_store_is_open(tmp_path: Path) -> None:
    sms = gateway.create_app()
    bank = create_bank_app(BankSettings(store=tmp_path / "bank.sqlite3"))
    async with _client(sms) as c:
        assert (await c.get("/readyz")).json() == {"status": "ready", "checks": {"store": "ok"}}
        sms.state.box.close()
        closed = await c.get("/readyz")
    assert closed.status_code == 503
    assert closed.json()["error"]["failed"] == ["store"]
    async with _client(bank) as c:
        assert (await c.get("/readyz")).status_code == 200
        bank.state.bank.close()
        assert (await c.get("/readyz")).json()["error"]["failed"] == ["store"]
