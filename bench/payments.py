"""Benchmark: premium payments end to end through all four services, open loop.

Sends bank-card premiums below the step-up threshold at a fixed offered rate (each
request's send time is scheduled; latency counts from it; a request that times out is
sent again under the same Idempotency-Key) and reads ``payments.v1`` as the admin
principal for each payment's terminal event. Prints, per rate: offered, accepted
(202), shed (503 overloaded) and completed per second; HTTP and end-to-end latency
(p50/p90/p99, from the scheduled send); the money check (the bureau's balance moved by
exactly the succeeded sum); the CPU seconds per payment of every process (each service,
the gateways, the PostgreSQL backends of the run's databases and the server's own
processes, the Kafka JVM, the load generator); WAL bytes per payment; and
pg_stat_statements' top statements when the server preloads it.

    .venv/bin/python -m bench.payments --self-contained --rate 80 --duration 30
    .venv/bin/python -m bench.payments --rate 80 --duration 30         # against `make up`
    .venv/bin/python -m bench.payments --self-contained --rates 50,100,200 --peers
    .venv/bin/python -m bench.payments --self-contained --instances 2 --rate 80

``--self-contained`` starts its own services from this checkout on free ports against
the running Kafka and PostgreSQL (fresh databases, a topic prefix, a Kafka principal
per service), as tests/e2e/conftest.py does, and stops them afterwards; with
``--instances N``, N processes each of payment, risk and notify share their ports (as
``YIBAO_INSTANCES=N make up``), and the CPU table counts them together.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.loadgen import HttpPool, OpenLoopResult, json_bytes, open_loop, quantiles_ms
from bench.procstat import CpuMeter, children_of
from deploy import common, procs, stack
from shared import fastloop
from shared.kafka import client_options
from shared.regions import region_codes
from tests.e2e.client import premium_body

REPO = Path(__file__).resolve().parents[1]
STACK_ENV = REPO / ".run" / "stack.env"
TERMINAL = {"PaymentSucceeded", "PaymentDeclined", "PaymentFailed"}
SERVICE_MODULES = {
    "sms-gateway": "services.notify.gateway",
    "bank": "services.devbank",
    "payment": "services.payment",
    "ledger": "services.ledger",
    "risk": "services.risk",
    "notify": "services.notify",
}
SERVICES = ("payment", "risk", "ledger", "notify")


@dataclass
class Target:
    """Where the services run and what the benchmark may read of them."""

    urls: dict[str, str]
    api_key: str
    admin_dsn: str
    kafka: str
    prefix: str
    databases: dict[str, str]  # service -> database name
    pids: dict[str, list[int]]  # service -> the pids of its instances
    cleanup: list[Any] = field(default_factory=list)


def _key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _infra_values() -> dict[str, str]:
    values = common.read_env_file(STACK_ENV)
    for name in ("KAFKA_BOOTSTRAP", "DATABASE_URL"):
        if os.environ.get(name):
            values[name] = os.environ[name]
    if not (values.get("KAFKA_BOOTSTRAP") and values.get("DATABASE_URL")):
        raise SystemExit(f"no Kafka/PostgreSQL known: {STACK_ENV} is missing (make up)")
    return values


async def self_contained(
    max_in_flight: int | None,
    *,
    max_wait: float | None = None,
    keep: bool = False,
    instances: int = 1,
) -> Target:
    """Services from this checkout on free ports, fresh databases and topics;
    ``instances`` processes each of payment, risk and notify (deploy/stack.py)."""
    from tests.support import (
        create_database,
        create_service_principals,
        create_topics,
        random_prefix,
        use_kafka_credentials,
    )

    values = _infra_values()
    use_kafka_credentials(values)  # this process reads payments.v1 as the admin
    kafka, admin = values["KAFKA_BOOTSTRAP"], values["DATABASE_URL"]
    prefix = "bench" + random_prefix()
    await create_topics(kafka, prefix)
    principals = await create_service_principals(kafka, prefix)
    dsns = {svc: await create_database(admin) for svc in SERVICES}
    ports = {name: _free_port() for name in SERVICE_MODULES}
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    workdir = Path(tempfile.mkdtemp(prefix="yibao-bench-"))
    api_key = "yb_test_" + secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "YIBAO_ENVIRONMENT": "test",
        "YIBAO_LOG_JSON": "true",
        "KAFKA_BOOTSTRAP": kafka,
        "DATABASE_URL": admin,
        "YIBAO_TOPIC_PREFIX": prefix,
        "YIBAO_SEAL_KEY": _key(),
        "YIBAO_HASH_KEY": _key(),
        "YIBAO_RECEIPT_SIGNING_KEY": _key(),
        "YIBAO_INTERNAL_TOKEN": secrets.token_urlsafe(32),
        "API_KEY": api_key,
        "YIBAO_API_KEYS": api_key,
        "YIBAO_BUREAU_API_KEYS": f"110000:yb_test_{secrets.token_urlsafe(24)}",
        "YIBAO_OPERATOR_API_KEYS": "yb_test_" + secrets.token_urlsafe(24),
        "BANK_GATEWAY_PORT": str(ports["bank"]),
        "BANK_GATEWAY_URL": url["bank"],
        "BANK_GATEWAY_STORE": str(workdir / "bank.sqlite3"),
        "SMS_GATEWAY_PORT": str(ports["sms-gateway"]),
        "SMS_GATEWAY_URL": url["sms-gateway"],
        "SMS_GATEWAY_STORE": str(workdir / "sms"),
        "RISK_URL": url["risk"],
        "PAYMENT_RISK_URL": url["risk"],
        **{f"{svc.upper()}_DSN": dsns[svc] for svc in SERVICES},
        **{f"{svc.upper()}_PORT": str(ports[svc]) for svc in SERVICES},
        **{f"{svc.upper()}_URL": url[svc] for svc in SERVICES},
        **principals,
    }
    if max_in_flight is not None:
        env["PAYMENT_OVERLOAD_MAX_IN_FLIGHT"] = str(max_in_flight)
    if max_wait is not None:
        env["PAYMENT_OVERLOAD_MAX_WAIT_SECONDS"] = str(max_wait)
    # Kafka admin credentials stay with this process, not the services.
    for name in ("YIBAO_KAFKA_USERNAME", "YIBAO_KAFKA_PASSWORD"):
        env.pop(name, None)
    table = [(n, m, ports[n]) for n, m in SERVICE_MODULES.items()]
    pid_dir = workdir / "pids"
    counts = common.instance_counts({"YIBAO_INSTANCES": str(instances)})

    def stop() -> None:
        for name, module in SERVICE_MODULES.items():
            for instance in common.instance_names(name, pid_dir):
                procs.stop_process(pid_dir / f"{instance}.pid", expect=module)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)

    try:
        stack.start_services(
            env, None, workdir / "logs", pid_dir, repo=REPO, services=table, instances=counts
        )
    except common.StackError:
        stop()
        raise
    print(
        f"self-contained stack: {workdir} (logs; removed at the end unless --keep-logs), topic prefix {prefix}",
        flush=True,
    )
    return Target(
        urls=url,
        api_key=api_key,
        admin_dsn=admin,
        kafka=kafka,
        prefix=prefix,
        databases={svc: dsns[svc].rsplit("/", 1)[1] for svc in SERVICES},
        pids=_instance_pids(pid_dir),
        cleanup=[stop],
    )


def _instance_pids(pid_dir: Path) -> dict[str, list[int]]:
    """Each service's pids in ``pid_dir``, every instance's (payment, payment-2 ...)."""
    pids: dict[str, list[int]] = {}
    for name in SERVICE_MODULES:
        for instance in common.instance_names(name, pid_dir):
            if (pid := procs.read_pid(pid_dir / f"{instance}.pid")) is not None:
                pids.setdefault(name, []).append(pid)
    return pids


def running_stack() -> Target:
    """The stack of `make up` (.run/stack.env, .run/pids)."""
    values = _infra_values()
    if "PAYMENT_URL" not in values:
        raise SystemExit(f"no running stack: {STACK_ENV} has no PAYMENT_URL; `make up`")
    os.environ.update(common.kafka_admin_env(values))
    lay = common.layout(REPO)
    pids = _instance_pids(lay.pids)
    return Target(
        urls={
            "payment": values["PAYMENT_URL"],
            "ledger": values["LEDGER_URL"],
        },
        api_key=values["API_KEY"],
        admin_dsn=values["DATABASE_URL"],
        kafka=values["KAFKA_BOOTSTRAP"],
        prefix=os.environ.get("YIBAO_TOPIC_PREFIX", ""),
        databases={svc: f"yibao_{svc}" for svc in SERVICES},
        pids=pids,
    )


class TerminalWatcher:
    """Reads payments.v1 from its end; the arrival time of each terminal event."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            group_id=None,
            **client_options(),
        )
        self.done: dict[str, tuple[float, str, int]] = {}  # id -> (time, type, amount)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        # the topic's partitions (aiokafka's client, as its producer asks for them)
        partitions = await self.consumer._client._wait_on_metadata(self.topic)
        if not partitions:
            raise SystemExit(f"topic {self.topic} has no partitions (is it created?)")
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end offsets now, before any payment is sent
            await self.consumer.position(tp)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=200, max_records=5000)
            now = time.perf_counter()
            for records in batches.values():
                for record in records:
                    if record.value is None or (
                        b"PaymentSucceeded" not in record.value
                        and (
                            b"PaymentDeclined" not in record.value
                            and b"PaymentFailed" not in record.value
                        )
                    ):
                        continue
                    envelope = json.loads(record.value)
                    if envelope.get("event_type") in TERMINAL:
                        payload = envelope.get("payload") or {}
                        self.done.setdefault(
                            str(payload.get("payment_id") or envelope.get("correlation_id")),
                            (now, envelope["event_type"], int(payload.get("amount") or 0)),
                        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()


class PgProbe:
    """What the benchmark reads of PostgreSQL: backends, WAL, pg_stat_statements."""

    def __init__(self, conn: asyncpg.Connection, databases: list[str]) -> None:
        self.conn = conn
        self.databases = databases
        self.statements = False

    async def backends(self) -> tuple[list[int], list[int]]:
        """(our databases' client backends, the server's own processes)."""
        rows = await self.conn.fetch(
            "SELECT pid, datname, backend_type FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
        )
        ours = [r["pid"] for r in rows if r["datname"] in self.databases]
        server = [r["pid"] for r in rows if r["backend_type"] != "client backend"]
        postmaster = await self.conn.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"
        )
        if postmaster:  # the postmaster is the checkpointer's parent
            stat = Path(f"/proc/{postmaster}/stat").read_text()  # noqa: ASYNC240 - /proc
            server.append(int(stat.rsplit(")", 1)[1].split()[1]))
        return ours, server

    async def wal_lsn(self) -> str:
        return str(await self.conn.fetchval("SELECT pg_current_wal_lsn()::text"))

    async def wal_bytes(self, since: str) -> int:
        return int(
            await self.conn.fetchval(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)", since
            )
        )

    async def enable_statements(self, admin_dsn: str) -> str | None:
        """None when pg_stat_statements is usable, else why not."""
        preload = str(await self.conn.fetchval("SHOW shared_preload_libraries"))
        if "pg_stat_statements" not in preload:
            return (
                "pg_stat_statements: not in shared_preload_libraries (it needs a restart of"
                " PostgreSQL, which the shared stack does not allow here); skipped"
            )
        await self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self.statements = True
        return None

    async def statement_snapshot(self) -> dict[tuple[int, int], tuple[int, float, str]]:
        if not self.statements:
            return {}
        rows = await self.conn.fetch(
            "SELECT s.dbid, s.queryid, s.calls, s.total_exec_time, s.query"
            " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
            " WHERE d.datname = ANY($1::text[])",
            self.databases,
        )
        return {
            (r["dbid"], r["queryid"]): (r["calls"], r["total_exec_time"], r["query"]) for r in rows
        }


