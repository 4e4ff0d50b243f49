"""The ledger API's dependencies, in one place: ``Annotated`` aliases reading what
``create_app`` put on ``request.app.state``."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import Depends, Request

from services.ledger.config import LedgerSettings
from services.ledger.receipts.ratelimit import RateLimiter
from services.ledger.settlement.service import SettlementSetup
from services.ledger.signing import ReceiptSigner
from shared.http import Caller, require_role


def _settings(request: Request) -> LedgerSettings:
    settings: LedgerSettings = request.app.state.settings
    return settings


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


def _signer(request: Request) -> ReceiptSigner:
    signer: ReceiptSigner = request.app.state.signer
    return signer


def _limiter(request: Request) -> RateLimiter:
    limiter: RateLimiter = request.app.state.limiter
    return limiter


def _settlement(request: Request) -> SettlementSetup:
    setup: SettlementSetup = request.app.state.settlement
    return setup


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def take_public_token(request: Request) -> None:
    """A dependency of the public receipt routes: one token from the client's bucket,
    taken before the body is read, so bad input counts too."""
    _limiter(request).take(client_address(request))


SettingsDep = Annotated[LedgerSettings, Depends(_settings)]
PoolDep = Annotated[asyncpg.Pool, Depends(_pool)]
SignerDep = Annotated[ReceiptSigner, Depends(_signer)]
LimiterDep = Annotated[RateLimiter, Depends(_limiter)]
SettlementDep = Annotated[SettlementSetup, Depends(_settlement)]
CallerDep = Annotated[Caller, Depends(require_role("caller"))]
OperatorDep = Annotated[Caller, Depends(require_role("operator"))]
# Settlement reads: an operator, or a bureau for its own region (``caller.region``).
SettlementReaderDep = Annotated[Caller, Depends(require_role("operator", "bureau"))]
PUBLIC = [Depends(take_public_token)]  # ``dependencies=`` of the public routes
