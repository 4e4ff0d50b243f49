"""Running a service: one asyncio loop with the HTTP server and background workers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import asyncpg
import structlog
import uvicorn
from fastapi import FastAPI

from shared.db import create_pool, ensure_database, migrate
from shared.logging import configure_logging
from shared.settings import ServiceSettings

log = structlog.get_logger(__name__)

Worker = Callable[[], Awaitable[None]]


async def supervise(name: str, worker: Worker, *, restart_delay: float = 1.0) -> None:
    """Run ``worker`` forever; if it crashes, log and start it again after a pause."""
    while True:
        try:
            await worker()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker_crashed", worker=name)
            await asyncio.sleep(restart_delay)
        else:
            return


async def serve(
    app: FastAPI, *, host: str, port: int, workers: Sequence[tuple[str, Worker]] = ()
) -> None:
    """Serve ``app`` and run the workers beside it until the server is told to stop."""
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    tasks = [asyncio.create_task(supervise(n, w), name=n) for n, w in workers]
    try:
        await server.serve()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def prepare_service(settings: ServiceSettings, migrations: Path) -> asyncpg.Pool:
    """What every service does first: logging, its own database (created when it is
    derived from DATABASE_URL), its migrations, and a pool on it."""
    configure_logging(settings.service, level=settings.log_level, json=settings.log_json)
    if settings.dsn is None:
        await ensure_database(settings.admin_database_url, f"yibao_{settings.service}")
    await migrate(settings.database_url, migrations)
    return await create_pool(settings.database_url)
