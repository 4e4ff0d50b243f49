"""The dependencies notify's routes take, read from ``app.state`` (filled by
``api.create_app``): settings, the pool and the authenticated caller."""

from typing import Annotated

import asyncpg
import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.notify.config import NotifySettings
from shared.http import CallerKeys

_bearer = HTTPBearer(auto_error=False, description="caller key")


def _settings(request: Request) -> NotifySettings:
    settings: NotifySettings = request.app.state.settings
    return settings


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


def _caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    keys: CallerKeys = request.app.state.caller_keys
    header = f"Bearer {credentials.credentials}" if credentials is not None else None
    caller = keys.caller_of(header)
    structlog.contextvars.bind_contextvars(caller=caller)
    return caller


SettingsDep = Annotated[NotifySettings, Depends(_settings)]
PoolDep = Annotated[asyncpg.Pool, Depends(_pool)]
CallerDep = Annotated[str, Depends(_caller)]
