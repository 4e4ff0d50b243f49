"""One root exception, with a domain branch and an infrastructure branch.

Domain errors carry a stable ``code``, a message that says what to do next, the
offending ``param`` when there is one, and the HTTP status an API maps them to.
"""

from __future__ import annotations

from typing import Any


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
        error: dict[str, Any] = {"code": self.code, "message": self.message, "param": self.param}
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
