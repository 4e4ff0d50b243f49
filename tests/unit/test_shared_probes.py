"""The probes every service's app carries: /livez, /readyz, /healthz (issue 14)."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from shared.http import BrokerProbe, add_healthz, install_error_handlers
from shared.runtime import WorkerStates, supervise


async def _ok() -> None:
    return None


async def _down() -> None:
    raise OSError("connection refused")


def _app(ping: object = _ok, *, bootstrap: str | None = None) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    add_healthz(app, ping)  # type: ignore[arg-type]
    if bootstrap is not None:
        app.state.settings = SimpleNamespace(kafka_bootstrap=bootstrap)
    return app


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_livez_is_200_whatever_the_dependencies_say() -> None:
    app = _app(_down, bootstrap=f"127.0.0.1:{_closed_port()}")
    app.state.workers = WorkerStates(["consumer"])
    app.state.workers.set("consumer", "crashed")
    async with _client(app) as c:
        answer = await c.get("/livez")
    assert answer.status_code == 200
    assert answer.json() == {"status": "alive"}


async def test_readyz_is_200_when_database_broker_and_workers_are_ready() -> None:
    with socket.create_server(("127.0.0.1", 0)) as broker:
        app = _app(bootstrap=f"127.0.0.1:{broker.getsockname()[1]}")
        app.state.workers = WorkerStates(["relay", "consumer"])
        async with _client(app) as c:
            answer = await c.get("/readyz")
    assert answer.status_code == 200
    assert answer.json() == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "ok", "workers": "ok"},
    }


async def test_readyz_names_the_database_when_its_ping_fails() -> None:
    async with _client(_app(_down)) as c:
        answer = await c.get("/readyz")
    assert answer.status_code == 503
    assert answer.headers["Retry-After"]
    error = answer.json()["error"]
    assert error["code"] == "not_ready"
    assert error["failed"] == ["database"]
    assert "connection refused" in error["checks"]["database"]


async def test_readyz_names_the_database_when_its_ping_hangs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("shared.http.HEALTHZ_TIMEOUT_SECONDS", 0.05)

    async def hangs() -> None:
        await asyncio.sleep(10)

    async with _client(_app(hangs)) as c:
        answer = await c.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["error"]["failed"] == ["database"]


async def test_readyz_names_the_broker_when_nothing_listens_on_its_address() -> None:
    async with _client(_app(bootstrap=f"127.0.0.1:{_closed_port()}")) as c:
        answer = await c.get("/readyz")
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["failed"] == ["broker"]
    assert error["checks"]["database"] == "ok"
    assert "unreachable" in error["checks"]["broker"]


async def test_readyz_names_a_crashed_or_stopped_worker() -> None:
    app = _app()
    app.state.workers = WorkerStates(["relay", "consumer", "sender"])
    app.state.workers.set("consumer", "crashed")
    app.state.workers.set("sender", "stopped")
    async with _client(app) as c:
        answer = await c.get("/readyz")
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["failed"] == ["workers"]
    assert error["checks"]["workers"] == "consumer crashed, sender stopped"


async def test_readyz_runs_extra_checks_such_as_a_gateways_store() -> None:
    app = FastAPI()
    install_error_handlers(app)
    add_healthz(app, checks={"store": _down})
    async with _client(app) as c:
        answer = await c.get("/readyz")
        health = await c.get("/healthz")
    assert answer.status_code == 503
    assert answer.json()["error"]["failed"] == ["store"]
    assert health.status_code == 200  # /healthz is as before: only the ping


async def test_healthz_keeps_its_answer() -> None:
    async with _client(_app(bootstrap=f"127.0.0.1:{_closed_port()}")) as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}


async def test_supervise_reports_a_crash_until_the_restart_then_running() -> None:
    states = WorkerStates(["w"])
    runs = 0
    release = asyncio.Event()

    async def worker() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("boom")
        await release.wait()

    task = asyncio.create_task(supervise("w", worker, restart_delay=0.2, states=states))
    while states.snapshot()["w"] != "crashed":
        await asyncio.sleep(0.01)
    assert states.problems() == {"w": "crashed"}
    while runs < 2:
        await asyncio.sleep(0.01)
    assert states.problems() == {}
    release.set()
    await task
    assert states.problems() == {"w": "stopped"}


async def test_broker_probe_answers_from_its_cache_within_a_second() -> None:
    attempts = 0
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        probe = BrokerProbe(cache_seconds=60)
        original = asyncio.open_connection

        async def counted(*args: object, **kwargs: object) -> object:
            nonlocal attempts
            attempts += 1
            return await original(*args, **kwargs)  # type: ignore[arg-type]

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(asyncio, "open_connection", counted)
            await asyncio.gather(*(probe.check(f"127.0.0.1:{port}") for _ in range(5)))
    assert attempts == 1
