"""/metrics (issue 14) on a real payment app and a real consumer: requests by route
template and status, figures sampled from PostgreSQL at scrape time, and a consumer's
counters and lag (the broker's high watermark minus its position)."""

# The fixtures come from the backbone and payment API tests (imported by name).
# ruff: noqa: F401, F811

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import asyncpg
from prometheus_client import generate_latest

from shared.metrics import REGISTRY
from tests.integration.backbone_app import stage
from tests.integration.test_backbone import (
    Running,
    applied_exactly_once,
    consumer,
    db,
    pool,
    relay,
    topic,
    wait_until,
)
from tests.integration.test_payment_api import Service, headers, service
from tests.support import Infra


def value_of(text: str, metric: str, **labels: str) -> float:
    """The value of the one series of ``metric`` carrying ``labels`` (among others)."""
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name != metric:
            continue
        series, _, value = rest.rpartition("} ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', series))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"no {metric} with {labels} in /metrics")


async def test_requests_payments_and_the_outbox_are_counted(service: Service) -> None:
    route = dict(service="payment", route="/v1/payments/{payment_id}", method="GET")
    count = "yibao_http_request_duration_seconds_count"

    def not_found_so_far(text: str) -> float:  # the registry is the process's: a delta
        try:
            return value_of(text, count, status="404", **route)
        except AssertionError:
            return 0.0

    before = not_found_so_far((await service.client.get("/metrics")).text)
    created = await service.create()
    missing = await service.client.get("/v1/payments/pay_nope", headers=headers())
    assert missing.status_code == 404
    answer = await service.client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    text = answer.text
    assert not_found_so_far(text) == before + 1
    assert "pay_nope" not in text  # route templates, never raw paths
    created_route = dict(service="payment", route="/v1/payments", method="POST", status="202")
    assert value_of(text, "yibao_http_request_duration_seconds_count", **created_route) >= 1
    assert created["status"] == "processing"
    assert value_of(text, "yibao_payments", service="payment", status="requested") >= 1
    # The PaymentRequested row waits in the outbox: no relay runs in this test.
    assert value_of(text, "yibao_outbox_pending_events", service="payment") >= 1
    assert value_of(text, "yibao_outbox_oldest_pending_seconds", service="payment") >= 0
    for sampler in ("outbox", "payments", "refunds", "bank", "unfinished"):
        assert value_of(text, "yibao_metrics_sampler_up", service="payment", sampler=sampler) == 1


async def test_a_sampler_that_fails_is_reported_down_and_the_scrape_still_answers(
    service: Service,
) -> None:
    await service.pool.execute("ALTER TABLE refunds RENAME TO refunds_away")
    try:
        answer = await service.client.get("/metrics")
    finally:
        await service.pool.execute("ALTER TABLE refunds_away RENAME TO refunds")
    assert answer.status_code == 200
    text = answer.text
    assert value_of(text, "yibao_metrics_sampler_up", service="payment", sampler="refunds") == 0
    assert value_of(text, "yibao_metrics_sampler_up", service="payment", sampler="payments") == 1


async def test_a_consumers_counters_and_lag(
    infra: Infra,
    db: str,
    pool: asyncpg.Pool,
    topic: str,
) -> None:
    running = Running()
    group = f"g-{os.urandom(4).hex()}"
    try:
        await stage(db, topic, ["u-m1", "u-m2"], 15)
        running.start(relay(infra, db))
        c = consumer(infra, pool, topic, group)
        running.start(c)
        await wait_until(lambda: applied_exactly_once(db, 30))

        async def caught_up() -> bool:
            return bool(c.lag) and sum(c.lag.values()) == 0

        await wait_until(caught_up)
    finally:
        await running.stop_all()
    text = generate_latest(REGISTRY).decode()
    assert value_of(text, "yibao_consumer_events_applied_total", group=group) == 30
    assert value_of(text, "yibao_consumer_events_duplicates_total", group=group) == 0
    lags = [
        value_of(text, "yibao_consumer_lag_events", group=group, topic=t, partition=str(p))
        for t, p in c.lag
    ]
    assert lags and all(lag == 0 for lag in lags)


async def test_lag_counts_what_waits_on_the_partition(
    infra: Infra,
    db: str,
    pool: asyncpg.Pool,
    topic: str,
) -> None:
    """A consumer handed only the first batch sees the rest of the partition as lag."""
    await stage(db, topic, ["u-lag"], 40)
    running = Running()
    try:
        running.start(relay(infra, db))
        await wait_until(lambda: _outbox_sent(db, 40))
        c = consumer(infra, pool, topic, f"g-{os.urandom(4).hex()}", batch_size=10)
        seen: list[tuple[int, int]] = []  # (events consumed so far, lag after that batch)

        async def note_lag(batch: Mapping[object, Sequence[object]]) -> None:
            consumed = (seen[-1][0] if seen else 0) + sum(len(r) for r in batch.values())
            seen.append((consumed, sum(c.lag.values())))

        c._after_commit = note_lag  # the test hook: runs after each batch's commit
        running.start(c)
        await wait_until(lambda: applied_exactly_once(db, 40))
    finally:
        await running.stop_all()
    assert len(seen) >= 4  # batches of at most 10
    assert all(lag == 40 - consumed for consumed, lag in seen), seen
    assert seen[-1] == (40, 0)


async def _outbox_sent(dsn: str, n: int) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return (
            int(await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL")) == n
        )
    finally:
        await conn.close()
