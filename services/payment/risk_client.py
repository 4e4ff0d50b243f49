"""The synchronous call to risk that checks a resident's SMS code."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

import httpx
import structlog

from shared.errors import Conflict, DomainError, RateLimited

log = structlog.get_logger(__name__)

Outcome = Literal["passed", "already_passed", "wrong_code", "exhausted", "expired", "closed"]
OUTCOMES: frozenset[str] = frozenset(get_args(Outcome))


class RiskUnavailable(DomainError):
    status = 503
    code = "risk_unavailable"


@dataclass(frozen=True)
class VerifyAnswer:
    outcome: Outcome
    attempts_left: int
    decline_code: str | None


@dataclass(frozen=True)
class ResendAnswer:
    challenge_id: str
    expires_at: datetime
    attempts_left: int
    next_resend_at: datetime


_UNAVAILABLE = "the SMS code could not be checked right now; try again in a moment"


class RiskClient:
    """``POST {risk_url}/internal/v1/challenges/verify`` with the internal token."""

    def __init__(
        self,
        base_url: str,
        internal_token: str,
        *,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._token = internal_token
        self._timeout = timeout
        self._transport = transport

    async def _post(self, path: str, body: dict[str, Any], payment_id: str) -> httpx.Response:
        try:
            async with httpx.AsyncClient(
                base_url=self._base_url, timeout=self._timeout, transport=self._transport
            ) as client:
                return await client.post(path, json=body, headers={"X-Internal-Token": self._token})
        except httpx.HTTPError as exc:
            log.warning("risk_unreachable", payment_id=payment_id, error=type(exc).__name__)
            raise RiskUnavailable(_UNAVAILABLE) from exc

    async def verify(self, payment_id: str, code: str) -> VerifyAnswer | None:
        """risk's verdict on ``code``; None when risk has no challenge for the payment."""
        response = await self._post(
            "/internal/v1/challenges/verify", {"payment_id": payment_id, "code": code}, payment_id
        )
        if response.status_code == 404:
            return None
        try:
            return _parse(response)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("risk_bad_answer", payment_id=payment_id, error=str(exc))
            raise RiskUnavailable(_UNAVAILABLE) from exc

    async def resend(self, payment_id: str) -> ResendAnswer | None:
        """Ask risk to send a new code; None when risk has no challenge for the payment.

        Raises ``RateLimited`` (too soon, or the phone had its codes for the hour; with
        ``retry_after``) or ``Conflict`` (the challenge is closed, or had all its
        resends) with risk's own message and code.
        """
        response = await self._post(
            "/internal/v1/challenges/resend", {"payment_id": payment_id}, payment_id
        )
        if response.status_code == 404:
            return None
        try:
            return _parse_resend(response)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("risk_bad_answer", payment_id=payment_id, error=str(exc))
            raise RiskUnavailable(
                "a new SMS code could not be requested right now; try again in a moment"
            ) from exc


def _parse(response: httpx.Response) -> VerifyAnswer:
    if response.status_code != 200:
        raise ValueError(f"status {response.status_code}")
    body = response.json()
    outcome = body["outcome"]
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}")
    return VerifyAnswer(
        outcome=outcome,
        attempts_left=int(body.get("attempts_left") or 0),
        decline_code=body.get("decline_code"),
    )


def _parse_resend(response: httpx.Response) -> ResendAnswer:
    body = response.json()
    if response.status_code == 429:  # resend_too_soon, or sms_rate_limited (the phone)
        error = body["error"]
        raise RateLimited(
            error["message"],
            code=str(error.get("code") or "resend_too_soon"),
            details={"retry_after": int(error.get("retry_after") or 60)},
        )
    if response.status_code == 409:  # the challenge is closed, or had all its resends
        error = body["error"]
        code = "resend_limit_reached" if error.get("code") == "resend_limit_reached" else None
        raise Conflict(error["message"], code=code or "verification_not_pending")
    if response.status_code != 200:
        raise ValueError(f"status {response.status_code}")
    return ResendAnswer(
        challenge_id=str(body["challenge_id"]),
        expires_at=datetime.fromisoformat(body["expires_at"]),
        attempts_left=int(body["attempts_left"]),
        next_resend_at=datetime.fromisoformat(body["next_resend_at"]),
    )
