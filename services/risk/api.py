"""Risk's HTTP edge: the internal challenge endpoints (payment calls them) and the
public daily-cap read. Thin: parse, lock, call the domain, record, answer.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, FastAPI, Header
from pydantic import BaseModel, ConfigDict, Field

from services.risk import store
from services.risk.config import RiskSettings
from services.risk.domain import (
    Challenge,
    attempts_left,
    is_expired,
    resend,
    resend_wait,
    resets_at,
    verify,
)
from services.risk.handlers import record_challenge, risk_event, seal_code, step_up_required
from shared.crypto import Sealer
from shared.errors import Conflict, NotFound, RateLimited, Unauthorized
from shared.http import CallerKeys, add_healthz, install_error_handlers, install_request_logging
from shared.money import shanghai_day, utcnow
from shared.outbox import write_outbox

Clock = Callable[[], datetime]


class ChallengeVerify(BaseModel):
    model_config = ConfigDict(extra="forbid")
    payment_id: str = Field(min_length=1, max_length=255)
    code: str = Field(max_length=32)


class ChallengeResend(BaseModel):
    model_config = ConfigDict(extra="forbid")
    payment_id: str = Field(min_length=1, max_length=255)


class VerificationPublic(BaseModel):
    outcome: str
    attempts_left: int
    decline_code: str | None
    expires_at: datetime


class ResendPublic(BaseModel):
    payment_id: str
    challenge_id: str
    expires_at: datetime
    attempts_left: int
    next_resend_at: datetime


class DailyCapPublic(BaseModel):
    payer_id: str
    day: str
    cap: int
    used: int
    remaining: int
    resets_at: datetime
    wallet_cap: int
    wallet_used: int
    wallet_remaining: int


def create_app(settings: RiskSettings, pool: asyncpg.Pool, *, clock: Clock = utcnow) -> FastAPI:
    app = FastAPI(title="Yibao risk", version="1")
    install_error_handlers(app)
    install_request_logging(app)
    rules = settings.rules()
    topics = settings.topics
    hash_key = settings.hash_key_bytes()
    sealer = Sealer(settings.seal_key_bytes())
    token = settings.internal_token.get_secret_value().encode()
    callers = CallerKeys(settings.api_key_list())

    async def db_check() -> None:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")

    add_healthz(app, db_check)

    async def internal(x_internal_token: Annotated[str | None, Header()] = None) -> None:
        if x_internal_token is None or not hmac.compare_digest(x_internal_token.encode(), token):
            raise Unauthorized(
                "internal endpoint: send the service token as X-Internal-Token",
                param="X-Internal-Token",
            )

    async def caller(authorization: Annotated[str | None, Header()] = None) -> str:
        return callers.caller_of(authorization)

    async def locked_challenge(conn: asyncpg.Connection, payment_id: str) -> Challenge:
        """The payment's challenge, locked after its payer-day row (the lock order)."""
        reservation = await store.get_reservation(conn, payment_id)
        if reservation is not None:
            await store.lock_day(conn, reservation.payer_id, reservation.day)
        challenge = await store.challenge_of_payment(conn, payment_id, lock=True)
        if challenge is None:
            raise NotFound(
                f"no SMS challenge for payment {payment_id}; only payments that risk "
                "stepped up have one",
                param="payment_id",
            )
        return challenge

    @app.post(
        "/internal/v1/challenges/verify",
        dependencies=[Depends(internal)],
        include_in_schema=False,
    )
    async def verify_challenge(body: ChallengeVerify) -> VerificationPublic:
        async with pool.acquire() as conn, conn.transaction():
            challenge = await locked_challenge(conn, body.payment_id)
            result = verify(challenge, body.code, now=clock(), rules=rules, hash_key=hash_key)
            if result.changed:
                await record_challenge(
                    conn, topics, result.challenge, rules=rules, release=result.release
                )
        return VerificationPublic(
            outcome=result.outcome,
            attempts_left=result.attempts_left,
            decline_code=result.decline_code,
            expires_at=result.challenge.expires_at,
        )

    @app.post(
        "/internal/v1/challenges/resend",
        dependencies=[Depends(internal)],
        include_in_schema=False,
    )
    async def resend_code(body: ChallengeResend) -> ResendPublic:
        now = clock()
        async with pool.acquire() as conn, conn.transaction():
            challenge = await locked_challenge(conn, body.payment_id)
            if challenge.state != "pending" or is_expired(challenge, now):
                raise Conflict(
                    "this challenge is closed (passed, failed or expired); a new code cannot "
                    "be sent; start a new payment if it was declined",
                    code="challenge_closed",
                    param="payment_id",
                )
            wait = resend_wait(challenge, now, rules)
            if wait.total_seconds() > 0:
                seconds = math.ceil(wait.total_seconds())
                raise RateLimited(
                    f"a code was sent less than {int(rules.resend_interval.total_seconds())} s "
                    f"ago; ask again in {seconds} s",
                    code="resend_too_soon",
                    param="payment_id",
                    details={"retry_after": seconds},
                )
            fresh, code = resend(challenge, now=now, rules=rules, hash_key=hash_key)
            await store.save_challenge(conn, fresh)
            reservation = await store.get_reservation(conn, fresh.payment_id)
            assert reservation is not None  # a challenge always has its reservation
            usage = await store.read_day(conn, reservation.payer_id, reservation.day)
            payload = step_up_required(
                fresh, seal_code(sealer, code, fresh.challenge_id),
                day=reservation.day.isoformat(), cap=rules.daily_cap_fen, used=usage.used,
            )
            await write_outbox(
                conn, topics.risk,
                [risk_event(payload, payer_id=fresh.payer_id, payment_id=fresh.payment_id,
                            causation_id=None)],
            )
        return ResendPublic(
            payment_id=fresh.payment_id,
            challenge_id=fresh.challenge_id,
            expires_at=fresh.expires_at,
            attempts_left=attempts_left(fresh, rules),
            next_resend_at=fresh.last_sent_at + rules.resend_interval,
        )

    @app.get("/v1/payers/{payer_id}/daily-cap", dependencies=[Depends(caller)])
    async def daily_cap(payer_id: str) -> DailyCapPublic:
        day = shanghai_day(clock())
        async with pool.acquire() as conn:
            usage = await store.read_day(conn, payer_id, day)
        figures: dict[str, Any] = {
            "payer_id": payer_id,
            "day": day.isoformat(),
            "cap": rules.daily_cap_fen,
            "used": usage.used,
            "remaining": max(rules.daily_cap_fen - usage.used, 0),
            "resets_at": resets_at(day),
            "wallet_cap": rules.wallet_daily_cap_fen,
            "wallet_used": usage.wallet_used,
            "wallet_remaining": max(rules.wallet_daily_cap_fen - usage.wallet_used, 0),
        }
        return DailyCapPublic(**figures)

    return app
