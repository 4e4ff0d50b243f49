"""Payments stuck in a non-final state (issue 11): what the sweeper does to each."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.payment import domain
from services.payment.domain import Status, StuckPolicy, last_event, stuck_action
from shared.events import (
    BankConfirmation,
    BeneficiaryRef,
    PaymentAuthorized,
    PaymentDetails,
    PaymentRequested,
    Purpose,
)

NOW = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
POLICY = StuckPolicy(after=timedelta(minutes=10), verification_grace=timedelta(minutes=2))


def payment(status: Status, **changes: Any) -> domain.Payment:
    details = PaymentDetails(
        payment_id="pay_1",
        payer_id="u-1",
        payer_phone_masked="138****8000",
        payer_phone_sealed="v1.sealed",
        beneficiary=BeneficiaryRef(
            id_number_masked="110105********002X", id_number_hash="h", name="张三", relation="self"
        ),
        purpose=Purpose(type="premium", scheme="urban_rural_resident", region="110000"),
        amount=38000,
        method="bank_card",
        payee_id="bureau:110000",
        payee_name="北京市医疗保障局",
        requested_at=NOW,
    )
    return dataclasses.replace(domain.Payment(details=details), status=status, **changes)


def action(p: domain.Payment, quiet: timedelta, nudged: timedelta | None = None) -> str | None:
    return stuck_action(
        p,
        updated_at=NOW - quiet,
        nudged_at=None if nudged is None else NOW - nudged,
        now=NOW,
        policy=POLICY,
    )


@pytest.mark.parametrize("status", [Status.REQUESTED, Status.AUTHORIZED])
def test_quiet_requested_or_authorized_is_published_again_once_per_period(status: Status) -> None:
    p = payment(status)
    assert action(p, timedelta(minutes=9)) is None
    assert action(p, timedelta(minutes=10)) == "republish"
    assert action(p, timedelta(hours=3), nudged=timedelta(minutes=5)) is None
    assert action(p, timedelta(hours=3), nudged=timedelta(minutes=10)) == "republish"


@pytest.mark.parametrize(
    "status", [Status.AWAITING_BANK, Status.SUCCEEDED, Status.DECLINED, Status.FAILED]
)
def test_the_bank_workers_and_final_payments_are_left_alone(status: Status) -> None:
    assert action(payment(status), timedelta(days=3)) is None


def test_a_code_past_its_expiry_and_grace_declines_the_payment() -> None:
    def waiting(expired_ago: timedelta) -> domain.Payment:
        return payment(Status.REQUIRES_VERIFICATION, verification_expires_at=NOW - expired_ago)

    assert action(waiting(timedelta(minutes=1)), timedelta(hours=1)) is None  # risk's turn
    assert action(waiting(timedelta(minutes=2)), timedelta(0)) == "expire_verification"
    no_expiry = payment(Status.REQUIRES_VERIFICATION)
    assert action(no_expiry, timedelta(days=1)) is None


def test_the_event_published_again_is_the_one_that_was_lost() -> None:
    requested = last_event(payment(Status.REQUESTED))
    assert isinstance(requested, PaymentRequested)
    confirmation = BankConfirmation(reference="pay_1", confirmed_at=NOW)
    authorized = last_event(payment(Status.AUTHORIZED, stepped_up=True, bank_debit=confirmation))
    assert isinstance(authorized, PaymentAuthorized)
    assert authorized.stepped_up and authorized.bank_debit == confirmation
    with pytest.raises(ValueError, match="no event"):
        last_event(payment(Status.AWAITING_BANK))
