"""The shared HTTP edge's hard edges (issue 11): body limits before parsing and
authentication, every error the JSON error object with a request id, outages as 503."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Annotated

import asyncpg
import httpx
import pytest
import structlog
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel
from structlog.testing import capture_logs

from shared.http import (
    Caller,
    CallerKeys,
    add_healthz,
    authenticated,
    install_error_handlers,
    install_request_logging,
)

AUTH = {"Authorization": "Bearer k-one-of-the-tests"}
JSON_AUTH = {**AUTH, "Content-Type": "application/json"}


class Body(BaseModel):
    note: str


def app(*, ping_fails: BaseException | None = None, slow_ping: bool = False) -> FastAPI:
    application = FastAPI()
    install_error_handlers(application)
    install_request_logging(application)
    application.state.caller_keys = CallerKeys(["k-one-of-the-tests"])
    application.state.settings = SimpleNamespace(max_body_bytes=1000)
    application.state.body_limits = {
        "/files": 5000,
        "/days/{day}/files": 5000,
        "/statements": 5000,
    }
    application.state.ran = 0

    async def ping() -> None:
        if slow_ping:
            await asyncio.sleep(10)
        if ping_fails is not None:
            raise ping_fails

    add_healthz(application, ping)

    @application.post("/things")
    async def things(
        body: Body, caller: Annotated[Caller, Depends(authenticated)]
    ) -> dict[str, int]:
        application.state.ran += 1
        return {"size": len(body.note)}

    @application.post("/files")
    async def files(body: Body) -> dict[str, int]:
        return {"size": len(body.note)}

    @application.post("/days/{day}/files")
    async def day_files(day: str, body: Body) -> dict[str, int]:
        return {"size": len(body.note)}

    @application.post("/days/{day}/{more}/files")
    async def deeper_files(day: str, more: str, body: Body) -> dict[str, int]:
        return {"size": len(body.note)}

    @application.post("/statements")
    async def statements(
        request: Request, caller: Annotated[Caller, Depends(authenticated)]
    ) -> dict[str, int]:
        """Like the ledger's reconciliation: authenticates, then reads a raw body."""
        return {"size": len(await request.body())}

    @application.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug with a secret k-one-of-the-tests in it")

    @application.get("/db-down")
    async def db_down() -> None:
        conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:1/x", timeout=2)
        await conn.close()

    @application.get("/raises/{kind}")
    async def raises(kind: str) -> None:
        raise {
            "gone": asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
            "interface": asyncpg.exceptions.InterfaceError("pool is closing"),
            "pool-timeout": TimeoutError(),
            "too-many": asyncpg.exceptions.TooManyConnectionsError("too many clients"),
            "deadlock": asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
        }[kind]

    return application


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


# What kind of failure each status of these tests is, and whether sending the same
# request again may work (issue 14: one error object everywhere, 5xx included).
KIND_OF = {
    400: ("invalid_request", False),
    401: ("authentication", False),
    404: ("invalid_request", False),
    413: ("invalid_request", False),
    500: ("api", True),
    503: ("upstream", True),
}