@dataclass
class Phase:
    rate: float
    result: OpenLoopResult
    accepted: dict[str, float]  # payment id -> due time
    completed: dict[str, tuple[float, str, int]]
    drained_s: float
    cpu: dict[str, float]
    own_cpu: float
    wal_bytes: int
    balance_moved: int | None
    statements: list[tuple[int, float, str]]


def _print_phase(p: Phase, amount: int) -> None:
    r = p.result
    n = len(r.outcomes)
    statuses = r.by_status()
    accepted = len(p.accepted)
    shed = statuses.get(503, 0)
    others = {s: c for s, c in statuses.items() if s not in (202, 503)}
    e2e = [
        (p.completed[pid][0] - due) * 1000 for pid, due in p.accepted.items() if pid in p.completed
    ]
    succeeded = [
        pid for pid in p.accepted if p.completed.get(pid, (0, ""))[1] == "PaymentSucceeded"
    ]
    window = r.sent_s if r.sent_s > 0 else 1.0
    print(f"\n-- offered {p.rate:,.0f} payments/s for {window:.1f} s ({n} requests)")
    print(
        f"accepted {accepted / window:,.1f}/s ({accepted}), shed 503 {shed / window:,.1f}/s"
        f" ({shed}), other {others or 'none'}; retries after timeouts:"
        f" {sum(o.attempts - 1 for o in r.outcomes)}; client errors: {r.errors or 'none'}"
    )
    print(
        f"completed {len(e2e) / p.drained_s:,.1f}/s ({len(e2e)} of {accepted} accepted,"
        f" last {p.drained_s:.1f} s after the first send; {len(succeeded)} succeeded)"
    )
    print(f"HTTP 202 latency from scheduled send: {quantiles_ms(r.latencies_ms(202))}")
    if shed:
        print(f"HTTP 503 latency from scheduled send: {quantiles_ms(r.latencies_ms(503))}")
    print(f"end to end (scheduled send -> terminal event on payments.v1): {quantiles_ms(e2e)}")
    expected = len(succeeded) * amount
    if p.balance_moved is None:
        print("money check: skipped (the bureau's account could not be read)")
    else:
        verdict = "OK" if p.balance_moved == expected else "MISMATCH"
        print(
            f"money check: bureau balance moved {p.balance_moved} fen, succeeded sum"
            f" {expected} fen: {verdict}"
        )
    done = max(len(e2e), 1)
    print(f"CPU seconds per completed payment (ms), {len(e2e)} payments:")
    total = 0.0
    for group, seconds in sorted(p.cpu.items(), key=lambda kv: -kv[1]):
        total += seconds
        print(f"  {group:<44} {seconds * 1000 / done:8.2f} ms  ({seconds:.2f} s)")
    total += p.own_cpu
    print(
        f"  {'load generator (incl. its payments.v1 reader)':<44} {p.own_cpu * 1000 / done:8.2f} ms"
    )
    print(f"  {'total':<44} {total * 1000 / done:8.2f} ms")
    print(f"WAL: {p.wal_bytes / done:,.0f} bytes per payment (cluster-wide: other users count too)")
    if p.statements:
        round_trips = sum(c for c, _ms, _query in p.statements)
        print(
            f"statements (round trips to PostgreSQL): {round_trips / done:.1f} per payment"
            " (pg_stat_statements, every service's database, BEGIN and COMMIT included)"
        )
        print("pg_stat_statements, top 10 by time:")
        for calls, ms, query in p.statements[:10]:
            print(f"  {ms:9.1f} ms {calls:7d} calls  {' '.join(query.split())[:90]}")


