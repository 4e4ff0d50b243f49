"""asyncpg plumbing: pools, databases and a small migration runner."""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import structlog

log = structlog.get_logger(__name__)

SHARED_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x59_42_41_4F_4D_49_47  # "YBAOMIG": one migrator at a time per database

# Errors that say "try again" about the database, never "this work is wrong": the
# connection or server is gone or busy (class 08, 53, 57P0x, interface errors, pool
# timeouts, sockets), or the transaction lost a race (class 40: deadlock_detected,
# serialization_failure; 55P03 lock_not_available; 57014 a statement or lock timeout).
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.InterfaceError,  # ConnectionDoesNotExistError, "pool is closing"
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InsufficientResourcesError,  # too_many_connections, disk_full
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TransactionRollbackError,  # deadlock, serialization failure
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.QueryCanceledError,  # statement_timeout, lock_timeout
    ConnectionError,
    TimeoutError,  # a pool acquire or a command that timed out
    socket.gaierror,
)


def is_transient_db_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is a database outage or lost race:
    the same work retried later may succeed, so it is never the work's fault."""
    seen: BaseException | None = exc
    for _ in range(5):  # a handler may wrap the driver's error: follow ``raise … from``
        if seen is None:
            return False
        # A bare OSError is how asyncpg reports every address refusing a connection;
        # its subclasses (FileNotFoundError, …) are bugs, not outages.
        if isinstance(seen, TRANSIENT_DB_ERRORS) or type(seen) is OSError:
            return True
        seen = seen.__cause__
    return False


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections decode json/jsonb to Python objects."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, command_timeout=30
    )
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


def with_database(dsn: str, name: str) -> str:
    """The same server DSN pointing at database ``name``."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def ensure_database(admin_dsn: str, name: str) -> str:
    """Create database ``name`` if missing (needs a superuser DSN); return its DSN."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            # Another process may create it between the look and the create.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_dsn, name)


async def migrate(dsn: str, service_dir: Path | None) -> list[str]:
    """Apply the shared migrations, then ``service_dir``'s, each once and in name order.

    Each file runs in its own transaction and is recorded in ``schema_migrations``;
    an advisory lock keeps two starting instances from racing.
    """
    sources = [("shared", SHARED_MIGRATIONS)]
    if service_dir is not None:
        sources.append(("service", service_dir))
    applied: list[str] = []
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for label, folder in sources:
            for path in sorted(folder.glob("*.sql")):
                name = f"{label}/{path.name}"
                if name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
                applied.append(name)
                log.info("migration_applied", migration=name)
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    finally:
        await conn.close()
    return applied
