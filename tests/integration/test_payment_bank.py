"""Bank-card payments and refunds against the real development bank process
(``python -m services.devbank``) and a real PostgreSQL: the BankWorker's answers,
retries with the same reference, the deadline, and the reversal of a late debit."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.payment import domain
from services.payment.bank import BankClient, BankWorker, reversal_reference
from shared.events import JournalEntryPosted, JournalLine, ReceiptRef, RiskApproved
from tests.integration import test_payment_api
from tests.integration.test_payment_api import Service, body, headers

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
service = test_payment_api.service  # the payment API over a fresh database (fixture)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def bank_url() -> Iterator[str]:
    """The development bank as its own process, on its own port and store."""
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="yibao-devbank-"))
    env = {
        **os.environ,
        "BANK_GATEWAY_PORT": str(port),
        "BANK_GATEWAY_STORE": str(workdir / "bank.sqlite3"),
        "YIBAO_ENVIRONMENT": "test",
    }
    log = (workdir / "bank.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.devbank"], cwd=REPO, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the development bank did not start: {(workdir / 'bank.log').read_text()}")
        time.sleep(0.1)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


async def control(bank_url: str, **settings: Any) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{bank_url}/control", json=settings)
        assert response.status_code == 200, response.text


@pytest.fixture
async def bank(bank_url: str) -> AsyncIterator[BankClient]:
    await control(bank_url, decline_next=0, delay_ms=0)
    client = BankClient(bank_url, timeout=1.0)
    yield client
    await client.aclose()
    await control(bank_url, decline_next=0, delay_ms=0)


def worker(service: Service, bank: BankClient, **policy: Any) -> BankWorker:
    values = {"deadline": timedelta(seconds=30), "retry_base": timedelta(milliseconds=50)}
    values["retry_max"] = timedelta(milliseconds=200)
    values.update(policy)
    return BankWorker(
        service.pool,
        bank,
        topics=service.settings.topics,
        policy=domain.BankPolicy(**values),
        lease=timedelta(seconds=5),
    )


async def approved_bank_card(service: Service) -> dict[str, Any]:
    payment = await service.create(body(method="bank_card"))
    approved = RiskApproved(
        payment_id=payment["id"],
        payer_id=payment["payer_id"],
        day="2026-11-26",
        cap=5_000_000,
        used=38000,
        remaining=4_962_000,
    )
    await service.feed(approved)
    return payment


async def types(service: Service, payment_id: str) -> list[str]:
    return [e["type"] for e in await service.outbox(payment_id)]


async def run_until(w: BankWorker, check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "the bank worker did not get there in time"
        await w.run_once()
        await asyncio.sleep(0.05)


async def read(service: Service, payment_id: str) -> dict[str, Any]:
    response = await service.client.get(f"/v1/payments/{payment_id}", headers=headers())
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_bank_card_waits_for_the_bank_then_is_authorized_with_its_confirmation(
    service: Service, bank: BankClient
) -> None:
    payment = await approved_bank_card(service)
    shown = await read(service, payment["id"])
    assert shown["status"] == "processing"
    assert shown["funds"] == {"expected_by": None, "arrived_at": None}
    assert await types(service, payment["id"]) == ["PaymentRequested"]  # nothing for the ledger
    w = worker(service, bank)
    await w.run_once()
    events = await service.outbox(payment["id"])
    assert [e["type"] for e in events] == ["PaymentRequested", "PaymentAuthorized"]
    authorized = events[-1]["event"]
    assert authorized.envelope.schema_version == 3  # v3: beneficiary.personal (issue 11)
    assert authorized.payload.bank_debit.reference == payment["id"]
    assert (await read(service, payment["id"]))["funds"]["expected_by"] is not None
    assert (await bank.read_debit(payment["id"])).status == "succeeded"  # type: ignore[union-attr]
    await w.run_once()  # nothing due any more: no second debit, no second event
    assert await types(service, payment["id"]) == ["PaymentRequested", "PaymentAuthorized"]


async def test_a_bank_decline_fails_the_payment_bank_declined(
    service: Service, bank: BankClient, bank_url: str
) -> None:
    payment = await approved_bank_card(service)
    await control(bank_url, decline_next=1)
    await worker(service, bank).run_once()
    events = await service.outbox(payment["id"])
    assert [e["type"] for e in events] == ["PaymentRequested", "PaymentFailed"]
    assert events[-1]["event"].payload.decline_code == "bank_declined"
    shown = await read(service, payment["id"])
    assert (shown["status"], shown["decline_code"]) == ("failed", "bank_declined")


async def test_a_bank_answering_after_the_deadline_fails_it_then_the_late_debit_is_reversed(
    service: Service, bank: BankClient, bank_url: str
) -> None:
    payment = await approved_bank_card(service)
    await control(bank_url, delay_ms=1500)  # the bank records, then answers after our timeout
    w = worker(service, bank, deadline=timedelta(seconds=1))

    async def failed() -> bool:
        return "PaymentFailed" in await types(service, payment["id"])

    await run_until(w, failed)
    [failure] = [e for e in await service.outbox(payment["id"]) if e["type"] == "PaymentFailed"]
    assert failure["event"].payload.decline_code == "bank_unavailable"
    await control(bank_url, delay_ms=0)

    async def reversed_() -> bool:
        state = await service.pool.fetchval(
            "SELECT state FROM bank_calls WHERE reference = $1", reversal_reference(payment["id"])
        )
        return bool(state == "done")

    await run_until(w, reversed_)
    answer = await service.pool.fetchval(
        "SELECT last_answer FROM bank_calls WHERE reference = $1",
        reversal_reference(payment["id"]),
    )
    assert answer == "succeeded"  # the bank gave the money back
    assert "PaymentAuthorized" not in await types(service, payment["id"])  # never booked


async def test_an_unreachable_bank_is_asked_again_with_the_same_reference(
    service: Service, bank_url: str
) -> None:
    payment = await approved_bank_card(service)
    unreachable = BankClient("http://127.0.0.1:9", timeout=0.5)
    w = worker(service, unreachable)
    await w.run_once()
    await w.run_once()
    attempts = await service.pool.fetchval(
        "SELECT attempts FROM bank_calls WHERE reference = $1", payment["id"]
    )
    assert attempts >= 1
    assert await types(service, payment["id"]) == ["PaymentRequested"]
    await unreachable.aclose()
    await service.pool.execute("UPDATE bank_calls SET next_attempt_at = now()")
    back = BankClient(bank_url, timeout=2.0)
    try:
        await worker(service, back).run_once()
        await service.pool.execute("UPDATE bank_calls SET next_attempt_at = now()")
        await worker(service, back).run_once()  # already done: asks nothing more
    finally:
        await back.aclose()
    assert await types(service, payment["id"]) == ["PaymentRequested", "PaymentAuthorized"]


async def test_a_worker_killed_after_asking_asks_again_and_the_bank_dedupes(
    service: Service, bank: BankClient
) -> None:
    payment = await approved_bank_card(service)
    # As if a worker asked, the bank booked it, and the worker died before recording.
    first = await bank.debit(payment["id"], 38000, payment["payer_id"])
    assert first is not None
    assert first.status == "succeeded"
    await worker(service, bank).run_once()
    assert await types(service, payment["id"]) == ["PaymentRequested", "PaymentAuthorized"]


async def test_a_bank_card_refund_goes_through_the_bank_first(
    service: Service, bank: BankClient
) -> None:
    payment = await approved_bank_card(service)
    w = worker(service, bank)
    await w.run_once()
    posted = JournalEntryPosted(
        seq=5,
        transaction_id="tx-5",
        payment_id=payment["id"],
        payer_id=payment["payer_id"],
        kind="premium",
        lines=(
            JournalLine(account_id="bank:funding", amount=-38000),
            JournalLine(account_id="bureau:110000:premium", amount=38000),
        ),
        posted_at=payment["created_at"],
        receipt=ReceiptRef(code="11060126", number="0000000005", check_code="abc123"),
        prev_hash="0" * 64,
        hash="1" * 64,
        bank_reference=payment["id"],
    )
    await service.feed(posted, producer="ledger")
    refund = await service.client.post(
        f"/v1/payments/{payment['id']}/refunds",
        json={"amount": 10000, "reason": "overpaid"},
        headers=headers(),
    )
    assert refund.status_code == 202, refund.text
    refund_id = refund.json()["id"]
    assert "RefundAuthorized" not in await types(service, payment["id"])
    await w.run_once()
    [authorized] = [
        e["event"] for e in await service.outbox(payment["id"]) if e["type"] == "RefundAuthorized"
    ]
    assert authorized.payload.refund_id == refund_id
    assert authorized.payload.bank_refund.reference == refund_id
    assert (await service.client.get(f"/v1/refunds/{refund_id}", headers=headers())).json()[
        "status"
    ] == "processing"
