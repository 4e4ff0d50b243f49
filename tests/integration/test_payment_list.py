"""Issue 14: ``metadata`` and ``client_reference`` on payments, and ``GET /v1/payments``
(filters, cursor pagination, only the caller's own), against a real PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from services.payment.intake import fingerprinted
from services.payment.schemas import PaymentCreate
from tests.integration import test_refund_api as refund_api
from tests.integration.test_payment_api import (
    AUTH,
    OTHER_KEY,
    Service,
    body,
    headers,
    service,
)

pytestmark = pytest.mark.integration
__all__ = ["service"]  # the fixture, imported for these tests
OTHER = {"Authorization": f"Bearer {OTHER_KEY}"}


async def _list(service: Service, auth: dict[str, str] = AUTH, **params: Any) -> dict[str, Any]:
    response = await service.client.get("/v1/payments", params=params, headers=auth)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_metadata_and_client_reference_are_stored_and_returned(service: Service) -> None:
    data = body(metadata={"order": "A-1", "shop": "门诊"}, client_reference="order-1")
    created = await service.create(data)
    assert created["metadata"] == {"order": "A-1", "shop": "门诊"}
    assert created["client_reference"] == "order-1"
    got = (await service.client.get(f"/v1/payments/{created['id']}", headers=AUTH)).json()
    assert (got["metadata"], got["client_reference"]) == (created["metadata"], "order-1")
    [listed] = (await _list(service, client_reference="order-1"))["data"]
    assert listed["id"] == created["id"]
    assert listed["metadata"] == created["metadata"]
    # The events do not carry them (the caller's own business).
    rows = await service.pool.fetch("SELECT value FROM outbox")
    assert all(b"order-1" not in bytes(r["value"]) for r in rows)


async def test_without_them_a_payment_is_as_before(service: Service) -> None:
    created = await service.create()
    assert created["metadata"] == {} and created["client_reference"] is None
    plain = PaymentCreate.model_validate(body(payer_id="u-1"))
    assert "metadata" not in fingerprinted(plain)
    assert "client_reference" not in fingerprinted(plain)


async def test_they_are_part_of_the_idempotency_fingerprint(service: Service) -> None:
    key = uuid.uuid4().hex
    data = body(client_reference="r-1")
    first = await service.client.post("/v1/payments", json=data, headers=headers(key))
    assert first.status_code == 202
    again = await service.client.post(
        "/v1/payments", json={**data, "client_reference": "r-2"}, headers=headers(key)
    )
    assert again.status_code == 422
    assert again.json()["error"]["code"] == "idempotency_key_reused"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"metadata": {f"k{i}": "v" for i in range(21)}}, "metadata"),
        ({"metadata": {"k" * 41: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 501}}, "metadata"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"client_reference": "r" * 129}, "client_reference"),
        ({"client_reference": ""}, "client_reference"),
    ],
)
async def test_bad_caller_fields_are_400_naming_the_field(
    service: Service, extra: dict[str, Any], param: str
) -> None:
    response = await service.client.post("/v1/payments", json=body(**extra), headers=headers())
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith(param)


async def test_the_list_pages_through_exactly_the_callers_payments(service: Service) -> None:
    payer = f"u-{uuid.uuid4().hex[:8]}"
    mine = [(await service.create(body(payer_id=payer)))["id"] for _ in range(5)]
    theirs = await service.client.post(
        "/v1/payments", json=body(), headers={**OTHER, "Idempotency-Key": uuid.uuid4().hex}
    )
    assert theirs.status_code == 202
    seen: list[str] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": 2, "payer_id": payer}
        if after is not None:
            params["starting_after"] = after
        page = await _list(service, **params)
        assert len(page["data"]) <= 2
        seen += [p["id"] for p in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert seen == list(reversed(mine))  # newest first, each once
    everything = [p["id"] for p in (await _list(service, limit=100))["data"]]
    assert set(everything) == set(mine)
    assert theirs.json()["id"] not in everything


async def test_the_list_is_no_oracle(service: Service) -> None:
    created = await service.create()
    # Another caller filtering on this caller's payer: empty, as for an unknown payer.
    assert (await _list(service, OTHER, payer_id=created["payer_id"]))["data"] == []
    assert (await _list(service, OTHER, payer_id="u-nobody"))["data"] == []
    # Starting after another caller's payment: the same 400 as an unknown id.
    for cursor in (created["id"], "pay_unknown"):
        response = await service.client.get(
            "/v1/payments", params={"starting_after": cursor}, headers=OTHER
        )
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "starting_after"


async def test_the_list_filters(service: Service) -> None:
    created = await service.create(body(client_reference="c-1"))
    other = await service.create()
    by_status = await _list(service, status="processing")
    assert {p["id"] for p in by_status["data"]} == {created["id"], other["id"]}
    assert (await _list(service, status="succeeded"))["data"] == []
    stamp = created["created_at"]
    after = await _list(service, **{"created[gte]": stamp})
    assert created["id"] in {p["id"] for p in after["data"]}
    before = await _list(service, **{"created[lt]": stamp})
    assert created["id"] not in {p["id"] for p in before["data"]}
    assert [p["id"] for p in (await _list(service, client_reference="c-1"))["data"]] == [
        created["id"]
    ]
    for bad in ({"limit": 0}, {"limit": 101}, {"status": "lost"}, {"created[gte]": "x"}):
        response = await service.client.get("/v1/payments", params=bad, headers=AUTH)
        assert response.status_code == 400, bad


async def test_the_list_shows_refunds_as_the_payment_does(service: Service) -> None:
    payment = await refund_api.succeeded(service)
    answer = await refund_api.refund(service, payment["id"], 1000)
    assert answer.status_code == 202
    refund_id = answer.json()["id"]
    posted = refund_api.entry(
        payment, 2, kind="refund", refund_id=refund_id, receipt=refund_api.RED
    )
    await service.feed(posted, producer="ledger")
    [listed] = (await _list(service, payer_id=payment["payer_id"]))["data"]
    shown = (await service.client.get(f"/v1/payments/{payment['id']}", headers=AUTH)).json()
    assert listed == shown
    assert (listed["refunded_amount"], listed["refunds"]) == (1000, [refund_id])