async def run_phase(
    target: Target,
    watcher: TerminalWatcher,
    probe: PgProbe,
    meter: CpuMeter,
    rate: float,
    duration: float,
    args: argparse.Namespace,
) -> Phase:
    region = random.choice(sorted(region_codes()))
    bureau_path = f"/v1/accounts/bureau:{region}:premium"
    ledger = HttpPool(target.urls["ledger"])
    auth = {"Authorization": f"Bearer {target.api_key}"}

    async def balance() -> int | None:
        status, _, data = await ledger.request("GET", bureau_path, auth)
        return int(json.loads(data)["balance"]) if status == 200 else (0 if status == 404 else None)

    before = await balance()
    ours, server = await probe.backends()
    meter.add("postgresql: backends of the run's databases", ours)
    meter.add("postgresql: server processes (shared)", server)
    statements_before = await probe.statement_snapshot()
    lsn = await probe.wal_lsn()
    run = uuid.uuid4().hex[:8]
    count = max(1, int(rate * duration))

    def make(i: int) -> tuple[dict[str, str], bytes]:
        body = premium_body(f"u-bench-{run}-{i}", args.amount, region=region)
        return {**auth, "Idempotency-Key": f"bench-{run}-{i}"}, json_bytes(body)

    api = HttpPool(target.urls["payment"], max_connections=args.connections)
    meter.start()
    result = await open_loop(
        api, count=count, rate=rate, path="/v1/payments", make_request=make, timeout=args.timeout
    )
    accepted: dict[str, float] = {}
    for o in result.outcomes:
        if o.status == 202:
            accepted[json.loads(o.body)["id"]] = o.due
    deadline = time.perf_counter() + args.drain_timeout
    while time.perf_counter() < deadline and not all(pid in watcher.done for pid in accepted):
        await asyncio.sleep(0.1)
    completed = {pid: watcher.done[pid] for pid in accepted if pid in watcher.done}
    last = max((t for t, _, _ in completed.values()), default=time.perf_counter())
    drained_s = max(last - result.started, 1e-3)
    cpu = meter.stop()
    ours, _ = await probe.backends()
    wal = await probe.wal_bytes(lsn)
    statements_after = await probe.statement_snapshot()
    moved = None
    succeeded = sum(1 for _, kind, _ in completed.values() if kind == "PaymentSucceeded")
    for _ in range(50):  # the ledger answers the balance from its own commit
        after = await balance()
        if before is None or after is None:
            break
        moved = after - before
        if moved == succeeded * args.amount:
            break
        await asyncio.sleep(0.2)
    await api.close()
    await ledger.close()
    top = []
    for key, (calls, ms, query) in statements_after.items():
        c0, m0, _ = statements_before.get(key, (0, 0.0, ""))
        if calls > c0:
            top.append((calls - c0, ms - m0, query))
    top.sort(key=lambda t: -t[1])
    return Phase(
        rate, result, accepted, completed, drained_s, cpu, meter.own_seconds, wal, moved, top
    )


