"""The synchronous call to risk that checks a resident's SMS code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import httpx
import structlog

from shared.errors import DomainError

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

    async def verify(self, payment_id: str, code: str) -> VerifyAnswer | None:
        """risk's verdict on ``code``; None when risk has no challenge for the payment."""
        try:
            async with httpx.AsyncClient(
                base_url=self._base_url, timeout=self._timeout, transport=self._transport
            ) as client:
                response = await client.post(
                    "/internal/v1/challenges/verify",
                    json={"payment_id": payment_id, "code": code},
                    headers={"X-Internal-Token": self._token},
                )
        except httpx.HTTPError as exc:
            log.warning("risk_unreachable", payment_id=payment_id, error=type(exc).__name__)
            raise RiskUnavailable(
                "the SMS code could not be checked right now; try again in a moment"
            ) from exc
        if response.status_code == 404:
            return None
        try:
            return _parse(response)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("risk_bad_answer", payment_id=payment_id, error=str(exc))
            raise RiskUnavailable(
                "the SMS code could not be checked right now; try again in a moment"
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
