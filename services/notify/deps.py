"""notify's dependencies, in one place: ``Annotated`` aliases that read what
``create_app`` put on ``request.app.state``."""

from typing import Annotated

import asyncpg
from fastapi import Depends, Request

from services.notify.config import NotifySettings
from shared.http import Caller, require_role


def _settings(request: Request) -> NotifySettings:
    settings: NotifySettings = request.app.state.settings
    return settings


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


async def _caller_id(caller: Annotated[Caller, Depends(require_role("caller"))]) -> str:
    return caller.id


SettingsDep = Annotated[NotifySettings, Depends(_settings)]
PoolDep = Annotated[asyncpg.Pool, Depends(_pool)]
CallerDep = Annotated[str, Depends(_caller_id)]  # the caller-role key's id
