"""One root exception, with a domain branch and an infrastructure branch.

Domain errors carry a stable ``code``, a message that says what to do next, the
offending ``param`` when there is one, and the HTTP status an API maps them to.
"""

from __future__ import annotations

from typing import Any, Literal

ErrorType = Literal[
    "invalid_request", "authentication", "idempotency", "rate_limit", "api", "upstream"
]

# Codes whose kind the status alone does not tell.
_IDEMPOTENCY_CODES = frozenset({"idempotency_key_reused", "request_in_flight"})
_UPSTREAM_CODES = frozenset({"risk_unavailable", "bank_unavailable", "service_unavailable"})
# A 409 that clears by itself: the first request with this key is still being answered.
_RETRYABLE_CODES = frozenset({"request_in_flight"})


def error_type(status: int, code: str) -> ErrorType:
    """The error object's ``type`` (Stripe's convention): what kind of failure it is,
    from the status and the code, in one place for every service."""
    if code in _IDEMPOTENCY_CODES:
        return "idempotency"
    if code in _UPSTREAM_CODES or status in (502, 503, 504):
        return "upstream"
    if status in (401, 403):
        return "authentication"
    if status == 429:
        return "rate_limit"
    if status >= 500:
        return "api"
    return "invalid_request"


def is_retryable(status: int, code: str) -> bool:
    """Whether sending the same request again (same Idempotency-Key) may succeed
    without changing it: rate limits, requests still in flight and failures on our or
    an upstream's side. A 4xx about the request itself is not: fix it first."""
    return status == 429 or status >= 500 or code in _RETRYABLE_CODES


class YibaoError(Exception):
    """Root of every error Yibao raises on purpose."""


class DomainError(YibaoError):
    """A rule said no. Safe to show to the caller."""

    status: int = 422
    code: str = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.param = param
        self.status = status or self.status
        self.details = details or {}

    def to_body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "type": error_type(self.status, self.code),
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "retryable": is_retryable(self.status, self.code),
        }
        error.update(self.details)
        return {"error": error}


class ValidationFailed(DomainError):
    status = 400
    code = "invalid_request"


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class Unauthorized(DomainError):
    status = 401
    code = "unauthorized"


class Forbidden(DomainError):
    """A known key without the role the call needs."""

    status = 403
    code = "forbidden"


class RateLimited(DomainError):
    status = 429
    code = "rate_limited"


class LimitExceeded(DomainError):
    """A single-payment or daily limit would be exceeded."""

    code = "method_limit_exceeded"


class InsufficientFunds(DomainError):
    code = "insufficient_funds"


class InfrastructureError(YibaoError):
    """Something below the domain failed (broker, database, network); retryable."""


class UndecodableEvent(InfrastructureError):
    """A message that cannot become an Event: it goes to the dead-letter topic."""
