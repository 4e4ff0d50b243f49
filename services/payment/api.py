"""The public payment API: thin routes over the rules, the store and the outbox.

No ``from __future__ import annotations`` here: FastAPI resolves the route signatures
at runtime, and they use dependency aliases local to ``create_app``.
"""

from typing import Annotated

import asyncpg
import structlog
from fastapi import APIRouter, Depends, FastAPI, Header
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.payment import domain, store
from services.payment.config import Settings
from services.payment.handlers import apply_command
from services.payment.intake import Intake
from services.payment.risk_client import RiskClient
from services.payment.schemas import PaymentCreate, PaymentPublic, VerificationCreate, public_view
from shared.errors import Conflict, DomainError, NotFound, ValidationFailed
from shared.events import DeclineCode
from shared.http import CallerKeys, add_healthz, install_error_handlers, install_request_logging

log = structlog.get_logger(__name__)

_ERROR = {"description": 'error object: {"error": {"code", "message", "param"}}'}


def create_app(
    settings: Settings, pool: asyncpg.Pool, *, risk: RiskClient | None = None
) -> FastAPI:
    app = FastAPI(
        title="Yibao payment API",
        version="1",
        description="Pay medical-insurance premiums and top up wallets (DESIGN.md).",
    )
    install_error_handlers(app)
    install_request_logging(app)

    async def db_check() -> None:
        await pool.fetchval("SELECT 1")

    add_healthz(app, db_check)

    keys = CallerKeys(settings.api_key_list())
    bearer = HTTPBearer(auto_error=False, description="caller key")
    intake = Intake(settings, pool)
    topics = settings.topics
    risk_client = risk or RiskClient(
        settings.risk_url,
        settings.internal_token.get_secret_value(),
        timeout=settings.risk_timeout_seconds,
    )

    async def caller_of(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> str:
        header = f"Bearer {credentials.credentials}" if credentials is not None else None
        caller = keys.caller_of(header)
        structlog.contextvars.bind_contextvars(caller=caller)
        return caller

    async def idempotency_key(
        value: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                description="1-255 printable characters; one key per payment attempt",
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

    Caller = Annotated[str, Depends(caller_of)]
    IdempotencyKey = Annotated[str, Depends(idempotency_key)]
    router = APIRouter(prefix="/v1", responses={401: _ERROR, 400: _ERROR})

    @router.post(
        "/payments",
        status_code=202,
        response_model=PaymentPublic,
        responses={409: _ERROR, 422: _ERROR},
        summary="Request a payment",
    )
    async def create_payment(caller: Caller, key: IdempotencyKey, body: PaymentCreate) -> Response:
        answer = await intake.submit(caller, key, body)
        headers = {"Idempotent-Replayed": "true"} if answer.replayed else None
        return Response(
            answer.body, status_code=answer.status, media_type="application/json", headers=headers
        )

    @router.get(
        "/payments/{payment_id}",
        response_model=PaymentPublic,
        responses={404: _ERROR},
        summary="Read a payment",
    )
    async def get_payment(payment_id: str, caller: Caller) -> JSONResponse:
        stored = await store.get_payment(pool, payment_id, caller=caller)
        if stored is None:
            raise _not_found(payment_id)
        return JSONResponse(public_view(stored).model_dump(mode="json"))

    @router.post(
        "/payments/{payment_id}/verification",
        response_model=PaymentPublic,
        responses={404: _ERROR, 409: _ERROR, 422: _ERROR, 503: _ERROR},
        summary="Submit the SMS code of a payment that requires verification",
    )
    async def verify_payment(
        payment_id: str, caller: Caller, body: VerificationCreate
    ) -> JSONResponse:
        stored = await store.get_payment(pool, payment_id, caller=caller)
        if stored is None:
            raise _not_found(payment_id)
        structlog.contextvars.bind_contextvars(payment_id=payment_id, correlation_id=payment_id)
        if stored.payment.status is not domain.Status.REQUIRES_VERIFICATION:
            raise _not_pending(stored.payment.public_status)
        answer = await risk_client.verify(payment_id, body.code)
        if answer is None:
            raise Conflict(
                "risk holds no SMS challenge for this payment; read the payment again",
                code="verification_not_pending",
            )
        log.info("verification_answer", outcome=answer.outcome, attempts_left=answer.attempts_left)
        if answer.outcome == "wrong_code":
            raise DomainError(
                f"the SMS code is wrong; {answer.attempts_left} attempt"
                f"{'' if answer.attempts_left == 1 else 's'} left; check the SMS and try again",
                code="verification_failed",
                param="code",
                status=422,
                details={"attempts_left": answer.attempts_left},
            )
        command: domain.Command
        if answer.outcome in ("passed", "already_passed"):
            command = domain.PassStepUp()
        else:
            decline: DeclineCode = "verification_failed"
            if answer.outcome == "expired" or answer.decline_code == "verification_expired":
                decline = "verification_expired"
            command = domain.FailStepUp(decline)
        async with pool.acquire() as conn, conn.transaction():
            updated = await apply_command(
                conn,
                payments_topic=topics.payments,
                payment_id=payment_id,
                command=command,
                causation_id=None,
            )
        if updated is None:  # pragma: no cover - the payment was read above
            raise _not_found(payment_id)
        if isinstance(command, domain.PassStepUp):
            return JSONResponse(public_view(updated).model_dump(mode="json"))
        code = updated.payment.decline_code or command.decline_code or "verification_failed"
        raise DomainError(
            domain.DECLINE_MESSAGES.get(code, "the SMS check failed; start a new payment"),
            code=code,
            param="code",
            status=422,
            details={"attempts_left": 0, "payment_status": updated.payment.public_status},
        )

    @router.post(
        "/payments/{payment_id}/verification/resend",
        response_model=PaymentPublic,
        responses={404: _ERROR, 409: _ERROR, 429: _ERROR, 503: _ERROR},
        summary="Send a new SMS code (at most one a minute; wrong tries still count)",
    )
    async def resend_code(payment_id: str, caller: Caller) -> JSONResponse:
        stored = await store.get_payment(pool, payment_id, caller=caller)
        if stored is None:
            raise _not_found(payment_id)
        structlog.contextvars.bind_contextvars(payment_id=payment_id, correlation_id=payment_id)
        if stored.payment.status is not domain.Status.REQUIRES_VERIFICATION:
            raise _not_pending(stored.payment.public_status)
        answer = await risk_client.resend(payment_id)
        if answer is None:
            raise Conflict(
                "risk holds no SMS challenge for this payment; read the payment again",
                code="verification_not_pending",
            )
        log.info("verification_code_resent", expires_at=answer.expires_at.isoformat())
        async with pool.acquire() as conn, conn.transaction():
            updated = await apply_command(
                conn,
                payments_topic=topics.payments,
                payment_id=payment_id,
                command=domain.RequireStepUp(answer.challenge_id, answer.expires_at),
                causation_id=None,
            )
        if updated is None:  # pragma: no cover - the payment was read above
            raise _not_found(payment_id)
        return JSONResponse(public_view(updated).model_dump(mode="json"))

    app.include_router(router)
    app.state.settings = settings
    app.state.pool = pool
    return app


def _not_found(payment_id: str) -> NotFound:
    return NotFound(f"no payment {payment_id!r} for this caller; check the id", param="id")


def _not_pending(status: str) -> Conflict:
    return Conflict(
        f"the payment is {status}; an SMS code is only accepted while it requires_verification",
        code="verification_not_pending",
    )
