"""A traced two-hop pipeline on the real broker and database, for tests/integration/
test_tracing.py. It runs as its own process, because tracing is process-wide (one
provider, patched libraries) and the test session's other tests run untraced:

    python -m tests.integration.tracing_app DSN BOOTSTRAP FIRST_TOPIC SECOND_TOPIC

``POST /stage`` stages a ``LimitReleased`` on FIRST_TOPIC; the relay publishes it; the
consumer group ``hop1`` applies it (an ``effects`` row) and stages a second event on
SECOND_TOPIC; group ``hop2`` applies that one. The process makes the request through
``shared.runtime.serve``, waits for both effects and prints one JSON line: every
finished span (from an in-memory exporter) and the outbox rows' ``traceparent``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared import tracing
from shared.consumer import Handler, InboxConsumer
from shared.db import create_pool
from shared.events import Event, LimitReleased
from shared.outbox import OutboxRelay, write_outbox
from shared.runtime import serve
from tests.integration.backbone_app import envelope_for, prepare
from tests.support import free_port


def span_json(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "attributes": dict(span.attributes or {}),
        "service": span.resource.attributes.get("service.name"),
    }


def hop_handlers(second_topic: str | None) -> Mapping[str, Handler]:
    async def handle(conn: asyncpg.Connection, event: Event) -> None:
        payload = event.payload
        assert isinstance(payload, LimitReleased)
        await conn.execute(
            "INSERT INTO effects (event_id, key, seq, consumer_tag) VALUES ($1, $2, $3, $4)",
            event.event_id,
            payload.payer_id,
            payload.amount,
            "hop2" if second_topic is None else "hop1",
        )
        if second_topic is not None:
            await write_outbox(conn, second_topic, [envelope_for(payload.payer_id, 2)])

    return {"LimitReleased": handle}


async def main(dsn: str, bootstrap: str, first: str, second: str) -> None:
    exporter = InMemorySpanExporter()
    assert tracing.setup_tracing("tracing-test", exporters=[exporter])
    await prepare(dsn)
    pool = await create_pool(dsn)
    app = FastAPI()

    @app.post("/stage")
    async def stage() -> dict[str, str]:
        async with pool.acquire() as conn, conn.transaction():
            await write_outbox(conn, first, [envelope_for("payer-1", 1)])
        return {"status": "staged"}

    relay = OutboxRelay(dsn, bootstrap, poll_interval=0.1)
    hop1 = InboxConsumer(
        name="hop1", bootstrap=bootstrap, topics=[first], pool=pool, handlers=hop_handlers(second)
    )
    hop2 = InboxConsumer(
        name="hop2", bootstrap=bootstrap, topics=[second], pool=pool, handlers=hop_handlers(None)
    )
    port = free_port()
    server = asyncio.create_task(
        serve(
            app,
            host="127.0.0.1",
            port=port,
            workers=[("relay", relay.run), ("hop1", hop1.run), ("hop2", hop2.run)],
        )
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        for _ in range(100):
            try:
                # The query string stands for a secret (a receipt's 校验码): redacted.
                secret = {"Authorization": "Bearer yb_secret_key", "X-Request-Id": "req-1"}
                (await http.post("/stage?code=12345678", headers=secret)).raise_for_status()
                break
            except httpx.TransportError:
                await asyncio.sleep(0.1)
    for _ in range(600):
        if await pool.fetchval("SELECT count(*) FROM effects") >= 2:
            break
        await asyncio.sleep(0.1)
    traceparents = [r["traceparent"] for r in await pool.fetch("SELECT * FROM outbox ORDER BY id")]
    effects = await pool.fetchval("SELECT count(*) FROM effects")
    for worker in (relay, hop1, hop2):
        worker.stop()
    server.cancel()
    await asyncio.gather(server, return_exceptions=True)
    await pool.close()
    tracing.shutdown_tracing()
    spans = [span_json(s) for s in exporter.get_finished_spans()]
    out = {"effects": effects, "traceparents": traceparents, "spans": spans}
    sys.stdout.write(json.dumps(out, default=str) + "\n")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
