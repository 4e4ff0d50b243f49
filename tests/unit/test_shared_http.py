"""The shared HTTP edge: request ids and request logs, caller keys, the error object."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import structlog
from fastapi import Depends, FastAPI, Header
from pydantic import BaseModel
from structlog.testing import capture_logs

from shared.http import (
    Caller,
    CallerKeys,
    add_healthz,
    authenticated,
    install_error_handlers,
    install_request_logging,
    require_role,
)

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
        given = await client().post(
            "/things",
            json={"amount": 1},
            headers={"Authorization": "Bearer k-one", "x-request-id": "req-42"},
        )
        made = await client().post(
            "/things", json={"amount": 2}, headers={"Authorization": "Bearer k-one"}
        )
    assert given.status_code == 200 and given.headers["x-request-id"] == "req-42"
    assert made.status_code == 200 and len(made.headers["x-request-id"]) == 32
    thing = [e for e in logs if e["event"] == "thing_made"]
    assert [e["request_id"] for e in thing] == ["req-42", made.headers["x-request-id"]]
    requests = [e for e in logs if e["event"] == "http_request"]
    assert [(e["method"], e["path"], e["status"]) for e in requests] == [
        ("POST", "/things", 200),
        ("POST", "/things", 200),
    ]
    assert all(e["caller"].startswith("caller_") for e in requests)  # bound by the dependency
    assert "k-one" not in repr(logs)


async def test_errors_are_the_error_object_with_their_status_logged() -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        no_key = await client().post("/things", json={"amount": 1})
        bad = await client().post(
            "/things", json={"amount": "many"}, headers={"Authorization": "Bearer k-one"}
        )
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


# ---------------------------------------------------------------------------
# Roles: caller, bureau (for its region), operator
# ---------------------------------------------------------------------------

ROLES = CallerKeys(["k-one"], bureau_keys={"k-bureau": "110000"}, operator_keys=["k-op"])


def roles_app() -> FastAPI:
    application = FastAPI()
    install_error_handlers(application)
    application.state.caller_keys = ROLES

    @application.get("/anyone")
    async def anyone(caller: Annotated[Caller, Depends(authenticated)]) -> dict[str, object]:
        return {"id": caller.id, "role": caller.role, "region": caller.region}

    @application.get("/bureaus")
    async def bureaus(
        caller: Annotated[Caller, Depends(require_role("bureau"))],
    ) -> dict[str, object]:
        return {"region": caller.region}

    return application


async def test_keys_authenticate_to_a_caller_with_role_and_region() -> None:
    transport = httpx.ASGITransport(app=roles_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        caller = (await c.get("/anyone", headers={"Authorization": "Bearer k-one"})).json()
        bureau = (await c.get("/anyone", headers={"Authorization": "Bearer k-bureau"})).json()
        operator = (await c.get("/anyone", headers={"Authorization": "Bearer k-op"})).json()
        allowed = await c.get("/bureaus", headers={"Authorization": "Bearer k-bureau"})
        refused = await c.get("/bureaus", headers={"Authorization": "Bearer k-one"})
        unknown = await c.get("/bureaus", headers={"Authorization": "Bearer nope"})
    assert (caller["role"], caller["region"]) == ("caller", None)
    assert caller["id"] == KEYS.caller_of("Bearer k-one")  # the same id as before roles
    assert (bureau["role"], bureau["region"]) == ("bureau", "110000")
    assert bureau["id"].startswith("bureau_") and operator["id"].startswith("operator_")
    assert allowed.json() == {"region": "110000"}
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert (error["code"], error["required_role"]) == ("forbidden", "bureau")
    assert "bureau role" in error["message"]
    assert unknown.status_code == 401


def test_caller_of_refuses_other_roles_with_403() -> None:
    import pytest

    from shared.errors import Forbidden

    with pytest.raises(Forbidden):
        ROLES.caller_of("Bearer k-bureau")


def test_settings_read_bureau_and_operator_keys_and_refuse_placeholders() -> None:
    import pytest
    from pydantic import ValidationError

    from shared.settings import DEV_BUREAU_API_KEY, ServiceSettings

    c1, c2, b1, b2, o1 = (
        f"{name}-k7Qz9xWm2Rv4Tn8Lp3Hj6Yd" for name in ("c1", "c2", "b1", "b2", "o1")
    )
    real: dict[str, Any] = {
        "YIBAO_SEAL_KEY": "Ur3jQ0m5c4W1xk8Y2bZ9pLh6tN7vR0sD1fG2eK3aQ4M",
        "YIBAO_HASH_KEY": "p9Lk2Jd7Hs5Ga3Fq1Wz8Xc6Vb4Nm0Qe2Rt9Yu7Io5Pa",
        "YIBAO_INTERNAL_TOKEN": "a-real-token-Zx8Cv6Bn4Mq2We9Rt7Yu5Io3Pa1Sd",
        "YIBAO_API_KEYS": f"{c1},{c2}",
        "YIBAO_ENVIRONMENT": "test",
    }
    s = ServiceSettings(
        **real, YIBAO_BUREAU_API_KEYS=f"110000:{b1},310000:{b2}", YIBAO_OPERATOR_API_KEYS=o1
    )
    assert s.bureau_key_map() == {b1: "110000", b2: "310000"}
    assert s.operator_key_list() == [o1]
    assert ServiceSettings(**real).bureau_key_map() == {}  # unset: none
    with pytest.raises(ValidationError, match="development key"):
        ServiceSettings(**real, YIBAO_BUREAU_API_KEYS=f"110000:{DEV_BUREAU_API_KEY}")
    with pytest.raises(ValidationError, match="region:key"):
        ServiceSettings(**real, YIBAO_BUREAU_API_KEYS=b1)
    with pytest.raises(ValidationError, match="two roles"):
        ServiceSettings(**real, YIBAO_OPERATOR_API_KEYS=c1)
    dev = ServiceSettings(YIBAO_ENVIRONMENT="development")
    assert dev.bureau_key_map() == {DEV_BUREAU_API_KEY: "110000"}
