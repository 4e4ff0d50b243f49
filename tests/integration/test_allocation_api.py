"""Bureau allocations to personal medical accounts over HTTP against a real PostgreSQL:
the bureau role and its region, whole-file validation, idempotency by
(region, period, payer), and one MedicalAccountAllocated per new line."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shared.crypto import Sealer, phone_aad
from shared.settings import DEV_BUREAU_API_KEY
from tests.integration import test_payment_api
from tests.integration.test_payment_api import KEY, PHONE, Service, body
from tests.phones import event_phone

pytestmark = pytest.mark.integration

service = test_payment_api.service  # the payment API over a fresh database (fixture)
BUREAU = {"Authorization": f"Bearer {DEV_BUREAU_API_KEY}"}  # development: region 110000
ROUTE = "/v1/medical-accounts/allocations"


def allocation_file(*lines: tuple[str, Any], region: str = "110000") -> dict[str, Any]:
    return {
        "region": region,
        "period": "2027-01",
        "lines": [{"payer_id": p, "amount": a} for p, a in lines],
    }


async def send(service: Service, data: Any, key: str | None = None, auth: Any = None) -> Any:
    return await service.client.post(
        ROUTE, json=data, headers={**(auth or BUREAU), "Idempotency-Key": key or uuid.uuid4().hex}
    )


async def allocated_events(service: Service) -> list[Any]:
    return [e["event"] for e in await service.outbox() if e["type"] == "MedicalAccountAllocated"]


def payer() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


async def test_each_new_line_is_allocated_once_with_one_event(service: Service) -> None:
    a, b = payer(), payer()
    answer = await send(service, allocation_file((a, 10000), (b, 25000)))
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert (result["region"], result["period"]) == ("110000", "2027-01")
    assert [(r["payer_id"], r["amount"], r["status"]) for r in result["lines"]] == [
        (a, 10000, "allocated"),
        (b, 25000, "allocated"),
    ]
    assert all(r["allocation_id"].startswith("al_") for r in result["lines"])
    events = await allocated_events(service)
    assert [(e.payload.payer_id, e.payload.amount) for e in events] == [(a, 10000), (b, 25000)]
    assert {e.envelope.key for e in events} == {a, b}
    assert events[0].payload.payer_phone_sealed is None  # payers never seen: no phone

    # The same file again (another key): already allocated, nothing new published.
    again = (await send(service, allocation_file((a, 10000), (b, 25000)))).json()
    assert [r["status"] for r in again["lines"]] == ["already_allocated"] * 2
    assert [r["allocation_id"] for r in again["lines"]] == [
        r["allocation_id"] for r in result["lines"]
    ]
    assert len(await allocated_events(service)) == 2


async def test_a_known_payers_phone_is_sealed_for_the_allocation(service: Service) -> None:
    payment = await service.create(body(method="wallet"))
    answer = await send(service, allocation_file((payment["payer_id"], 5000)))
    [line] = answer.json()["lines"]
    [event] = await allocated_events(service)
    sealer = Sealer(service.settings.seal_key_bytes())
    sealed = event.payload.payer_phone_sealed
    assert sealed is not None and sealed.startswith("p1.")  # the payer's person key
    assert await event_phone(
        service.pool, sealer, sealed, aad=phone_aad(line["allocation_id"])
    ) == (PHONE)
    assert event.payload.payer_phone_masked == ""  # inside the blob since issue 11


async def test_another_amount_for_an_allocated_line_refuses_the_whole_file(
    service: Service,
) -> None:
    a, b = payer(), payer()
    await send(service, allocation_file((a, 10000)))
    answer = await send(service, allocation_file((b, 500), (a, 12000)))
    assert answer.status_code == 409
    error = answer.json()["error"]
    assert error["param"] == "lines[1].amount"
    assert error["allocated_amount"] == 10000
    assert len(await allocated_events(service)) == 1  # b was not applied either
    assert await service.pool.fetchval("SELECT count(*) FROM allocations") == 1


@pytest.mark.parametrize(
    ("lines", "param"),
    [
        (
            [{"payer_id": "u-1", "amount": 100}, {"payer_id": "u-2", "amount": "x"}],
            "lines[1].amount",
        ),
        ([{"payer_id": "u-1", "amount": 100}, {"payer_id": "u-2", "amount": 0}], "lines[1].amount"),
        ([{"payer_id": "u-1", "amount": 1.5}], "lines[0].amount"),
        ([{"payer_id": "u-1", "amount": 100}, {"payer_id": " ", "amount": 1}], "lines[1].payer_id"),
        ([{"payer_id": "u-1", "amount": 100}, {"amount": 1}], "lines[1].payer_id"),
        (
            [{"payer_id": "u-1", "amount": 100}, {"payer_id": "u-1", "amount": 1}],
            "lines[1].payer_id",
        ),
        ([], "lines"),
    ],
)
async def test_a_malformed_line_is_refused_by_name_and_nothing_applied(
    service: Service, lines: list[Any], param: str
) -> None:
    answer = await send(service, {"region": "110000", "period": "2027-01", "lines": lines})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == param
    assert await allocated_events(service) == []


async def test_only_a_bureau_key_of_that_region_may_allocate(service: Service) -> None:
    caller = {"Authorization": f"Bearer {KEY}"}
    as_caller = await send(service, allocation_file((payer(), 100)), auth=caller)
    assert as_caller.status_code == 403
    assert as_caller.json()["error"]["code"] == "forbidden"
    assert "bureau" in as_caller.json()["error"]["message"]
    elsewhere = await send(service, allocation_file((payer(), 100), region="310000"))
    assert elsewhere.status_code == 403
    assert elsewhere.json()["error"]["param"] == "region"
    unknown = await send(
        service, allocation_file((payer(), 100)), auth={"Authorization": "Bearer x"}
    )
    assert unknown.status_code == 401
    # and a bureau key cannot pay
    paying = await service.client.post(
        "/v1/payments", json=body(), headers={**BUREAU, "Idempotency-Key": "k"}
    )
    assert paying.status_code == 403


async def test_an_allocation_file_replays_by_idempotency_key(service: Service) -> None:
    key = uuid.uuid4().hex
    data = allocation_file((payer(), 700))
    first = await send(service, data, key=key)
    again = await send(service, data, key=key)
    assert again.content == first.content
    assert again.headers.get("idempotent-replayed") == "true"
