"""The payment API's dependencies, in one place: ``Annotated`` aliases that read what
``create_app`` put on ``request.app.state``.

All ``async def``: FastAPI runs a plain ``def`` dependency in a worker thread, a
thread hop per dependency per request (about a tenth of the payment process's CPU
under load, by py-spy, for a dictionary read)."""

from typing import Annotated

import asyncpg
from fastapi import Depends, Header, Request

from services.payment.allocations import Allocations
from services.payment.config import PaymentSettings
from services.payment.erasure import Erasures
from services.payment.intake import Intake
from services.payment.overload import Overloaded, OverloadGuard
from services.payment.payers import Payers
from services.payment.premiums import Premiums
from services.payment.records_sessions import RecordsSessions
from services.payment.refunds import Refunds
from services.payment.relatives import Relatives
from services.payment.verification import Verification
from shared.errors import ValidationFailed
from shared.http import Caller, require_role


async def _settings(request: Request) -> PaymentSettings:
    settings: PaymentSettings = request.app.state.settings
    return settings


async def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


async def _intake(request: Request) -> Intake:
    intake: Intake = request.app.state.intake
    return intake


async def _verification(request: Request) -> Verification:
    verification: Verification = request.app.state.verification
    return verification


async def _refunds(request: Request) -> Refunds:
    refunds: Refunds = request.app.state.refunds
    return refunds


async def _payers(request: Request) -> Payers:
    payers: Payers = request.app.state.payers
    return payers


async def _premiums(request: Request) -> Premiums:
    premiums: Premiums = request.app.state.premiums
    return premiums


async def _relatives(request: Request) -> Relatives:
    relatives: Relatives = request.app.state.relatives
    return relatives


async def _records_sessions(request: Request) -> RecordsSessions:
    sessions: RecordsSessions = request.app.state.records_sessions
    return sessions


async def _allocations(request: Request) -> Allocations:
    allocations: Allocations = request.app.state.allocations
    return allocations


async def _erasures(request: Request) -> Erasures:
    erasures: Erasures = request.app.state.erasures
    return erasures


async def _caller_id(caller: Annotated[Caller, Depends(require_role("caller"))]) -> str:
    return caller.id


async def _idempotency_key(
    value: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="1-255 printable characters; one key per request (payment, refund,"
            " allocation file)",
        ),
    ] = None,
) -> str:
    if value is None or not 1 <= len(value) <= 255 or not value.strip():
        raise ValidationFailed(
            "send an Idempotency-Key header of 1-255 characters, unique per payment",
            param="Idempotency-Key",
        )
    if not all(" " <= ch <= "~" for ch in value):
        raise ValidationFailed(
            "the Idempotency-Key holds printable ASCII characters only",
            param="Idempotency-Key",
        )
    return value


async def _not_overloaded(
    request: Request,
    caller: Annotated[str, Depends(_caller_id)],
    key: Annotated[str, Depends(_idempotency_key)],
) -> None:
    """503 overloaded while the pipeline is full, except for a request already answered:
    a caller retrying a request whose first answer it never got (a timeout) must learn
    it was accepted, not be told to wait (the intake then replays the stored answer)."""
    guard: OverloadGuard = request.app.state.overload
    try:
        await guard.check()
    except Overloaded:
        intake: Intake = request.app.state.intake
        if not await intake.answered(caller, key):
            raise


SettingsDep = Annotated[PaymentSettings, Depends(_settings)]
PoolDep = Annotated[asyncpg.Pool, Depends(_pool)]
CallerDep = Annotated[str, Depends(_caller_id)]  # the caller-role key's id
IdempotencyKeyDep = Annotated[str, Depends(_idempotency_key)]
IntakeDep = Annotated[Intake, Depends(_intake)]
NotOverloadedDep = Annotated[None, Depends(_not_overloaded)]  # 503 overloaded
VerificationDep = Annotated[Verification, Depends(_verification)]
RefundsDep = Annotated[Refunds, Depends(_refunds)]
AllocationsDep = Annotated[Allocations, Depends(_allocations)]
PayersDep = Annotated[Payers, Depends(_payers)]
PremiumsDep = Annotated[Premiums, Depends(_premiums)]
RelativesDep = Annotated[Relatives, Depends(_relatives)]
RecordsSessionsDep = Annotated[RecordsSessions, Depends(_records_sessions)]
BureauDep = Annotated[Caller, Depends(require_role("bureau"))]  # acts for caller.region
OperatorDep = Annotated[Caller, Depends(require_role("operator"))]
ErasuresDep = Annotated[Erasures, Depends(_erasures)]
