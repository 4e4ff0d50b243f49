"""Prometheus metrics (issue 14): what an operator on call needs, at ``GET /metrics``.

One registry per process (``REGISTRY``); every series carries ``service`` (consumers:
their ``group``, the service's name), so services run in one process (the tests) stay
apart. Three sources:

- HTTP: a middleware times each request by route template and status
  (``yibao_http_request_duration_seconds``, a histogram; its ``_count`` is the request
  counter).
- Kafka consumers: each ``InboxConsumer`` registers itself here; at scrape time its
  counters (applied, duplicates, dead-lettered, skipped, redelivered batches) and its
  lag per partition (the broker's high watermark minus the consumer's position) are
  read from the consumer, so the hot path pays nothing.
- Samplers: async functions a service registers with ``add_metrics`` (outbox backlog
  and its oldest row's age, payments by status, SMS deliveries; gauges declared in
  ``GAUGES``): run at scrape time,
  each under a short timeout, so ``/metrics`` answers even when the database is slow
  (a failed sampler shows as ``yibao_metrics_sampler_up 0``).

Bounded labels only: route templates (never raw paths), statuses, topics, groups.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog
from fastapi import FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from shared.consumer import InboxConsumer

log = structlog.get_logger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_SECONDS = Histogram(
    "yibao_http_request_duration_seconds",
    "HTTP requests by route template and status, and how long they took",
    ["service", "method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
SAMPLER_UP = Gauge(
    "yibao_metrics_sampler_up",
    "1 when the sampler answered within its timeout at the last scrape",
    ["service", "sampler"],
    registry=REGISTRY,
)

SAMPLER_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class Sample:
    """One figure a sampler read: the gauge ``metric`` (declared in ``GAUGES``) with
    its ``labels`` besides ``service`` (e.g. ``{"status": "succeeded"}``)."""

    metric: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()


# Every gauge a sampler may set: name → (help, label names besides "service").
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "yibao_outbox_pending_events": ("Outbox rows not yet published to Kafka", ()),
    "yibao_outbox_oldest_pending_seconds": (
        "Age of the oldest outbox row not yet published (0 when none)",
        (),
    ),
    "yibao_payments": ("Payments by status (all time)", ("status",)),
    "yibao_payments_unfinished_oldest_seconds": (
        "Age of the oldest payment not in a final state (0 when none)",
        (),
    ),
    "yibao_refunds": ("Refunds by status (all time)", ("status",)),
    "yibao_bank_calls": (
        "Calls to the acquiring bank (debits, refunds, reversals) by state: calling,"
        " watching (answer awaited), done",
        ("kind", "state"),
    ),
    "yibao_notifications": ("SMS notices by kind and delivery status", ("kind", "status")),
    # Webhooks (issue 14; services/payment/webhooks.py).
    "yibao_webhook_deliveries": ("Webhook deliveries by status (all time)", ("status",)),
    "yibao_webhook_failed_attempts": ("Webhook delivery attempts that failed (all time)", ()),
    "yibao_webhook_oldest_pending_seconds": (
        "Age of the oldest delivery to an enabled endpoint not yet made (0 when none)",
        (),
    ),
    "yibao_webhook_endpoints": ("Webhook endpoints by status", ("status",)),
}
_gauges = {
    name: Gauge(name, help_text, ["service", *labels], registry=REGISTRY)
    for name, (help_text, labels) in GAUGES.items()
}


Sampler = Callable[[], Awaitable[Iterable[Sample]]]


class _Consumers(Collector):
    """Reads every live consumer's counters and lag at scrape time."""

    def __init__(self) -> None:
        self._consumers: weakref.WeakSet[InboxConsumer] = weakref.WeakSet()

    def add(self, consumer: InboxConsumer) -> None:
        self._consumers.add(consumer)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        counters = {
            name: CounterMetricFamily(f"yibao_consumer_events_{name}", help_text, labels=["group"])
            for name, help_text in (
                ("applied", "Events applied by the group (effects committed)"),
                ("duplicates", "Redelivered or duplicated events the inbox dropped"),
                ("dead_lettered", "Events sent to the dead-letter topic"),
                ("skipped", "Events of types the group has no handler for"),
            )
        }
        redelivered = CounterMetricFamily(
            "yibao_consumer_redelivered_batches",
            "Batches rolled back and fetched again after a transient failure",
            labels=["group"],
        )
        lag = GaugeMetricFamily(
            "yibao_consumer_lag_events",
            "Events on the partition past the consumer's position (the high watermark minus it)",
            labels=["group", "topic", "partition"],
        )
        for consumer in list(self._consumers):
            labels = [consumer.name]
            stats = consumer.stats
            counters["applied"].add_metric(labels, stats.applied)
            counters["duplicates"].add_metric(labels, stats.duplicates)
            counters["dead_lettered"].add_metric(labels, stats.dead_lettered)
            counters["skipped"].add_metric(labels, stats.skipped)
            redelivered.add_metric(labels, stats.redelivered_batches)
            for (topic, partition), behind in sorted(consumer.lag.items()):
                lag.add_metric([*labels, topic, str(partition)], behind)
        yield from counters.values()
        yield redelivered
        yield lag


