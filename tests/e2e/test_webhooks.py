"""Issue 14, e2e: a caller's webhooks and its payment list, every service a process and
the development webhook receiver (services/devhooks) as the caller's endpoint."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.e2e.client import Yibao, premium_body, random_phone
from tests.e2e.conftest import WEBHOOK_TOLERANCE_SECONDS, System

pytestmark = pytest.mark.e2e
BUREAU = "北京市医疗保障局"


def payer() -> str:
    return "u-" + uuid.uuid4().hex[:10]


def _headers(message: dict[str, str]) -> dict[str, str]:
    return {
        "webhook-id": message["webhook_id"],
        "webhook-timestamp": message["webhook_timestamp"],
        "webhook-signature": message["webhook_signature"],
        "content-type": "application/json",
    }


async def test_an_endpoint_receives_every_state_change_signed_and_in_order(
    yibao: Yibao,
) -> None:
    name = f"all-{uuid.uuid4().hex[:6]}"
    endpoint = await yibao.create_webhook_endpoint(name)
    phone = random_phone()
    body = premium_body(payer(), 250_000, phone=phone)  # 2,500 CNY: the SMS code
    body["metadata"] = {"order": "A-1"}
    body["client_reference"] = f"order-{uuid.uuid4().hex[:8]}"
    r = await yibao.create_payment(body)
    assert r.status_code == 202, r.text
    pid = r.json()["id"]
    await yibao.wait_for(pid, {"requires_verification"})
    code = await yibao.code_for(phone, BUREAU, "2,500.00")
    assert (await yibao.verify(pid, code)).status_code == 200
    assert (await yibao.wait_for(pid, {"succeeded", "declined", "failed"}))["status"] == (
        "succeeded"
    )
    got = await yibao.wait_hooks(name, pid, "payment.succeeded")
    assert [m["payload"]["type"] for m in got] == [
        "payment.processing",
        "payment.requires_verification",
        "payment.processing",
        "payment.succeeded",
    ]
    assert all(m["verified"] is True for m in got)
    last = got[-1]
    Webhook(endpoint["secret"]).verify(last["body"], _headers(last))
    data = last["payload"]["data"]
    assert data["status"] == "succeeded" and data["receipt"] is not None
    assert (data["metadata"], data["client_reference"]) == (
        {"order": "A-1"},
        body["client_reference"],
    )
    log = await yibao.webhook_deliveries(endpoint["id"])
    assert {d["event_id"] for d in log["data"]} == {m["webhook_id"] for m in got}


async def test_a_receiver_that_fails_for_a_while_gets_the_deliveries_after(
    yibao: Yibao,
) -> None:
    name = f"flaky-{uuid.uuid4().hex[:6]}"
    endpoint = await yibao.create_webhook_endpoint(name)
    await yibao.hook_failures(name, seconds=4)
    r = await yibao.create_payment(premium_body(payer(), 38000, phone=random_phone()))
    assert r.status_code == 202, r.text
    pid = r.json()["id"]
    got = await yibao.wait_hooks(name, pid, "payment.succeeded")
    assert [m["payload"]["type"] for m in got] == ["payment.processing", "payment.succeeded"]
    every = await yibao.hook_messages(name)
    assert any(m["outcome"] == "refused" for m in every)  # it did fail, then recovered
    log = await yibao.webhook_deliveries(endpoint["id"])
    assert all(d["status"] == "succeeded" for d in log["data"])
    assert max(d["attempts"] for d in log["data"]) >= 2


async def test_a_tampered_or_replayed_delivery_fails_verification(yibao: Yibao) -> None:
    name = f"guard-{uuid.uuid4().hex[:6]}"
    await yibao.create_webhook_endpoint(name)
    r = await yibao.create_payment(premium_body(payer(), 38000, phone=random_phone()))
    pid = r.json()["id"]
    [first, *_] = await yibao.wait_hooks(name, pid, "payment.processing")
    assert yibao.webhook_url is not None
    target = f"{yibao.webhook_url}/hooks/{name}"
    async with httpx.AsyncClient(timeout=10) as client:
        tampered = first["body"].replace('"amount":38000', '"amount":1')
        assert tampered != first["body"]
        answer = await client.post(target, content=tampered, headers=_headers(first))
        assert answer.status_code == 400
        assert answer.json()["error"] == "no matching signature"
        # A fresh timestamp on the captured signature does not verify either.
        restamped = {
            **_headers(first),
            "webhook-timestamp": str(int(first["webhook_timestamp"]) + 1),
        }
        answer = await client.post(target, content=first["body"], headers=restamped)
        assert answer.status_code == 400
        # The exact captured delivery, replayed past the tolerance: refused as too old.
        await asyncio.sleep(WEBHOOK_TOLERANCE_SECONDS + 1.5)
        answer = await client.post(target, content=first["body"], headers=_headers(first))
        assert answer.status_code == 400
        assert "replay" in answer.json()["error"]


async def test_the_payment_list_pages_through_exactly_the_callers_payments(
    yibao: Yibao, system: System
) -> None:
    other = yibao.as_caller(system.env["YIBAO_API_KEYS"].split(",")[1])
    mine_payer, their_payer = payer(), payer()
    phone = random_phone()
    mine = []
    for _ in range(5):
        r = await yibao.create_payment(premium_body(mine_payer, 10000, phone=phone))
        assert r.status_code == 202, r.text
        mine.append(r.json()["id"])
    r = await other.create_payment(premium_body(their_payer, 10000, phone=random_phone()))
    assert r.status_code == 202, r.text
    theirs = r.json()["id"]
    seen: list[str] = []
    params: dict[str, object] = {"limit": 2, "payer_id": mine_payer}
    while True:
        page = await yibao.list_payments(**params)
        seen += [p["id"] for p in page["data"]]
        if not page["has_more"]:
            break
        params["starting_after"] = page["data"][-1]["id"]
    assert seen == list(reversed(mine))
    everything = [p["id"] for p in (await yibao.list_payments(limit=100))["data"]]
    assert theirs not in everything
    assert (await other.list_payments(payer_id=mine_payer))["data"] == []
    assert [p["id"] for p in (await other.list_payments(payer_id=their_payer))["data"]] == [theirs]
