"""What the operator on call sees (issue 14), through HTTP only: every service's
/metrics parses with Prometheus' own text parser and moves when payments flow, and
/readyz fails while the broker is stopped and recovers after it is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.client import FINAL, Yibao, premium_body, random_phone, topup_body
from tests.e2e.conftest import System
from tests.support import Infra, broker_stopped

pytestmark = pytest.mark.e2e
SERVICES = ("payment", "risk", "ledger", "notify")
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(system: System, name: str) -> Series:
    """Every sample of the service's /metrics, parsed by prometheus_client's parser."""
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.get(f"http://127.0.0.1:{system.ports[name]}/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def total(series: Series, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples carrying ``labels`` (among others)."""
    return sum(
        value
        for (metric, found), value in series.items()
        if metric == name and all(dict(found).get(k) == v for k, v in labels.items())
    )


async def pay_a_premium(yibao: Yibao) -> None:
    payer, phone = "u-ops-" + random_phone()[-6:], random_phone()
    for body in (
        topup_body(payer, 100_000, phone=phone),
        premium_body(payer, 38_000, method="wallet", phone=phone),
    ):
        created = await yibao.create_payment(body)
        assert created.status_code == 202, created.text
        done = await yibao.wait_for(created.json()["id"], FINAL)
        assert done["status"] == "succeeded", done


async def test_metrics_parse_and_move_when_payments_flow(system: System, yibao: Yibao) -> None:
    before = {name: await scrape(system, name) for name in SERVICES}
    await pay_a_premium(yibao)

    async def moved() -> dict[str, Series]:
        return {name: await scrape(system, name) for name in SERVICES}

    after = await moved()
    for _ in range(50):  # notices are sent by notify's own worker, a little later
        if total(after["notify"], "yibao_notifications", status="sent") > total(
            before["notify"], "yibao_notifications", status="sent"
        ):
            break
        await asyncio.sleep(0.2)
        after = await moved()

    created = dict(route="/v1/payments", method="POST", status="202")
    count = "yibao_http_request_duration_seconds_count"
    assert (
        total(after["payment"], count, **created) == total(before["payment"], count, **created) + 2
    )
    for name in SERVICES:  # every consumer applied what the two payments caused
        applied = "yibao_consumer_events_applied_total"
        assert total(after[name], applied) > total(before[name], applied), name
        outbox = dict(service=name, sampler="outbox")
        assert total(after[name], "yibao_metrics_sampler_up", **outbox) == 1, name
    succeeded = dict(service="payment", status="succeeded")
    assert (
        total(after["payment"], "yibao_payments", **succeeded)
        == total(before["payment"], "yibao_payments", **succeeded) + 2
    )
    assert total(after["notify"], "yibao_notifications", status="sent") > total(
        before["notify"], "yibao_notifications", status="sent"
    )
    assert total(after["payment"], "yibao_outbox_pending_events") >= 0
    for name in SERVICES:  # lag is known per partition once consumers fetched
        assert any(metric == "yibao_consumer_lag_events" for metric, _ in after[name]), name


async def readiness(system: System) -> dict[str, httpx.Response]:
    async with httpx.AsyncClient(timeout=10) as client:
        return {
            name: await client.get(f"http://127.0.0.1:{system.ports[name]}/readyz")
            for name in SERVICES
        }


async def until(check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout} s"
        await asyncio.sleep(0.5)


async def test_readyz_fails_while_the_broker_is_stopped_and_recovers(
    infra: Infra, system: System, yibao: Yibao
) -> None:
    assert all(r.status_code == 200 for r in (await readiness(system)).values())

    async with broker_stopped(infra):

        async def all_refuse() -> bool:
            answers = await readiness(system)
            return all(
                r.status_code == 503 and "broker" in r.json()["error"]["failed"]
                for r in answers.values()
            )

        await until(all_refuse, timeout=30)
        answers = await readiness(system)
        for r in answers.values():
            assert r.headers.get("retry-after"), r.headers
            assert r.json()["error"]["retryable"] is True

    async def all_ready() -> bool:
        return all(r.status_code == 200 for r in (await readiness(system)).values())

    await until(all_ready, timeout=60)
    await pay_a_premium(yibao)  # and the pipeline works again end to end
