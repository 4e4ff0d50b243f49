"""Running a service: one asyncio loop with the HTTP server and background workers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import structlog
import uvicorn
from fastapi import FastAPI

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
