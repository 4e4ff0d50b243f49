"""Peer (a ceiling): a bare FastAPI + asyncpg endpoint doing the least a payment API can.

``POST /v1/payments`` validates the same body as the payment API (``PaymentCreate``)
and inserts one row in one transaction; nothing else (no idempotency, no outbox, no
events). Served by uvicorn on uvloop + httptools, as our services are. Driven by the
same open-loop generator (bench/loadgen.py) at the same rate; prints accepted/s, HTTP
latency from the scheduled send and CPU seconds per request of the server and its
PostgreSQL backends.

    .venv/bin/python -m bench.peer_bare --rate 1000 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse

from bench.loadgen import HttpPool, json_bytes, open_loop, quantiles_ms
from bench.procstat import CpuMeter
from deploy import common
from services.payment.schemas import PaymentCreate  # the same validation as ours
from shared import fastloop
from tests.e2e.client import premium_body

REPO = Path(__file__).resolve().parents[1]
TABLE = """
CREATE TABLE IF NOT EXISTS peer_payments (
    id text PRIMARY KEY, idempotency_key text NOT NULL UNIQUE, payer_id text NOT NULL,
    amount bigint NOT NULL, body jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now()
)
"""


def create_app(dsn: str) -> FastAPI:
    state: dict[str, asyncpg.Pool] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(dsn, min_size=4, max_size=10)
        assert pool is not None
        state["pool"] = pool
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/payments", status_code=202)
    async def create(
        body: PaymentCreate, idempotency_key: str = Header(alias="Idempotency-Key")
    ) -> JSONResponse:
        pid = "pay_" + uuid.uuid4().hex
        async with state["pool"].acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO peer_payments (id, idempotency_key, payer_id, amount, body)"
                " VALUES ($1, $2, $3, $4, $5::jsonb)",
                pid,
                idempotency_key,
                body.payer_id,
                body.amount,
                body.model_dump_json(),
            )
        return JSONResponse({"id": pid, "status": "processing"}, status_code=202)

    return app


def serve(dsn: str, port: int) -> None:
    import uvicorn

    config = uvicorn.Config(
        create_app(dsn),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        http=fastloop.UVICORN_HTTP,
    )
    fastloop.run(uvicorn.Server(config).serve())


async def drive(args: argparse.Namespace) -> None:
    from tests.support import create_database, remove_what_was_made

    values = common.read_env_file(REPO / ".run" / "stack.env")
    admin = os.environ.get("DATABASE_URL") or values.get("DATABASE_URL")
    if not admin:
        raise SystemExit("no PostgreSQL known: .run/stack.env is missing (make up)")
    dsn = await create_database(admin)
    conn = await asyncpg.connect(dsn)
    await conn.execute(TABLE)
    port = common_free_port()
    server = subprocess.Popen(  # noqa: S603, ASYNC220 - once, before the clock starts
        [sys.executable, "-m", "bench.peer_bare", "--serve", "--dsn", dsn, "--port", str(port)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        api = HttpPool(f"http://127.0.0.1:{port}", max_connections=args.connections)
        for _ in range(100):
            try:
                await api.request("GET", "/docs", {})
                break
            except OSError:
                await asyncio.sleep(0.1)
        name = dsn.rsplit("/", 1)[1]
        backends = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", name)
        meter = CpuMeter()
        meter.add("peer server (uvicorn)", [server.pid])
        meter.add("postgresql: its backends", [r["pid"] for r in backends])
        count = max(1, int(args.rate * args.duration))

        def make(i: int) -> tuple[dict[str, str], bytes]:
            body = premium_body(f"u-peer-{i}", args.amount)
            return {"Idempotency-Key": f"peer-{uuid.uuid4().hex}"}, json_bytes(body)

        meter.start()
        started = time.perf_counter()
        result = await open_loop(
            api, count=count, rate=args.rate, path="/v1/payments", make_request=make
        )
        elapsed = time.perf_counter() - started
        cpu = meter.stop()
        accepted = result.by_status().get(202, 0)
        print(
            f"machine: {platform.machine()} {os.cpu_count()} cores, Python"
            f" {platform.python_version()}; server, PostgreSQL and load generator on it"
        )
        print(f"peer_bare: offered {args.rate:,.0f}/s, {count} requests")
        print(
            f"peer_bare: accepted {accepted / elapsed:,.1f}/s ({accepted}); answers"
            f" {result.by_status()}; client errors {result.errors or 'none'}"
        )
        if other := next((o for o in result.outcomes if o.status not in (0, 202)), None):
            print(f"peer_bare: e.g. {other.status}: {other.body[:300]!r}")
        print(
            f"peer_bare: HTTP latency from scheduled send: {quantiles_ms(result.latencies_ms(202))}"
        )
        done = max(accepted, 1)
        for group, seconds in cpu.items():
            print(f"peer_bare: CPU {group}: {seconds * 1000 / done:.2f} ms per request")
        print(
            f"peer_bare: CPU load generator: {meter.own_seconds * 1000 / done:.2f} ms per request"
        )
        await api.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
        await conn.close()
        await remove_what_was_made()


def common_free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--amount", type=int, default=38000)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.dsn, args.port)
    else:
        fastloop.run(drive(args))


if __name__ == "__main__":
    main()
