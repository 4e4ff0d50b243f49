"""The error object's ``type`` and ``retryable`` (issue 14): one classification, from
the status and the code, for every service and every error, 5xx included."""

from __future__ import annotations

import pytest

from shared.errors import (
    Conflict,
    DomainError,
    Forbidden,
    NotFound,
    RateLimited,
    Unauthorized,
    ValidationFailed,
    error_type,
    is_retryable,
)


@pytest.mark.parametrize(
    ("status", "code", "kind", "retryable"),
    [
        (400, "invalid_request", "invalid_request", False),
        (404, "not_found", "invalid_request", False),
        (409, "already_paid", "invalid_request", False),
        (422, "premium_amount_mismatch", "invalid_request", False),
        (413, "request_too_large", "invalid_request", False),
        (401, "unauthorized", "authentication", False),
        (403, "forbidden", "authentication", False),
        (422, "idempotency_key_reused", "idempotency", False),
        (409, "request_in_flight", "idempotency", True),
        (429, "rate_limited", "rate_limit", True),
        (429, "sms_rate_limited", "rate_limit", True),
        (500, "internal_error", "api", True),
        (503, "service_unavailable", "upstream", True),
        (503, "risk_unavailable", "upstream", True),
    ],
)
def test_each_status_and_code_has_one_kind(
    status: int, code: str, kind: str, retryable: bool
) -> None:
    assert error_type(status, code) == kind
    assert is_retryable(status, code) is retryable


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ValidationFailed("amount: must be positive", param="amount"), "invalid_request"),
        (NotFound("no payment 'pay_x'", param="payment_id"), "invalid_request"),
        (Conflict("paid already", code="already_paid"), "invalid_request"),
        (Unauthorized("send a key"), "authentication"),
        (Forbidden("wrong role"), "authentication"),
        (RateLimited("slow down"), "rate_limit"),
    ],
)
def test_a_domain_errors_body_names_its_kind(error: DomainError, kind: str) -> None:
    body = error.to_body()["error"]
    assert body["type"] == kind
    assert body["retryable"] is (kind == "rate_limit")
    assert body["code"] == error.code and body["message"] == error.message
