"""Risk's HTTP edge: ``create_app`` builds the app; the routes live on ``router``.

The internal challenge endpoints (payment calls them with ``X-Internal-Token``) and
the public daily-cap read; each route is one call into ``challenges``. No
``from __future__ import annotations`` here: FastAPI resolves the signatures at runtime.
"""

import asyncpg
from fastapi import APIRouter, Depends, FastAPI

from services.risk.challenges import Challenges, Clock
from services.risk.config import RiskSettings
from services.risk.deps import CallerDep, ChallengesDep, internal_token
from services.risk.schemas import (
    ChallengeResendCreate,
    ChallengeVerifyCreate,
    DailyCapPublic,
    ResendPublic,
    VerificationPublic,
)
from shared.crypto import KeyPurpose
from shared.http import (
    CallerKeys,
    add_healthz,
    document_api,
    install_error_handlers,
    install_request_logging,
)
from shared.metrics import add_metrics, outbox_backlog
from shared.money import utcnow

router = APIRouter()
internal = APIRouter(
    prefix="/internal/v1", dependencies=[Depends(internal_token)], include_in_schema=False
)


@internal.post("/challenges/verify")
async def verify_challenge(
    body: ChallengeVerifyCreate, challenges: ChallengesDep
) -> VerificationPublic:
    return await challenges.verify_code(body.payment_id, body.code)


@internal.post("/challenges/resend")
async def resend_code(body: ChallengeResendCreate, challenges: ChallengesDep) -> ResendPublic:
    return await challenges.resend_code(body.payment_id)


@router.get("/v1/payers/{payer_id}/daily-cap")
async def daily_cap(payer_id: str, caller: CallerDep, challenges: ChallengesDep) -> DailyCapPublic:
    return await challenges.daily_cap(caller, payer_id)


def create_app(settings: RiskSettings, pool: asyncpg.Pool, *, clock: Clock = utcnow) -> FastAPI:
    """Risk's HTTP app over ``pool``; ``clock`` is replaceable for tests."""
    app = FastAPI(title="Yibao risk", version="1", docs_url=None, redoc_url=None)
    install_error_handlers(app)
    install_request_logging(app)

    async def ping() -> None:
        await pool.fetchval("SELECT 1")

    add_healthz(app, ping)
    app.state.settings = settings
    app.state.pool = pool
    app.state.caller_keys = CallerKeys.from_settings(settings)
    app.state.challenges = Challenges(
        pool,
        rules=settings.rules(),
        topics=settings.topics,
        sealer=settings.sealer(),
        code_hash_key=settings.hash_key_for(KeyPurpose.CODE_HASH),
        phone_hash_key=settings.hash_key_for(KeyPurpose.PHONE_HASH),
        clock=clock,
    )
    app.include_router(internal)
    app.include_router(router)
    add_metrics(app, "risk", samplers=[("outbox", outbox_backlog(pool))])
    document_api(app)
    return app
