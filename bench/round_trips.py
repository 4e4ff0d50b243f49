"""What one database round trip costs: the same unit of work as several statements in a
transaction, and as one statement.

A payment's work in our services is mostly short transactions (BEGIN, a locking read,
an update or two, an outbox insert, COMMIT), each statement its own round trip. This
measures, on a real table of a scratch database, the CPU of this client (asyncpg on
uvloop, as the services run) and of its PostgreSQL backend per unit of work:

- ``one``: one UPDATE in autocommit (a single round trip, its own commit);
- ``txn1``: BEGIN, that UPDATE, COMMIT;
- ``txn3``: BEGIN, a ``FOR UPDATE`` read, two UPDATEs, COMMIT (the shape of a handler);
- ``cte``: the work of ``txn3`` as one statement (one round trip, one commit).

Afterwards every row must have been added to exactly as many times as the runs did
(``money check`` of this benchmark), or it fails.

    .venv/bin/python -m bench.round_trips --units 5000

Uses DATABASE_URL when set, else the local stack (deploy/stack.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from bench.procstat import cpu_seconds
from deploy import stack
from shared import fastloop
from shared.db import drop_database, ensure_database

ROWS = 1000
Unit = Callable[[asyncpg.Connection, int], Awaitable[None]]


async def one(conn: asyncpg.Connection, row: int) -> None:
    await conn.execute("UPDATE rt SET v = v + 1 WHERE id = $1", row)


async def txn1(conn: asyncpg.Connection, row: int) -> None:
    async with conn.transaction():
        await conn.execute("UPDATE rt SET v = v + 1 WHERE id = $1", row)


async def txn3(conn: asyncpg.Connection, row: int) -> None:
    async with conn.transaction():
        await conn.fetchrow("SELECT * FROM rt WHERE id = $1 FOR UPDATE", row)
        await conn.execute("UPDATE rt SET v = v + 1 WHERE id = $1", row)
        await conn.execute("UPDATE rt SET w = w + 1 WHERE id = $1", row)


async def cte(conn: asyncpg.Connection, row: int) -> None:
    await conn.execute(
        "WITH locked AS (SELECT id FROM rt WHERE id = $1 FOR UPDATE)"
        " UPDATE rt SET v = rt.v + 1, w = rt.w + 1 FROM locked WHERE rt.id = locked.id",
        row,
    )


UNITS: dict[str, tuple[Unit, int, int]] = {  # name → (unit, added to v, added to w)
    "one": (one, 1, 0),
    "txn1": (txn1, 1, 0),
    "txn3": (txn3, 1, 1),
    "cte": (cte, 1, 1),
}


async def measure(conn: asyncpg.Connection, backend: int, name: str, units: int) -> None:
    unit = UNITS[name][0]
    for row in range(1, 101):  # warm: statements prepared, pages cached
        await unit(conn, row)
    pg0, me0, wall0 = cpu_seconds(backend), time.process_time(), time.perf_counter()
    for i in range(units):
        await unit(conn, i % ROWS + 1)
    pg1, me1, wall1 = cpu_seconds(backend), time.process_time(), time.perf_counter()
    pg = (pg1 - pg0) if pg0 is not None and pg1 is not None else float("nan")
    print(
        f"{name:>5}: client {(me1 - me0) / units * 1e6:5.0f} µs CPU, PostgreSQL backend"
        f" {pg / units * 1e6:5.0f} µs CPU, wall {(wall1 - wall0) / units * 1e6:5.0f} µs per unit",
        flush=True,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=5000, help="units of work per variant")
    parser.add_argument("--rounds", type=int, default=2, help="passes over all variants")
    args = parser.parse_args()
    admin = os.environ.get("DATABASE_URL") or stack.ensure_infra().database_url
    dsn = await ensure_database(admin, f"bench_rt_{uuid.uuid4().hex[:8]}")
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()};"
        " client and PostgreSQL on this machine (other load counts in the figures)"
    )
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE rt (id int PRIMARY KEY, v bigint NOT NULL, w bigint NOT NULL)"
        )
        await conn.execute("INSERT INTO rt SELECT g, 0, 0 FROM generate_series(1, $1::int) g", ROWS)
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        expected_v = expected_w = 0
        for _ in range(args.rounds):
            for name, (_unit, dv, dw) in UNITS.items():
                await measure(conn, backend, name, args.units)
                expected_v += (args.units + 100) * dv
                expected_w += (args.units + 100) * dw
        v, w = await conn.fetchrow("SELECT sum(v)::bigint, sum(w)::bigint FROM rt")
        ok = (v, w) == (expected_v, expected_w)
        print(
            f"check: rows added {v}/{w}, expected {expected_v}/{expected_w}: {'OK' if ok else 'WRONG'}"
        )
    finally:
        await conn.close()
        await drop_database(admin, dsn.rsplit("/", 1)[1])
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    fastloop.run(main())
