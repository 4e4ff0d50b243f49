"""Webhook rules (issue 14): Standard Webhooks signatures (the spec's test vector),
the retry schedule, the ordering rule, endpoint URLs and which changes are events."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.payment.webhook_domain import (
    Pending,
    deliverable,
    new_secret,
    payment_event,
    refund_event,
    retry_delay,
    sign,
    url_problem,
    wants,
)

# The test vector of the Standard Webhooks specification (standard-webhooks/spec).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = '{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signing_matches_the_spec_test_vector() -> None:
    at = datetime.fromtimestamp(SPEC_TIMESTAMP, UTC)
    assert sign([SPEC_SECRET], SPEC_ID, at, SPEC_BODY) == SPEC_SIGNATURE


def test_two_secrets_sign_side_by_side_and_either_verifies() -> None:
    old, new = new_secret(), new_secret()
    assert old.startswith("whsec_") and old != new
    now = datetime.now(UTC)
    header = sign([new, old], "msg_1", now, '{"a":1}')
    assert len(header.split(" ")) == 2
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": header,
    }
    for secret in (old, new):
        assert Webhook(secret).verify('{"a":1}', headers) == {"a": 1}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify('{"a":1}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify('{"a":2}', headers)  # tampered body


def test_the_retry_schedule_grows_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    delays = [retry_delay(n, base=5, cap=3600, rng=rng) for n in range(1, 16)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(3600, 5 * 2 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= 3600
    # Two endpoints failing together do not retry in lockstep.
    assert retry_delay(5, base=5, cap=3600) != retry_delay(5, base=5, cap=3600)
    # Retrying goes on past 24 h: at most an hour apart, never given up by the schedule.
    assert sum(retry_delay(n, base=5, cap=3600, rng=rng) for n in range(1, 60)) > 86400


def test_the_ordering_rule_holds_back_later_events_of_a_payment() -> None:
    pending = [
        Pending("d3", "we_a", "pay_1", 3),
        Pending("d1", "we_a", "pay_1", 1),
        Pending("d2", "we_a", "pay_2", 2),
        Pending("d4", "we_b", "pay_1", 3),
    ]
    assert {p.id for p in deliverable(pending)} == {"d1", "d2", "d4"}


def test_which_changes_are_events() -> None:
    assert payment_event(None, "processing") == "payment.processing"
    assert payment_event("processing", "processing") is None  # requested -> authorized
    assert payment_event("processing", "requires_verification") == ("payment.requires_verification")
    assert payment_event("requires_verification", "succeeded") == "payment.succeeded"
    assert refund_event("processing", "succeeded") == "refund.succeeded"
    assert refund_event("processing", "failed") == "refund.failed"
    assert refund_event("processing", "processing") is None
    assert wants(["*"], "refund.failed")
    assert wants(["payment.succeeded"], "payment.succeeded")
    assert not wants(["payment.succeeded"], "payment.failed")


@pytest.mark.parametrize(
    ("url", "private_ok", "public_ok"),
    [
        ("https://shop.example/hooks", True, True),
        ("http://shop.example/hooks", True, False),
        ("http://127.0.0.1:8011/hooks/a", True, False),
        ("https://10.1.2.3/hooks", True, False),
        ("https://[::1]/hooks", True, False),
        ("https://localhost/hooks", True, False),
        ("https://169.254.169.254/latest", True, False),
        ("https://8.8.8.8/hooks", True, True),
        ("ftp://shop.example/", False, False),
        ("https://user:pw@shop.example/", False, False),
        ("not a url", False, False),
        ("https://shop.example:99999/", False, False),
    ],
)
def test_endpoint_urls(url: str, private_ok: bool, public_ok: bool) -> None:
    assert (url_problem(url, allow_private=True) is None) is private_ok
    assert (url_problem(url, allow_private=False) is None) is public_ok
