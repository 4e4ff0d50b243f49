"""The shared HTTP edge: request ids and request logs, caller keys, the error object."""

from __future__ import annotations

import httpx
import structlog
from fastapi import Depends, FastAPI, Header
from pydantic import BaseModel
from structlog.testing import capture_logs

from shared.http import CallerKeys, add_healthz, install_error_handlers, install_request_logging

KEYS = CallerKeys(["k-one"])


class Body(BaseModel):
    amount: int


def app() -> FastAPI:
    application = FastAPI()
    install_error_handlers(application)
    install_request_logging(application)
    add_healthz(application)

    async def caller(authorization: str | None = Header(default=None)) -> str:
        name = KEYS.caller_of(authorization)
        structlog.contextvars.bind_contextvars(caller=name)
        return name

    @application.post("/things")
    async def things(body: Body, who: str = Depends(caller)) -> dict[str, object]:
        structlog.get_logger("t").info("thing_made", amount=body.amount)
        return {"caller": who}

    return application


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app()), base_url="http://test")


async def test_request_id_is_echoed_or_made_and_bound_for_the_handlers_logs() -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        given = await client().post("/things", json={"amount": 1}, headers={
            "Authorization": "Bearer k-one", "x-request-id": "req-42"})
        made = await client().post("/things", json={"amount": 2}, headers={"Authorization": "Bearer k-one"})
    assert given.status_code == 200 and given.headers["x-request-id"] == "req-42"
    assert made.status_code == 200 and len(made.headers["x-request-id"]) == 32
    thing = [e for e in logs if e["event"] == "thing_made"]
    assert [e["request_id"] for e in thing] == ["req-42", made.headers["x-request-id"]]
    requests = [e for e in logs if e["event"] == "http_request"]
    assert [(e["method"], e["path"], e["status"]) for e in requests] == [
        ("POST", "/things", 200), ("POST", "/things", 200)]
    assert all(e["caller"].startswith("caller_") for e in requests)  # bound by the dependency
    assert "k-one" not in repr(logs)


async def test_errors_are_the_error_object_with_their_status_logged() -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        no_key = await client().post("/things", json={"amount": 1})
        bad = await client().post("/things", json={"amount": "many"}, headers={"Authorization": "Bearer k-one"})
        health = await client().get("/healthz")
    assert no_key.status_code == 401
    assert no_key.json()["error"]["param"] == "Authorization"
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "amount"
    assert health.json() == {"status": "ok"}
    assert [e["status"] for e in logs if e["event"] == "http_request"] == [401, 400]  # no /healthz


def test_caller_keys_name_callers_by_a_hash_never_the_key() -> None:
    name = KEYS.caller_of("Bearer k-one")
    assert name.startswith("caller_") and "k-one" not in name
    assert KEYS.caller_of("bearer   k-one  ") == name