def assert_error_object(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert {"type", "code", "message", "param", "retryable", "request_id"} <= set(error)
    assert error["code"] == code
    assert (error["type"], error["retryable"]) == KIND_OF[status]
    assert error["request_id"] == response.headers["x-request-id"]
    return dict(error)


async def test_a_body_over_the_limit_is_413_before_parsing_and_authentication() -> None:
    application = app()
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        big = {"note": "x" * 2000}
        no_key = await c.post("/things", json=big)  # no key: still 413, not 401
        bad_json = await c.post("/things", content=b"{" * 2000, headers=AUTH)  # never parsed
        ok = await c.post("/things", json={"note": "x" * 900}, headers=AUTH)
    error = assert_error_object(no_key, 413, "request_too_large")
    assert error["max_bytes"] == 1000 and "at most 1000 bytes" in str(error["message"])
    assert_error_object(bad_json, 413, "request_too_large")
    assert ok.status_code == 200 and application.state.ran == 1


async def test_a_chunked_body_is_counted_as_it_comes(client: httpx.AsyncClient) -> None:
    async def chunks(n: int) -> AsyncIterator[bytes]:
        yield b'{"note": "'
        for _ in range(n):
            yield b"x" * 100
        yield b'"}'

    big = await client.post("/things", content=chunks(20), headers=JSON_AUTH)
    small = await client.post("/things", content=chunks(5), headers=JSON_AUTH)
    assert "content-length" not in big.request.headers
    assert_error_object(big, 413, "request_too_large")
    assert small.status_code == 200 and small.json() == {"size": 500}


async def test_a_stranger_is_refused_before_its_chunked_body_is_read(
    client: httpx.AsyncClient,
) -> None:
    """A route that authenticates before it reads its (large) body reads nothing of an
    unauthenticated caller's chunked body: the edge does not buffer it ahead."""
    pulled = 0

    async def chunks(n: int) -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(n):
            pulled += 1
            yield b"x" * 100

    stranger = await client.post("/statements", content=chunks(40))
    assert_error_object(stranger, 401, "unauthorized")
    assert pulled == 0, f"{pulled} chunks of a stranger's body were read"
    fits = await client.post("/statements", content=chunks(40), headers=AUTH)
    assert fits.status_code == 200 and fits.json() == {"size": 4000}
    pulled = 0
    over = await client.post("/statements", content=chunks(60), headers=AUTH)
    assert_error_object(over, 413, "request_too_large")
    assert over.json()["error"]["max_bytes"] == 5000
    assert pulled == 51, "read up to the chunk that passed the limit, and no further"


async def test_a_path_may_take_larger_bodies(client: httpx.AsyncClient) -> None:
    assert (await client.post("/files", json={"note": "x" * 4000})).status_code == 200
    assert (await client.post("/files", json={"note": "x" * 6000})).status_code == 413


async def test_a_route_template_gives_its_paths_their_limit(client: httpx.AsyncClient) -> None:
    """``{day}`` stands for one segment: a limit for a route with a parameter applies
    to its paths (the reconciliation route's 20 MiB did not: its day is in the path)."""
    assert (
        await client.post("/days/2026-11-26/files", json={"note": "x" * 4000})
    ).status_code == 200
    too_big = await client.post("/days/2026-11-26/files", json={"note": "x" * 6000})
    assert_error_object(too_big, 413, "request_too_large")
    assert too_big.json()["error"]["max_bytes"] == 5000
    deeper = await client.post("/days/2026-11-26/a/files", json={"note": "x" * 4000})
    assert_error_object(deeper, 413, "request_too_large")
    assert deeper.json()["error"]["max_bytes"] == 1000


async def test_the_default_limit_is_64_kib_without_settings() -> None:
    application = FastAPI()
    install_error_handlers(application)  # the edge comes with the error handlers

    @application.post("/echo")
    async def echo(body: Body) -> dict[str, int]:
        return {"size": len(body.note)}

    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        fits = await c.post("/echo", json={"note": "x" * 60_000})
        over = await c.post("/echo", json={"note": "x" * 70_000})
    assert fits.status_code == 200
    assert_error_object(over, 413, "request_too_large")


async def test_an_unhandled_exception_is_a_500_error_object_logged_once(
    client: httpx.AsyncClient,
) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        answer = await client.get("/boom", headers={"X-Request-Id": "req-boom-1"})
    error = assert_error_object(answer, 500, "internal_error")
    assert error["request_id"] == "req-boom-1"
    assert "k-one" not in answer.text and "RuntimeError" not in answer.text
    failures = [e for e in logs if e["event"] == "http_unhandled_error"]
    assert len(failures) == 1 and failures[0]["request_id"] == "req-boom-1"
    assert [e["status"] for e in logs if e["event"] == "http_request"] == [500]


async def test_a_database_that_does_not_answer_is_503_with_retry_after(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.get("/db-down")  # a real connection refused (OSError)
    error = assert_error_object(answer, 503, "service_unavailable")
    assert answer.headers["retry-after"] == "5" and "retry after" in str(error["message"])


@pytest.mark.parametrize("kind", ["gone", "interface", "pool-timeout", "too-many", "deadlock"])
async def test_database_outages_and_lost_races_are_503_never_500(
    client: httpx.AsyncClient, kind: str
) -> None:
    answer = await client.get(f"/raises/{kind}")
    assert_error_object(answer, 503, "service_unavailable")
    assert answer.headers["retry-after"] == "5"


async def test_healthz_is_503_when_its_ping_fails_or_hangs() -> None:
    for application in (
        app(ping_fails=ConnectionRefusedError("db down")),
        app(ping_fails=asyncpg.exceptions.CannotConnectNowError("starting up")),
        app(slow_ping=True),
    ):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            answer = await c.get("/healthz")
        assert_error_object(answer, 503, "service_unavailable")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app()), base_url="http://test"
    ) as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "code"),
    [
        ("/things", {"json": {"note": "x"}}, 401, "unauthorized"),
        ("/things", {"json": {"note": 1}, "headers": AUTH}, 400, "invalid_request"),
        ("/things", {"content": b"{nope", "headers": JSON_AUTH}, 400, "invalid_json"),
        ("/nowhere", {}, 404, "not_found"),
    ],
)
async def test_every_error_carries_the_request_id(
    client: httpx.AsyncClient, path: str, kwargs: dict[str, object], status: int, code: str
) -> None:
    answer = await client.post(path, **kwargs)  # type: ignore[arg-type]
    assert_error_object(answer, status, code)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("req-42", True),
        ("0b7c2a9e-7f43-4e4b-9d4c-1f0e5d6c7b8a", True),
        ("trace:abc.def_1", True),
        ("has space", False),
        ("x" * 200, False),
        ("<script>", False),
        ("", False),
    ],
)
async def test_a_callers_request_id_is_kept_only_when_well_formed(
    client: httpx.AsyncClient, given: str, kept: bool
) -> None:
    answer = await client.get("/nowhere", headers={"X-Request-Id": given})
    echoed = answer.headers["x-request-id"]
    assert (echoed == given) is kept
    if not kept:
        assert len(echoed) == 32
    assert answer.json()["error"]["request_id"] == echoed
