"""Webhooks against a real PostgreSQL (issue 14): the event row commits (or rolls back)
with the state change; the worker delivers to the development receiver signed, in
order per payment, retries, and disables an endpoint that keeps failing."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from services.devhooks.app import ReceiverSettings
from services.devhooks.app import create_app as create_receiver
from services.payment.__main__ import MIGRATIONS
from services.payment.api import create_app
from services.payment.config import PaymentSettings
from services.payment.erasure import ERASED, Erasures
from services.payment.handlers import build_handlers
from services.payment.schemas import ErasureCreate
from services.payment.webhooks import WebhookWorker
from shared.db import create_pool, migrate
from shared.events import (
    Event,
    EventPayload,
    RiskApproved,
    StepUpFailed,
    StepUpRequired,
    new_event,
)
from tests.integration import test_refund_api as refund_api
from tests.integration.test_metrics import value_of
from tests.integration.test_payment_api import (
    AUTH,
    KEY,
    OTHER_KEY,
    Service,
    body,
    cap_fields,
    headers,
    rejected,
)
from tests.support import Infra, random_prefix, serving

pytestmark = pytest.mark.integration
OTHER = {"Authorization": f"Bearer {OTHER_KEY}"}


@dataclass
class Hooks:
    settings: PaymentSettings
    pool: asyncpg.Pool
    api: httpx.AsyncClient
    receiver: httpx.AsyncClient  # the development receiver, served on a real port
    worker: WebhookWorker

    async def feed(self, payload: EventPayload) -> None:
        envelope = new_event(payload, producer="risk", key="x", correlation_id=None)
        async with self.pool.acquire() as conn, conn.transaction():
            handler = build_handlers(self.settings)[payload.event_type]
            await handler(conn, Event(envelope, payload))

    async def endpoint(self, name: str, types: list[str] | None = None) -> dict[str, Any]:
        response = await self.api.post(
            "/v1/webhook-endpoints",
            json={"url": f"{self.receiver.base_url}hooks/{name}", "event_types": types or ["*"]},
            headers=AUTH,
        )
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        await self.receiver.put(f"/hooks/{name}/secrets", json={"secrets": [created["secret"]]})
        return created

    async def pay(self) -> dict[str, Any]:
        response = await self.api.post("/v1/payments", json=body(), headers=headers())
        assert response.status_code == 202, response.text
        result: dict[str, Any] = response.json()
        return result

    async def walk_to_declined(self, payment: dict[str, Any]) -> None:
        """processing -> requires_verification -> declined."""
        await self.feed(
            StepUpRequired(
                **cap_fields(payment),
                challenge_id="ch_1",
                expires_at=datetime.now(UTC) + timedelta(minutes=5),
                amount=payment["amount"],
                payee_name="北京市医疗保障局",
                code_sealed="v1.x",
                payer_phone_sealed="v1.y",
            )
        )
        await self.feed(
            StepUpFailed(
                payment_id=payment["id"],
                payer_id=payment["payer_id"],
                challenge_id="ch_1",
                attempts_left=0,
                final=True,
                decline_code="verification_failed",
            )
        )

    async def received(self, name: str) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = (
            await self.receiver.get("/messages", params={"name": name})
        ).json()
        return answer

    async def drain(self, passes: int = 60, pause: float = 0.05) -> None:
        """Run the worker until nothing is due (retries included) or ``passes`` ran."""
        for _ in range(passes):
            await self.worker.run_once()
            left = await self.pool.fetchval(
                "SELECT count(*) FROM webhook_deliveries d JOIN webhook_endpoints e"
                " ON e.id = d.endpoint_id WHERE d.status = 'pending' AND e.status = 'enabled'"
            )
            if left == 0:
                return
            await asyncio.sleep(pause)


@pytest.fixture
async def hooks(infra: Infra, new_database: Callable[[], Awaitable[str]]) -> AsyncIterator[Hooks]:
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
        webhook_retry_base_seconds=0.02,
        webhook_retry_max_seconds=0.1,
        webhook_disable_after_seconds=0.5,
    )
    receiver_app = create_receiver(ReceiverSettings(tolerance_seconds=5))
    worker = WebhookWorker(pool, settings)
    async with (
        serving(receiver_app) as receiver_url,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(settings, pool)), base_url="http://p"
        ) as api,
        httpx.AsyncClient(base_url=receiver_url + "/") as receiver,
    ):
        yield Hooks(settings, pool, api, receiver, worker)
    await worker.aclose()
    await pool.close()


async def test_the_event_row_commits_and_rolls_back_with_the_state_change(hooks: Hooks) -> None:
    endpoint = await hooks.endpoint("tx")
    payment = await hooks.pay()
    events = await hooks.pool.fetch(
        "SELECT type FROM webhook_events WHERE payment_id = $1", payment["id"]
    )
    assert [e["type"] for e in events] == ["payment.processing"]
    # A state change whose transaction rolls back leaves no event either.
    payload = StepUpRequired(
        **cap_fields(payment),
        challenge_id="ch_1",
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
        amount=payment["amount"],
        payee_name="北京市医疗保障局",
        code_sealed="v1.x",
        payer_phone_sealed="v1.y",
    )
    envelope = new_event(payload, producer="risk", key="x", correlation_id=None)

    async def change_then_fail() -> None:
        async with hooks.pool.acquire() as conn, conn.transaction():
            await build_handlers(hooks.settings)[payload.event_type](conn, Event(envelope, payload))
            assert await conn.fetchval("SELECT count(*) FROM webhook_events") == 2
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        await change_then_fail()
    assert await hooks.pool.fetchval("SELECT count(*) FROM webhook_events") == 1
    # requested -> authorized: nothing a caller sees changed, so no event.
    await hooks.feed(RiskApproved(**cap_fields(payment)))
    assert await hooks.pool.fetchval("SELECT count(*) FROM webhook_events") == 1
    deliveries = await hooks.pool.fetch(
        "SELECT endpoint_id FROM webhook_deliveries WHERE payment_id = $1", payment["id"]
    )
    assert [d["endpoint_id"] for d in deliveries] == [endpoint["id"]]


async def test_no_event_is_kept_when_no_endpoint_wants_it(hooks: Hooks) -> None:
    # Only succeeded payments wanted: a new payment's payment.processing is for nobody.
    await hooks.endpoint("picky", ["payment.succeeded"])
    payment = await hooks.pay()
    await hooks.walk_to_declined(payment)  # payment.requires_verification, .declined
    assert await hooks.pool.fetchval("SELECT count(*) FROM webhook_events") == 0
    assert await hooks.pool.fetchval("SELECT count(*) FROM webhook_deliveries") == 0


async def test_the_worker_delivers_signed_and_in_order_through_failures(hooks: Hooks) -> None:
    endpoint = await hooks.endpoint("order")
    await hooks.receiver.post("/hooks/order/failures", json={"next": 3})
    first, second = await hooks.pay(), await hooks.pay()
    await hooks.walk_to_declined(first)
    await hooks.walk_to_declined(second)
    await hooks.drain()
    messages = await hooks.received("order")
    assert [m["outcome"] for m in messages[:3]] == ["refused"] * 3
    accepted = [m for m in messages if m["outcome"] == "accepted"]
    assert all(m["verified"] for m in accepted)
    for payment in (first, second):
        seen = [
            m["payload"]["type"] for m in accepted if m["payload"]["data"]["id"] == payment["id"]
        ]
        assert seen == ["payment.processing", "payment.requires_verification", "payment.declined"]
    # Each payload is the payment as the API shows it, at that moment.
    last = accepted[-1]["payload"]["data"]
    assert last["status"] == "declined" and last["decline_code"] == "verification_failed"
    assert Webhook(endpoint["secret"]).verify(
        accepted[-1]["body"],
        {
            "webhook-id": accepted[-1]["webhook_id"],
            "webhook-timestamp": accepted[-1]["webhook_timestamp"],
            "webhook-signature": accepted[-1]["webhook_signature"],
        },
    )
    log = (
        await hooks.api.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries", headers=AUTH)
    ).json()
    assert len(log["data"]) == 6 and all(d["status"] == "succeeded" for d in log["data"])
    assert max(d["attempts"] for d in log["data"]) >= 2
    metrics = (await hooks.api.get("/metrics")).text
    figures = dict(service="payment")
    assert value_of(metrics, "yibao_webhook_deliveries", status="succeeded", **figures) == 6
    assert value_of(metrics, "yibao_webhook_failed_attempts", **figures) == 3
    assert value_of(metrics, "yibao_webhook_oldest_pending_seconds", **figures) == 0
    assert value_of(metrics, "yibao_webhook_endpoints", status="enabled", **figures) == 1


async def test_a_failing_endpoint_is_disabled_then_enabled_gets_the_rest(hooks: Hooks) -> None:
    endpoint = await hooks.endpoint("down")
    await hooks.receiver.post("/hooks/down/failures", json={"seconds": 3600})
    payment = await hooks.pay()
    await hooks.drain(passes=40, pause=0.05)
    shown = (await hooks.api.get(f"/v1/webhook-endpoints/{endpoint['id']}", headers=AUTH)).json()
    assert shown["status"] == "disabled"
    assert "failed" in shown["disabled_reason"]
    metrics = (await hooks.api.get("/metrics")).text
    assert value_of(metrics, "yibao_webhook_endpoints", service="payment", status="disabled") == 1
    # Its waiting deliveries are no backlog to alert on: nobody is trying them.
    assert value_of(metrics, "yibao_webhook_oldest_pending_seconds", service="payment") == 0
    await hooks.walk_to_declined(payment)  # a disabled endpoint gets no new deliveries
    await hooks.receiver.post("/hooks/down/failures", json={"seconds": 0})
    enabled = await hooks.api.post(f"/v1/webhook-endpoints/{endpoint['id']}/enable", headers=AUTH)
    assert enabled.json()["status"] == "enabled"
    await hooks.drain()
    accepted = [m for m in await hooks.received("down") if m["outcome"] == "accepted"]
    assert [m["payload"]["type"] for m in accepted] == ["payment.processing"]
    # A manual redelivery sends the same message (same webhook-id) again.
    [delivery] = (
        await hooks.api.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries", headers=AUTH)
    ).json()["data"]
    again = await hooks.api.post(
        f"/v1/webhook-endpoints/{endpoint['id']}/deliveries/{delivery['id']}/redeliver",
        headers=AUTH,
    )
    assert again.status_code == 202
    await hooks.drain()
    accepted = [m for m in await hooks.received("down") if m["outcome"] == "accepted"]
    assert [m["webhook_id"] for m in accepted] == [delivery["event_id"]] * 2


async def test_rotation_signs_with_both_secrets_for_the_overlap(hooks: Hooks) -> None:
    endpoint = await hooks.endpoint("rot")
    rotated = (
        await hooks.api.post(f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret", headers=AUTH)
    ).json()
    assert rotated["secret"] != endpoint["secret"]
    assert rotated["previous_secret_expires_at"] is not None
    assert (await hooks.api.get(f"/v1/webhook-endpoints/{endpoint['id']}", headers=AUTH)).json()[
        "secret"
    ] is None
    await hooks.pay()
    await hooks.drain()
    [message] = await hooks.received("rot")
    assert len(message["webhook_signature"].split(" ")) == 2
    for secret in (endpoint["secret"], rotated["secret"]):
        Webhook(secret).verify(
            message["body"],
            {
                "webhook-id": message["webhook_id"],
                "webhook-timestamp": message["webhook_timestamp"],
                "webhook-signature": message["webhook_signature"],
            },
        )


async def test_only_the_owner_sees_its_endpoints_and_urls_are_checked(hooks: Hooks) -> None:
    endpoint = await hooks.endpoint("mine")
    eid = endpoint["id"]
    for method, path in [
        ("GET", f"/v1/webhook-endpoints/{eid}"),
        ("DELETE", f"/v1/webhook-endpoints/{eid}"),
        ("POST", f"/v1/webhook-endpoints/{eid}/rotate-secret"),
        ("GET", f"/v1/webhook-endpoints/{eid}/deliveries"),
    ]:
        response = await hooks.api.request(method, path, headers=OTHER)
        assert response.status_code == 404, (method, path)
    assert (await hooks.api.get("/v1/webhook-endpoints", headers=OTHER)).json()["data"] == []
    # Another caller's payments never reach this caller's endpoint.
    await hooks.api.post(
        "/v1/payments", json=body(), headers={**OTHER, "Idempotency-Key": uuid.uuid4().hex}
    )
    assert await hooks.pool.fetchval("SELECT count(*) FROM webhook_deliveries") == 0
    for bad in (
        {"url": "ftp://x.example/", "event_types": ["*"]},
        {"url": "https://x.example/", "event_types": []},
        {"url": "https://x.example/", "event_types": ["payment.lost"]},
    ):
        response = await hooks.api.post("/v1/webhook-endpoints", json=bad, headers=AUTH)
        assert response.status_code == 400, bad
    deleted = await hooks.api.delete(f"/v1/webhook-endpoints/{eid}", headers=AUTH)
    assert deleted.status_code == 200
    assert (await hooks.api.get(f"/v1/webhook-endpoints/{eid}", headers=AUTH)).status_code == 404


async def test_an_erasure_scrubs_the_beneficiary_from_webhook_events(hooks: Hooks) -> None:
    await hooks.endpoint("erase")
    payment = await hooks.pay()
    before = await hooks.pool.fetchval(
        "SELECT body FROM webhook_events WHERE payment_id = $1", payment["id"]
    )
    assert "张三" in before
    erasures = Erasures(hooks.settings, hooks.pool)
    await erasures.erase(ErasureCreate(payer_id=payment["payer_id"]))
    after = await hooks.pool.fetchval(
        "SELECT body FROM webhook_events WHERE payment_id = $1", payment["id"]
    )
    assert "张三" not in after and "110105" not in after
    assert json.loads(after)["data"]["beneficiary"]["name"] == ERASED
    await hooks.drain()  # what goes out now is the scrubbed body, validly signed
    [message] = await hooks.received("erase")
    assert message["verified"] is True and "张三" not in message["body"]


async def test_refund_outcomes_are_events_after_the_payments(hooks: Hooks) -> None:
    await hooks.endpoint("refunds")
    service = Service(hooks.settings, hooks.pool, hooks.api)
    payment = await refund_api.succeeded(service)
    good = (await refund_api.refund(service, payment["id"], 1000)).json()
    bad = (await refund_api.refund(service, payment["id"], 2000)).json()
    posted = refund_api.entry(
        payment, 2, kind="refund", refund_id=good["id"], receipt=refund_api.RED
    )
    await service.feed(posted, producer="ledger")
    await service.feed(
        rejected(
            payment,
            "no",
            account_id="bureau:110000:premium",
            amount=2000,
            refund_id=bad["id"],
        ),
        producer="ledger",
    )
    await hooks.drain()
    got = [
        (m["payload"]["type"], m["payload"]["data"]["id"]) for m in await hooks.received("refunds")
    ]
    assert got == [
        ("payment.processing", payment["id"]),
        ("payment.succeeded", payment["id"]),
        ("refund.succeeded", good["id"]),
        ("refund.failed", bad["id"]),
    ]
