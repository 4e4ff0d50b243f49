"""Chaos in containers: the broker's container killed (docker kill, SIGKILL) during
bank-card premium payments, then started again; nothing lost or doubled: every payment
ends, and the bureau's balance grew by exactly the succeeded payments' sum. (The
services' containers are killed the same way by tests/containers/test_e2e_money.py and
test_e2e_journeys.py, from tests/e2e.)"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from deploy import local_kafka
from tests.containers.conftest import ContainerSystem
from tests.e2e.client import FINAL, Yibao, premium_body, random_phone
from tests.support import INFRA_CONTAINERS, Infra

pytestmark = pytest.mark.e2e


def broker_answers(infra: Infra) -> bool:
    return local_kafka.kafka_healthy(infra.kafka_bootstrap, 3)


async def test_killing_the_broker_during_payments_loses_and_doubles_nothing(
    infra: Infra, system: ContainerSystem, yibao: Yibao
) -> None:
    kafka = INFRA_CONTAINERS.get("kafka")
    if kafka is None:
        pytest.skip("Kafka is not a container of this session (KAFKA_BOOTSTRAP given)")
    broker = kafka.get_wrapped_container()
    await yibao.bank_control(delay_ms=300)
    before = await yibao.balance("bureau:110000:premium")
    who = "u-" + uuid.uuid4().hex[:10]
    ids = []
    for n in range(6):
        r = await yibao.create_payment(premium_body(who, 30000 + n, phone=random_phone()))
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    await asyncio.sleep(0.5)
    broker.kill()
    broker.wait(timeout=30)
    # Payments asked for while the broker is down: taken or refused, never half-done.
    during = await yibao.create_payment(premium_body(who, 30100, phone=random_phone()))
    if during.status_code == 202:
        ids.append(during.json()["id"])
    await asyncio.sleep(2.0)
    broker.start()
    deadline = time.monotonic() + 120
    while not await asyncio.to_thread(broker_answers, infra):
        assert time.monotonic() < deadline, "the broker did not come back"
        await asyncio.sleep(1)
    try:
        outcomes = [await yibao.wait_for(pid, FINAL, timeout=180) for pid in ids]
    except AssertionError as stuck:  # say where it stuck
        services = ("payment", "risk", "ledger", "notify")
        raise AssertionError(f"{stuck}\n{system.tails(services)}") from None
    await yibao.bank_control(delay_ms=0)
    succeeded = [p for p in outcomes if p["status"] == "succeeded"]
    assert all(p["status"] in ("succeeded", "failed") for p in outcomes), outcomes
    assert succeeded, outcomes
    expected = sum(p["amount"] for p in succeeded)

    async def booked() -> bool:
        return await yibao.balance("bureau:110000:premium") - before == expected

    deadline = time.monotonic() + 60
    while not await booked():
        assert time.monotonic() < deadline, (
            await yibao.balance("bureau:110000:premium") - before,
            expected,
        )
        await asyncio.sleep(0.5)
    await asyncio.sleep(3.0)  # and not booked twice once the consumers caught up
    assert await yibao.balance("bureau:110000:premium") - before == expected