def run_peer_bare(rate: float, duration: float, args: argparse.Namespace) -> float | None:
    """The bare FastAPI + asyncpg endpoint (bench/peer_bare.py) at the same rate."""
    cmd = [sys.executable, "-m", "bench.peer_bare", "--rate", str(rate)]
    cmd += ["--duration", str(duration), "--amount", str(args.amount)]
    print(f"\n== peer: {' '.join(cmd[1:])}", flush=True)
    out = subprocess.run(  # noqa: S603
        cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True
    )
    print(out.stdout + out.stderr[-2000:], flush=True)
    m = re.search(r"peer_bare: accepted ([\d,.]+)/s", out.stdout)
    return float(m.group(1).replace(",", "")) if m else None


def run_backbone(events: int, rate: float) -> float | None:
    cmd = [sys.executable, "-m", "bench.backbone", "--events", str(events), "--rate", str(rate)]
    cmd += ["--txn-size", "1"]
    print(f"\n== peer: {' '.join(cmd[1:])}", flush=True)
    out = subprocess.run(  # noqa: S603
        cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True
    )
    print(out.stdout + out.stderr[-2000:], flush=True)
    m = re.search(r"end to end .*?: ([\d,]+) events/s", out.stdout)
    return float(m.group(1).replace(",", "")) if m else None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--self-contained", action="store_true", help="start own services")
    parser.add_argument("--rate", type=float, default=80.0, help="offered payments/s")
    parser.add_argument("--rates", default=None, help="several rates, one run each: 50,100")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per rate")
    parser.add_argument("--amount", type=int, default=38000, help="fen per premium")
    parser.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout, then retry")
    parser.add_argument("--connections", type=int, default=256, help="client connections")
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="PAYMENT_OVERLOAD_MAX_IN_FLIGHT for --self-contained (0: no shedding)",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=None,
        help="PAYMENT_OVERLOAD_MAX_WAIT_SECONDS for --self-contained (0: off)",
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=1,
        help="--self-contained: processes each of payment, risk and notify (one port each)",
    )
    parser.add_argument("--warmup", type=int, default=20, help="payments before measuring")
    parser.add_argument("--peers", action="store_true", help="then run the two peers")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep --self-contained's logs and stores"
    )
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")] if args.rates else [args.rate]

    phases: list[Phase] = []
    target: Target | None = None
    conn: asyncpg.Connection | None = None
    watcher: TerminalWatcher | None = None
    try:  # whatever fails, the services, databases and topics this run made go
        target = (
            await self_contained(
                args.max_in_flight,
                max_wait=args.max_wait,
                keep=args.keep_logs,
                instances=args.instances,
            )
            if args.self_contained
            else running_stack()
        )
        print(
            f"machine: {platform.machine()} {os.cpu_count()} cores, Python"
            f" {platform.python_version()}; services, Kafka, PostgreSQL and this load"
            " generator on this machine (other users' load counts in the figures)",
            flush=True,
        )
        conn = await asyncpg.connect(target.admin_dsn)
        probe = PgProbe(conn, list(target.databases.values()))
        if (why := await probe.enable_statements(target.admin_dsn)) is not None:
            print(why)
        watcher = TerminalWatcher(target.kafka, target.prefix + "payments.v1")
        await watcher.start()
        meter = CpuMeter()
        for name, pids in target.pids.items():
            group = f"{name} (gateway)" if name in ("bank", "sms-gateway") else name
            if len(pids) > 1:
                group += f" ({len(pids)} instances)"
            meter.add(group, [p for pid in pids for p in (pid, *children_of(pid))])
        # The broker of KAFKA_BOOTSTRAP (its first address), by the port it listens on.
        broker_port = int(target.kafka.split(",")[0].rsplit(":", 1)[1])
        meter.add("kafka (JVM, shared)", procs.port_owner_pids(broker_port))
        if args.warmup:  # consumers joined, connections open, caches warm: not measured
            await run_phase(target, watcher, probe, meter, 5.0, args.warmup / 5.0, args)
            print(f"(warm-up: {args.warmup} payments at 5/s, not counted)", flush=True)
        for rate in rates:
            phase = await run_phase(target, watcher, probe, meter, rate, args.duration, args)
            _print_phase(phase, args.amount)
            phases.append(phase)
    finally:
        if watcher is not None:
            with contextlib.suppress(Exception):
                await watcher.stop()
        if conn is not None:
            await conn.close()
        for stop in target.cleanup if target is not None else []:
            stop()
        if args.self_contained:  # its databases, topics and principals
            from tests.support import remove_what_was_made

            await remove_what_was_made()
    if args.peers:
        best = max(phases, key=lambda p: len(p.completed) / p.drained_s)
        ours = len(best.completed) / best.drained_s
        bare = run_peer_bare(best.rate, args.duration, args)
        backbone = run_backbone(int(best.rate * args.duration), best.rate)
        for name, peer in (("bare endpoint", bare), ("backbone", backbone)):
            if peer:
                print(
                    f"ratio: our {ours:,.1f} payments/s to the {name}'s {peer:,.1f}/s at the"
                    f" same offered rate: {ours / peer:.3f}"
                )
        print("(a peer that keeps up shows the offered rate: run higher rates for its ceiling)")


if __name__ == "__main__":
    fastloop.run(main())
