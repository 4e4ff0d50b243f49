"""The resident's SMS code: checked by risk (synchronously), applied to the payment.

``Verification.verify`` and ``.resend`` are what the verification routes call. The
payment moves only through ``payments.apply_command``, in one transaction with its
events; risk's own record of the challenge is the source of truth for attempts.
"""

from __future__ import annotations

import asyncpg
import structlog

from services.payment import domain
from services.payment.payments import apply_command, not_found, read_payment
from services.payment.risk_client import RiskClient
from services.payment.schemas import PaymentPublic, public_view
from services.payment.store import StoredPayment
from shared.errors import Conflict, DomainError
from shared.events import DeclineCode
from shared.topics import TopicNames

log = structlog.get_logger(__name__)


def _not_pending(status: str) -> Conflict:
    return Conflict(
        f"the payment is {status}; an SMS code is only accepted while it requires_verification",
        code="verification_not_pending",
    )


def _no_challenge() -> Conflict:
    return Conflict(
        "risk holds no SMS challenge for this payment; read the payment again",
        code="verification_not_pending",
    )


def _wrong_code(attempts_left: int) -> DomainError:
    return DomainError(
        f"the SMS code is wrong; {attempts_left} attempt"
        f"{'' if attempts_left == 1 else 's'} left; check the SMS and try again",
        code="verification_failed",
        param="code",
        status=422,
        details={"attempts_left": attempts_left},
    )


class Verification:
    def __init__(self, pool: asyncpg.Pool, risk: RiskClient, topics: TopicNames) -> None:
        self._pool = pool
        self._risk = risk
        self._topics = topics

    async def _pending(self, caller: str, payment_id: str) -> StoredPayment:
        stored = await read_payment(self._pool, payment_id, caller=caller)
        structlog.contextvars.bind_contextvars(payment_id=payment_id, correlation_id=payment_id)
        if stored.payment.status is not domain.Status.REQUIRES_VERIFICATION:
            raise _not_pending(stored.payment.public_status)
        return stored

    async def _apply(self, payment_id: str, command: domain.Command) -> StoredPayment:
        async with self._pool.acquire() as conn, conn.transaction():
            updated = await apply_command(
                conn,
                payments_topic=self._topics.payments,
                payment_id=payment_id,
                command=command,
                causation_id=None,
            )
        if updated is None:  # pragma: no cover - the payment was read just before
            raise not_found(payment_id)
        return updated

    async def verify(self, caller: str, payment_id: str, code: str) -> PaymentPublic:
        """Check ``code`` with risk; the authorized payment, or the error to answer."""
        await self._pending(caller, payment_id)
        answer = await self._risk.verify(payment_id, code)
        if answer is None:
            raise _no_challenge()
        log.info("verification_answer", outcome=answer.outcome, attempts_left=answer.attempts_left)
        if answer.outcome == "wrong_code":
            raise _wrong_code(answer.attempts_left)
        if answer.outcome in ("passed", "already_passed"):
            return public_view(await self._apply(payment_id, domain.PassStepUp()))
        decline: DeclineCode = "verification_failed"
        if answer.outcome == "expired" or answer.decline_code == "verification_expired":
            decline = "verification_expired"
        updated = await self._apply(payment_id, domain.FailStepUp(decline))
        code_ = updated.payment.decline_code or decline
        raise DomainError(
            domain.DECLINE_MESSAGES.get(code_, "the SMS check failed; start a new payment"),
            code=code_,
            param="code",
            status=422,
            details={"attempts_left": 0, "payment_status": updated.payment.public_status},
        )

    async def resend(self, caller: str, payment_id: str) -> PaymentPublic:
        """Ask risk for a new code (rate-limited there); the payment with its new expiry."""
        await self._pending(caller, payment_id)
        answer = await self._risk.resend(payment_id)
        if answer is None:
            raise _no_challenge()
        log.info("verification_code_resent", expires_at=answer.expires_at.isoformat())
        command = domain.RequireStepUp(answer.challenge_id, answer.expires_at)
        return public_view(await self._apply(payment_id, command))
