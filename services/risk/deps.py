"""Risk's dependencies, in one place: ``Annotated`` aliases that read what
``create_app`` put on ``request.app.state``."""

import hmac
from typing import Annotated

import asyncpg
from fastapi import Depends, Header, Request

from services.risk.challenges import Challenges
from services.risk.config import RiskSettings
from shared.errors import Unauthorized
from shared.http import Caller, require_role


def _settings(request: Request) -> RiskSettings:
    settings: RiskSettings = request.app.state.settings
    return settings


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


def _challenges(request: Request) -> Challenges:
    challenges: Challenges = request.app.state.challenges
    return challenges


async def _caller_id(caller: Annotated[Caller, Depends(require_role("caller"))]) -> str:
    return caller.id


async def internal_token(
    settings: Annotated[RiskSettings, Depends(_settings)],
    x_internal_token: Annotated[str | None, Header()] = None,
) -> None:
    """Service-to-service calls (payment → risk) carry ``X-Internal-Token``."""
    token = settings.internal_token.get_secret_value().encode()
    if x_internal_token is None or not hmac.compare_digest(x_internal_token.encode(), token):
        raise Unauthorized(
            "internal endpoint: send the service token as X-Internal-Token",
            param="X-Internal-Token",
        )


SettingsDep = Annotated[RiskSettings, Depends(_settings)]
PoolDep = Annotated[asyncpg.Pool, Depends(_pool)]
CallerDep = Annotated[str, Depends(_caller_id)]  # the caller-role key's id
ChallengesDep = Annotated[Challenges, Depends(_challenges)]