CONSUMERS = _Consumers()
REGISTRY.register(CONSUMERS)


def watch_consumer(consumer: InboxConsumer) -> None:
    """Count this consumer in ``/metrics`` for as long as it lives."""
    CONSUMERS.add(consumer)


def _route_of(scope: Scope) -> str:
    """The route template the router matched (``/v1/payments/{payment_id}``; Starlette
    leaves it in the scope), never the raw path: unmatched paths are ``unmatched``."""
    route = scope.get("route")
    return str(getattr(route, "path", "unmatched"))


class _Timing:
    """ASGI middleware: one histogram observation per HTTP request."""

    def __init__(self, app: ASGIApp, *, service: str) -> None:
        self._app = app
        self._service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observed(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, observed)
        finally:
            route = _route_of(scope)
            if route != "/metrics":
                HTTP_SECONDS.labels(
                    self._service, scope.get("method", ""), route, str(status)
                ).observe(time.perf_counter() - started)


async def _run_sampler(service: str, name: str, sampler: Sampler) -> None:
    try:
        samples = await asyncio.wait_for(sampler(), SAMPLER_TIMEOUT_SECONDS)
    except Exception as exc:  # a slow or failing database must not fail the scrape
        log.warning("metrics_sampler_failed", sampler=name, error=repr(exc))
        SAMPLER_UP.labels(service, name).set(0)
        return
    SAMPLER_UP.labels(service, name).set(1)
    for sample in samples:
        _gauges[sample.metric].labels(service, *(v for _, v in sample.labels)).set(sample.value)


def add_metrics(app: FastAPI, service: str, samplers: Sequence[tuple[str, Sampler]] = ()) -> None:
    """``GET /metrics`` (Prometheus text format, no key: bind it to an internal
    network or scrape through the pod) and the request timing middleware."""
    app.add_middleware(_Timing, service=service)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        await asyncio.gather(*(_run_sampler(service, n, s) for n, s in samplers))
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def outbox_backlog(pool: asyncpg.Pool) -> Sampler:
    """The service's outbox: rows not yet published, and the oldest one's age."""

    async def sample() -> list[Sample]:
        row = await pool.fetchrow(
            "SELECT count(*) AS pending,"
            " coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest"
            " FROM outbox WHERE sent_at IS NULL"
        )
        assert row is not None
        return [
            Sample("yibao_outbox_pending_events", row["pending"]),
            Sample("yibao_outbox_oldest_pending_seconds", float(row["oldest"])),
        ]

    return sample


def counts_by(pool: asyncpg.Pool, metric: str, query: str) -> Sampler:
    """A gauge per group of ``query``, whose rows are the metric's label values in
    ``GAUGES`` order and then ``n`` (e.g. ``SELECT status, count(*) AS n ... GROUP BY``)."""
    label_names = GAUGES[metric][1]

    async def sample() -> list[Sample]:
        rows = await pool.fetch(query)
        return [
            Sample(metric, row["n"], tuple(zip(label_names, map(str, row[:-1]), strict=True)))
            for row in rows
        ]

    return sample
