"""Every service process runs its asyncio loop on uvloop (pinned in pyproject).

uvicorn's own ``loop="uvloop"`` applies only when uvicorn makes the loop
(``uvicorn.run``); our services start the loop themselves (``asyncio.run(main())``,
then ``Server.serve()`` inside it), so the choice is made here, at the process's start.
Falls back to the standard loop where uvloop is missing (it does not build on Windows).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

# uvicorn's HTTP/1.1 parser for every server of ours: httptools (pinned in pyproject)
# parses a request in C, several times cheaper than h11.
UVICORN_HTTP = "httptools"


def run(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)`` on a uvloop loop when uvloop is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - pinned, but optional off Linux/macOS
        asyncio.run(main)
        return
    uvloop.run(main)
