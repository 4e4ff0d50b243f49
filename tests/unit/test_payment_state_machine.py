"""The payment state machine: every state under every stimulus, and its invariants."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.payment import domain
from services.payment.domain import Status
from shared.events import (
    BankConfirmation,
    BeneficiaryRef,
    PaymentAuthorized,
    PaymentDeclined,
    PaymentDetails,
    PaymentFailed,
    PaymentRequested,
    PaymentSucceeded,
    PaymentVerificationRequired,
    Purpose,
    ReceiptRef,
)

NOW = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
RECEIPT = ReceiptRef(code="11012026", number="0000000001", check_code="a1b2c3")


def details(purpose_type: str = "premium", method: str = "medical_account") -> PaymentDetails:
    return PaymentDetails(
        payment_id="pay_1",
        payer_id="u-1",
        payer_phone_masked="138****8000",
        payer_phone_sealed="v1.sealed",
        beneficiary=BeneficiaryRef(
            id_number_masked="110105********002X",
            id_number_hash="h",
            name="张三",
            relation="self",
        ),
        purpose=Purpose.model_validate(
            {
                "type": purpose_type,
                "scheme": "urban_rural_resident",
                "region": "110000",
                "period": "2027",
            }
        ),
        amount=38000,
        method=method,
        payee_id="bureau:110000",
        payee_name="北京市医疗保障局",
        requested_at=NOW,
    )


def in_state(status: Status) -> domain.Payment:
    payment = domain.Payment(details=details(), status=status)
    if status is Status.REQUIRES_VERIFICATION:
        payment = dataclasses.replace(
            payment, challenge_id="ch_1", verification_expires_at=NOW + timedelta(minutes=5)
        )
    return payment


COMMANDS: dict[str, domain.Command] = {
    "approve": domain.ApproveByRisk(),
    "decline": domain.DeclineByRisk("daily_limit_exceeded", "daily cap reached"),
    "step_up": domain.RequireStepUp("ch_1", NOW + timedelta(minutes=5)),
    "pass": domain.PassStepUp(),
    "fail": domain.FailStepUp("verification_failed"),
    "post": domain.RecordPosting(7, RECEIPT),
    "reject": domain.RejectPosting("insufficient_funds", "wallet balance too low"),
    "bank_yes": domain.ConfirmDebit(BankConfirmation(reference="pay_1", confirmed_at=NOW)),
    "bank_no": domain.FailDebit("bank_declined", "the bank declined"),
}

R, V, A = Status.REQUESTED, Status.REQUIRES_VERIFICATION, Status.AUTHORIZED
B = Status.AWAITING_BANK
S, D, F = Status.SUCCEEDED, Status.DECLINED, Status.FAILED

# (state, stimulus) -> (new state, event type) for every transition that applies;
# every other pair must be a no-op.
TRANSITIONS: dict[tuple[Status, str], tuple[Status, type]] = {
    (R, "approve"): (A, PaymentAuthorized),
    (R, "decline"): (D, PaymentDeclined),
    (R, "step_up"): (V, PaymentVerificationRequired),
    (V, "pass"): (A, PaymentAuthorized),
    (V, "fail"): (D, PaymentDeclined),
    (A, "post"): (S, PaymentSucceeded),
    (A, "reject"): (F, PaymentFailed),
    (B, "bank_yes"): (A, PaymentAuthorized),
    (B, "bank_no"): (F, PaymentFailed),
}


@pytest.mark.parametrize("status", list(Status))
@pytest.mark.parametrize("stimulus", list(COMMANDS))
def test_every_state_under_every_stimulus(status: Status, stimulus: str) -> None:
    before = in_state(status)
    after, events = domain.decide(before, COMMANDS[stimulus])
    expected = TRANSITIONS.get((status, stimulus))
    if expected is None:
        assert after == before
        assert events == []
        return
    new_status, event_type = expected
    assert after.status is new_status
    assert [type(e) for e in events] == [event_type]
    for event in events:
        assert getattr(event, "payment_id", None) in (None, "pay_1")


def test_request_emits_payment_requested() -> None:
    payment, events = domain.request_payment(details())
    assert payment.status is Status.REQUESTED
    assert payment.public_status == "processing"
    assert events == [PaymentRequested(payment=details())]


def test_step_up_records_challenge_and_expiry() -> None:
    expires = NOW + timedelta(minutes=5)
    after, events = domain.decide(in_state(R), domain.RequireStepUp("ch_9", expires))
    assert (after.challenge_id, after.verification_expires_at) == ("ch_9", expires)
    assert after.public_status == "requires_verification"
    event = events[0]
    assert isinstance(event, PaymentVerificationRequired)
    assert event.expires_at == expires


@pytest.mark.parametrize("challenge_id", ["ch_1", "ch_2"])
def test_a_resent_code_moves_the_expiry(challenge_id: str) -> None:
    later = NOW + timedelta(minutes=9)
    after, events = domain.decide(in_state(V), domain.RequireStepUp(challenge_id, later))
    assert after.verification_expires_at == later
    assert after.challenge_id == challenge_id
    assert [type(e) for e in events] == [PaymentVerificationRequired]
    # An older copy arriving afterwards changes nothing.
    stale, none = domain.decide(after, domain.RequireStepUp("ch_1", NOW + timedelta(minutes=5)))
    assert (stale, none) == (after, [])


def test_authorization_remembers_step_up() -> None:
    direct, [e1] = domain.decide(in_state(R), domain.ApproveByRisk())
    stepped, [e2] = domain.decide(in_state(V), domain.PassStepUp())
    assert isinstance(e1, PaymentAuthorized)
    assert e1.stepped_up is False
    assert isinstance(e2, PaymentAuthorized)
    assert e2.stepped_up is True
    assert e2.payment == details()
    assert stepped.verification_expires_at is None
    assert direct.public_status == stepped.public_status == "processing"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("verification_failed", "verification_failed"),
        ("verification_expired", "verification_expired"),
        (None, "verification_failed"),
    ],
)
def test_failed_step_up_declines_with_its_code(
    code: domain.DeclineCode | None, expected: str
) -> None:
    after, [event] = domain.decide(in_state(V), domain.FailStepUp(code))
    assert after.decline_code == expected
    assert isinstance(event, PaymentDeclined)
    assert event.decline_code == expected
    assert event.message == after.decline_message


def test_posting_carries_receipt_and_seq() -> None:
    after, [event] = domain.decide(in_state(A), domain.RecordPosting(42, RECEIPT))
    assert (after.receipt, after.journal_seq) == (RECEIPT, 42)
    assert isinstance(event, PaymentSucceeded)
    assert (event.journal_seq, event.receipt) == (42, RECEIPT)
    assert event.purpose_type == "premium"
    assert event.payer_phone_sealed == "v1.sealed"


def test_top_up_succeeds_without_receipt() -> None:
    payment = domain.Payment(details=details("wallet_topup"), status=A)
    after, [event] = domain.decide(payment, domain.RecordPosting(3, None))
    assert after.status is S
    assert isinstance(event, PaymentSucceeded)
    assert event.receipt is None


def test_rejected_posting_fails_with_reason() -> None:
    after, [event] = domain.decide(in_state(A), COMMANDS["reject"])
    assert (after.status, after.decline_code) == (F, "insufficient_funds")
    assert after.public_status == "failed"
    assert isinstance(event, PaymentFailed)
    assert event.message == "wallet balance too low"


@given(st.lists(st.sampled_from(list(COMMANDS)), max_size=12))
def test_any_order_of_stimuli_is_safe(sequence: list[str]) -> None:
    """No stimulus order raises; a final state never changes; at most one outcome event."""
    payment, _ = domain.request_payment(details())
    emitted: list[object] = []
    for name in sequence:
        before = payment
        payment, events = domain.decide(payment, COMMANDS[name])
        if before.status in domain.FINAL_STATES:
            assert payment == before
            assert events == []
        emitted.extend(events)
    outcomes = [
        e for e in emitted if isinstance(e, PaymentSucceeded | PaymentDeclined | PaymentFailed)
    ]
    assert len(outcomes) <= 1
    assert sum(isinstance(e, PaymentAuthorized) for e in emitted) <= 1
    if any(isinstance(e, PaymentSucceeded) for e in emitted):
        assert any(isinstance(e, PaymentAuthorized) for e in emitted)


@given(st.lists(st.sampled_from(list(COMMANDS)), max_size=10))
def test_repeating_each_stimulus_changes_nothing(sequence: list[str]) -> None:
    """Applying a stimulus twice in a row equals applying it once (redelivery)."""
    payment, _ = domain.request_payment(details())
    for name in sequence:
        payment, _ = domain.decide(payment, COMMANDS[name])
        again, events = domain.decide(payment, COMMANDS[name])
        assert again == payment
        assert events == []


# ---------------------------------------------------------------------------
# Bank card: risk's yes waits for the bank; the bank's answer authorizes or fails it
# ---------------------------------------------------------------------------


def bank_card_payment(status: Status = Status.REQUESTED) -> domain.Payment:
    return domain.Payment(details=details(method="bank_card"), status=status)


@pytest.mark.parametrize("command", [domain.ApproveByRisk(), domain.PassStepUp()])
def test_a_bank_card_waits_for_the_bank_with_no_event(command: domain.Command) -> None:
    start = Status.REQUESTED if isinstance(command, domain.ApproveByRisk) else V
    before = bank_card_payment(start)
    after, events = domain.decide(before, command)
    assert after.status is B
    assert after.public_status == "processing"
    assert events == []
    assert domain.starts_bank_debit(before, after)
    assert not domain.starts_bank_debit(after, after)


def test_the_banks_yes_authorizes_with_its_confirmation_and_funds_follow() -> None:
    confirmation = BankConfirmation(reference="pay_1", confirmed_at=NOW)
    waiting = bank_card_payment(B)
    assert domain.funds(waiting, domain.BankPolicy()) == (None, None)
    after, [event] = domain.decide(waiting, domain.ConfirmDebit(confirmation))
    assert after.status is A
    assert isinstance(event, PaymentAuthorized)
    assert event.bank_debit == confirmation
    assert domain.funds(after, domain.BankPolicy()) == (NOW + timedelta(hours=2), None)
    posted = NOW + timedelta(seconds=3)
    done, _ = domain.decide(after, domain.RecordPosting(9, RECEIPT, posted))
    assert domain.funds(done, domain.BankPolicy()) == (NOW + timedelta(hours=2), posted)
    again, none = domain.decide(after, domain.ConfirmDebit(confirmation))
    assert (again, none) == (after, [])


@pytest.mark.parametrize("code", ["bank_declined", "bank_unavailable"])
def test_the_banks_no_or_silence_fails_the_payment(code: str) -> None:
    after, [event] = domain.decide(bank_card_payment(B), domain.FailDebit(code, "m"))  # type: ignore[arg-type]
    assert after.status is F
    assert isinstance(event, PaymentFailed)
    assert event.decline_code == code
    assert domain.funds(after, domain.BankPolicy()) == (None, None)


def test_wallet_and_medical_account_money_is_expected_at_once() -> None:
    payment = in_state(A)
    assert domain.funds(payment, domain.BankPolicy()) == (NOW, None)
