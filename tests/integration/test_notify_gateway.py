"""Contract tests of the development SMS gateway (DESIGN.md "Contract: SMS gateway").

The gateway is the fake of an outside system (the SMS provider); these run its
contract in-process over ASGI. The notify end-to-end tests run it over real HTTP.
"""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.notify.gateway import create_app


def _phone() -> str:
    return "139" + f"{secrets.randbelow(10**8):08d}"


def _client(store: Path | None = None, fail_first: int = 0) -> httpx.AsyncClient:
    app = create_app(store, fail_first)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


def _sms(phone: str, text: str = "【医保】测试", message_id: str | None = None) -> dict[str, str]:
    return {"phone": phone, "text": text, "message_id": message_id or str(uuid.uuid4())}


async def test_stores_and_lists_by_phone_in_arrival_order() -> None:
    a, b = _phone(), _phone()
    async with _client() as gw:
        sent = [_sms(a, "一"), _sms(b, "二"), _sms(a, "三")]
        for body in sent:
            r = await gw.post("/sms", json=body)
            assert r.status_code == 200
            assert r.json() == {"message_id": body["message_id"], "status": "accepted"}
        mine = (await gw.get("/messages", params={"phone": a})).json()
        everyone = (await gw.get("/messages")).json()
    assert [m["text"] for m in mine] == ["一", "三"]
    assert [m["message_id"] for m in everyone] == [s["message_id"] for s in sent]
    for m in everyone:
        assert set(m) == {"phone", "text", "message_id", "received_at"}
        received = datetime.fromisoformat(m["received_at"])
        assert received.utcoffset() is not None
        assert received.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


async def test_same_message_id_is_stored_once() -> None:
    phone = _phone()
    body = _sms(phone)
    async with _client() as gw:
        first = await gw.post("/sms", json=body)
        again = await gw.post("/sms", json={**body, "text": "changed"})
        listed = (await gw.get("/messages", params={"phone": phone})).json()
    assert first.json()["status"] == "accepted"
    assert again.status_code == 200
    assert again.json() == {"message_id": body["message_id"], "status": "duplicate"}
    assert [m["text"] for m in listed] == [body["text"]]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"phone": "12345"}, "phone"),
        ({"phone": "23800138000"}, "phone"),
        ({"phone": "1380013800a"}, "phone"),
        ({"text": ""}, "text"),
        ({"text": "   "}, "text"),
        ({"message_id": ""}, "message_id"),
        ({"phone": None}, "phone"),
    ],
)
async def test_bad_input_is_a_400_error_object(change: dict[str, Any], param: str) -> None:
    body: dict[str, Any] = {**_sms(_phone()), **change}
    async with _client() as gw:
        r = await gw.post("/sms", json=body)
        assert (await gw.get("/messages")).json() == []
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == param
    assert error["code"] == "invalid_request"


async def test_missing_field_and_bad_json_are_400() -> None:
    async with _client() as gw:
        missing = await gw.post("/sms", json={"phone": _phone(), "text": "x"})
        garbage = await gw.post(
            "/sms", content=b"{nope", headers={"content-type": "application/json"}
        )
        bad_query = await gw.get("/messages", params={"phone": "123"})
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "message_id"
    assert garbage.status_code == 400
    assert "error" in garbage.json()
    assert bad_query.status_code == 400


async def test_fail_first_answers_503_then_accepts() -> None:
    body = _sms(_phone())
    async with _client(fail_first=2) as gw:
        statuses = [(await gw.post("/sms", json=body)).status_code for _ in range(3)]
        listed = (await gw.get("/messages")).json()
    assert statuses == [503, 503, 200]
    assert [m["message_id"] for m in listed] == [body["message_id"]]


async def test_history_survives_a_restart(tmp_path: Path) -> None:
    store = tmp_path / "sms" / "messages.sqlite3"
    phone = _phone()
    first, second = _sms(phone, "甲"), _sms(phone, "乙")
    async with _client(store) as gw:
        await gw.post("/sms", json=first)
        before = (await gw.get("/messages", params={"phone": phone})).json()
    async with _client(store) as gw:
        again = await gw.post("/sms", json=first)
        await gw.post("/sms", json=second)
        listed = (await gw.get("/messages", params={"phone": phone})).json()
    assert again.json()["status"] == "duplicate"
    assert [m["text"] for m in listed] == ["甲", "乙"]
    assert [m["message_id"] for m in listed] == [first["message_id"], second["message_id"]]
    assert listed[0] == before[0]  # received_at kept as first stored
    assert store.exists()


async def test_a_json_lines_store_of_the_old_gateway_is_converted_once(tmp_path: Path) -> None:
    store = tmp_path / "messages.jsonl"
    phone, other = _phone(), _phone()
    old = [
        {**_sms(phone, "旧一"), "received_at": "2026-11-01T01:02:03.000004Z"},
        {**_sms(other, "旧二"), "received_at": "2026-11-01T01:02:04.000000Z"},
    ]
    store.write_text(
        "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in old), encoding="utf-8"
    )
    async with _client(store) as gw:
        again = await gw.post("/sms", json={k: old[0][k] for k in ("phone", "text", "message_id")})
        await gw.post("/sms", json=_sms(phone, "新"))
    async with _client(store) as gw:  # a second start finds SQLite and converts nothing
        mine = (await gw.get("/messages", params={"phone": phone})).json()
        everyone = (await gw.get("/messages")).json()
    assert again.json()["status"] == "duplicate"
    assert [m["text"] for m in mine] == ["旧一", "新"]
    assert mine[0] == old[0]
    assert [m["text"] for m in everyone] == ["旧一", "旧二", "新"]
    assert (tmp_path / "messages.jsonl.before-sqlite").read_text(encoding="utf-8").count("\n") == 2


async def test_healthz() -> None:
    async with _client() as gw:
        r = await gw.get("/healthz")
    assert r.status_code == 200


async def test_never_logs_the_text_or_clear_phone() -> None:
    from structlog.testing import capture_logs

    phone = _phone()
    body = _sms(phone, "【医保】验证码731904，用于向零钱支付1.00元")
    with capture_logs() as logs:
        async with _client(fail_first=1) as gw:
            await gw.post("/sms", json=body)
            await gw.post("/sms", json=body)
            await gw.post("/sms", json=body)
    dumped = json.dumps(logs, ensure_ascii=False, default=str)
    assert logs
    assert "731904" not in dumped
    assert phone not in dumped
    assert phone[:3] + "****" + phone[-4:] in dumped
