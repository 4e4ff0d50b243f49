"""Benchmark: premium payments end to end through all four services, over HTTP.

Against the stack of `make up` (reads .run/stack.env). Sends --payments bank-card
premiums below the step-up threshold from --concurrency parallel callers, each with
its own payer, into a region of its own so the bureau's balance says when all are
booked. Prints the API's accept rate and latency, the end-to-end rate (first request
to last posting) and each payment's request-to-succeeded latency (p50/p99).

    make up && .venv/bin/python -m bench.payments --payments 3000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx

from deploy.common import read_env_file
from shared.regions import region_codes
from tests.e2e.client import premium_body

STACK_ENV = Path(__file__).resolve().parents[1] / ".run" / "stack.env"


def quantiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=100)
    return f"p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, max {max(values):.1f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="pace the requests at this many payments/s (default: as fast as "
        "the API accepts them); paced, the latency is the steady-state one",
    )
    args = parser.parse_args()
    env = read_env_file(STACK_ENV) if STACK_ENV.exists() else {}
    if "PAYMENT_URL" not in env:
        raise SystemExit(f"no running stack: {STACK_ENV} is missing; start one with `make up`")
    auth = {"Authorization": f"Bearer {env['API_KEY']}"}
    region = random.choice(sorted(region_codes()))
    amount = 38000
    ids: list[str] = []
    accept_ms: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.payments):
        queue.put_nowait(i)

    async def caller(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            if args.rate:
                await asyncio.sleep(max(0.0, t0 + i / args.rate - time.perf_counter()))
            body = premium_body(f"u-bench-{uuid.uuid4().hex[:12]}", amount, region=region)
            started = time.perf_counter()
            r = await client.post(
                f"{env['PAYMENT_URL']}/v1/payments",
                json=body,
                headers={**auth, "Idempotency-Key": f"bench-{i}-{uuid.uuid4()}"},
            )
            accept_ms.append((time.perf_counter() - started) * 1000)
            if r.status_code != 202:
                raise SystemExit(f"POST answered {r.status_code}: {r.text}")
            ids.append(r.json()["id"])

    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        try:
            await client.get(f"{env['PAYMENT_URL']}/healthz", timeout=5)
        except httpx.HTTPError as exc:
            raise SystemExit(
                f"the payment service at {env['PAYMENT_URL']} does not answer "
                f"({exc}); start the stack with `make up`"
            ) from exc
        t0 = time.perf_counter()
        await asyncio.gather(*(caller(client) for _ in range(args.concurrency)))
        accepted_s = time.perf_counter() - t0
        bureau = f"{env['LEDGER_URL']}/v1/accounts/bureau:{region}:premium"
        while True:
            balance = (await client.get(bureau, headers=auth)).json()["balance"]
            if balance >= amount * args.payments:
                break
            if time.perf_counter() - t0 > 600:
                raise SystemExit(f"only {balance // amount} of {args.payments} booked in 600 s")
            await asyncio.sleep(0.05)
        booked_s = time.perf_counter() - t0

        async def e2e_ms(pid: str) -> float:
            p = (await client.get(f"{env['PAYMENT_URL']}/v1/payments/{pid}", headers=auth)).json()
            done = datetime.fromisoformat(p["updated_at"])
            return (done - datetime.fromisoformat(p["created_at"])).total_seconds() * 1000

        sample = random.sample(ids, min(len(ids), 1000))
        latencies = [await e2e_ms(pid) for pid in sample]

    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}; "
        "all services, Kafka and PostgreSQL on this machine"
    )
    pace = f"paced at {args.rate:,.0f}/s" if args.rate else "unpaced (burst)"
    print(
        f"payments: {args.payments} bank-card premiums of {amount / 100:.2f} CNY, "
        f"{args.concurrency} concurrent callers, {pace}"
    )
    print(
        f"API accepted: {args.payments / accepted_s:,.0f} payments/s; POST latency {quantiles(accept_ms)}"
    )
    print(
        f"end to end (first POST to last ledger posting): {args.payments / booked_s:,.0f} payments/s "
        f"({booked_s:.1f} s)"
    )
    print(f"request -> succeeded, {len(sample)} sampled: {quantiles(latencies)}")


if __name__ == "__main__":
    asyncio.run(main())
