"""notify's pure rules: which event causes which SMS, its text, its ids, the retry schedule."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notify import domain
from shared.events import (
    DeclineCode,
    Event,
    EventPayload,
    LimitReleased,
    PaymentDeclined,
    PaymentFailed,
    PaymentSucceeded,
    ReceiptIssued,
    RiskApproved,
    StepUpRequired,
    new_event,
)

NOW = datetime(2027, 1, 15, 2, 30, tzinfo=UTC)


def _event(payload: EventPayload) -> Event:
    producer = "risk" if isinstance(payload, StepUpRequired | RiskApproved | LimitReleased) else (
        "ledger" if isinstance(payload, ReceiptIssued) else "payment"
    )
    env = new_event(payload, producer=producer, key="u-1", correlation_id="pay-1")
    return Event(env, payload)


def _outcome(**extra: Any) -> dict[str, Any]:
    return {
        "payment_id": "pay-1",
        "payer_id": "u-1",
        "amount": 38000,
        "method": "bank_card",
        "purpose_type": "premium",
        "payee_name": "北京市医疗保障局",
        "payer_phone_masked": "138****8000",
        "payer_phone_sealed": "v1.phone",
        **extra,
    }


def step_up(amount: int = 600000, payee: str = "北京市医疗保障局") -> StepUpRequired:
    return StepUpRequired(
        payment_id="pay-1", payer_id="u-1", day="2027-01-15", cap=5000000, used=600000,
        remaining=4400000, challenge_id="ch-1", expires_at=NOW + timedelta(minutes=5),
        amount=amount, payee_name=payee, code_sealed="v1.code", payer_phone_sealed="v1.phone",
    )


def succeeded() -> PaymentSucceeded:
    return PaymentSucceeded(**_outcome(journal_seq=7, receipt=None))


def receipt_issued(face: dict[str, Any] | None = None) -> ReceiptIssued:
    return ReceiptIssued(
        payment_id="pay-1", payer_id="u-1", journal_seq=7,
        receipt=face if face is not None else {
            "code": "11012327", "number": "0000000042", "check_code": "a1B2c3", "total": 38000,
        },
        signature="sig", key_id="k1", payer_phone_sealed="v1.phone",
    )


# --- texts -----------------------------------------------------------------


def test_code_text_names_code_amount_and_payee() -> None:
    text = domain.render(_event(step_up()), code="482915")
    assert text == (
        "【医保】验证码482915，用于向北京市医疗保障局支付6,000.00元，5分钟内有效，请勿泄露。"
    )


def test_code_text_needs_the_code() -> None:
    with pytest.raises(ValueError, match="code"):
        domain.render(_event(step_up()))


def test_success_text() -> None:
    assert domain.render(_event(succeeded())) == (
        "【医保】您已成功向北京市医疗保障局支付380.00元，支付单号pay-1。"
    )


def test_top_up_success_text() -> None:
    assert domain.success_text("零钱", 100000, "pay-2", "wallet_topup") == (
        "【医保】您已成功充值1,000.00元至零钱，支付单号pay-2。"
    )


@pytest.mark.parametrize(
    ("decline_code", "words"),
    [
        ("daily_limit_exceeded", "已达当日累计支付限额，请次日再试"),
        ("method_limit_exceeded", "超过该支付方式的单笔限额"),
        ("verification_failed", "短信验证码多次输入错误"),
        ("verification_expired", "短信验证码已过期"),
        ("insufficient_funds", "账户余额不足"),
    ],
)
@pytest.mark.parametrize("cls", [PaymentDeclined, PaymentFailed])
def test_unsuccessful_text_explains_the_reason(
    cls: type[PaymentDeclined | PaymentFailed], decline_code: str, words: str
) -> None:
    payload = cls(**_outcome(decline_code=decline_code, message="machine words"))
    text = domain.render(_event(payload))
    assert text.startswith("【医保】您向北京市医疗保障局支付380.00元未成功：")
    assert words in text
    assert text.endswith("支付单号pay-1。")
    assert "machine words" not in text
    assert domain.notice_for(_event(payload)).kind == "payment_result"  # type: ignore[union-attr]


def test_every_decline_code_has_plain_words() -> None:
    assert set(domain.DECLINE_REASONS) == set(get_args(DeclineCode))


def test_receipt_text() -> None:
    assert domain.render(_event(receipt_issued())) == (
        "【医保】您的电子票据已开具：票据代码11012327，票据号码0000000042，校验码a1B2c3，"
        "金额380.00元，可在医保服务查验真伪。"
    )


@pytest.mark.parametrize("key", ["amount", "total_amount", "amount_total"])
def test_receipt_amount_under_other_names(key: str) -> None:
    face = {"code": "11012327", "number": "0000000042", "check_code": "a1B2c3", key: 123456}
    assert "金额1,234.56元" in domain.receipt_text(face)


def test_receipt_without_amount_still_names_the_receipt() -> None:
    face = {"code": "11012327", "number": "0000000042", "check_code": "a1B2c3"}
    text = domain.receipt_text(face)
    assert "金额" not in text
    assert "票据号码0000000042，校验码a1B2c3，可在医保服务查验真伪。" in text


def test_receipt_without_check_code_is_refused() -> None:
    with pytest.raises(ValueError, match="check_code"):
        domain.receipt_text({"code": "11012327", "number": "0000000042"})


def test_amounts_use_thousands_separators() -> None:
    assert "支付50,000.00元" in domain.success_text("零钱", 5_000_000, "p")


# --- which event causes which notice -----------------------------------------


def test_notice_for_step_up_carries_code_binding() -> None:
    event = _event(step_up())
    notice = domain.notice_for(event)
    assert notice is not None
    assert (notice.kind, notice.payment_id, notice.payer_id) == ("sms_code", "pay-1", "u-1")
    assert notice.phone_aad == "phone:pay-1"
    assert notice.code_sealed == "v1.code"
    assert notice.code_aad == "code:ch-1"
    assert notice.source_event_id == event.event_id


@pytest.mark.parametrize(
    ("payload", "kind"),
    [(succeeded(), "payment_result"), (receipt_issued(), "receipt")],
)
def test_notice_for_results_and_receipts(payload: EventPayload, kind: str) -> None:
    notice = domain.notice_for(_event(payload))
    assert notice is not None
    assert notice.kind == kind
    assert notice.code_sealed is None
    assert notice.code_aad is None
    assert notice.phone_sealed == "v1.phone"


def test_other_events_cause_nothing() -> None:
    approved = RiskApproved(
        payment_id="p", payer_id="u", day="2027-01-15", cap=1, used=1, remaining=0
    )
    released = LimitReleased(payment_id="p", payer_id="u", day="2027-01-15", amount=1, used=0)
    assert domain.notice_for(_event(approved)) is None
    assert domain.notice_for(_event(released)) is None
    with pytest.raises(ValueError, match="no SMS"):
        domain.render(_event(approved))


# --- ids ------------------------------------------------------------------------


@given(st.uuids(), st.sampled_from(["sms_code", "payment_result", "receipt"]))
def test_ids_are_deterministic(event_id: uuid.UUID, kind: domain.Kind) -> None:
    assert domain.message_id_for(event_id, kind) == domain.message_id_for(event_id, kind)
    assert domain.notification_id_for(event_id, kind) == domain.notification_id_for(event_id, kind)
    assert str(domain.notification_id_for(event_id, kind)) != domain.message_id_for(event_id, kind)


@given(st.uuids(), st.uuids())
def test_ids_differ_per_event_and_kind(a: uuid.UUID, b: uuid.UUID) -> None:
    kinds: list[domain.Kind] = ["sms_code", "payment_result", "receipt"]
    ids = {domain.message_id_for(e, k) for e in {a, b} for k in kinds}
    assert len(ids) == 3 * len({a, b})


def test_message_id_is_pinned() -> None:
    """Changing the namespace would make the gateway accept resends as new SMS."""
    event_id = uuid.UUID("00000000-0000-4000-8000-000000000001")
    assert domain.message_id_for(event_id, "receipt") == "a1c69037-a35d-56c2-97f5-686bdc4b43c0"


def test_text_binding() -> None:
    nid = uuid.UUID("00000000-0000-4000-8000-000000000002")
    assert domain.text_aad(nid) == "sms:00000000-0000-4000-8000-000000000002"


# --- retry schedule -------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempts", "seconds"), [(1, 1), (2, 2), (3, 4), (4, 8), (6, 32), (7, 60), (9, 60), (50, 60)]
)
def test_retry_delay(attempts: int, seconds: int) -> None:
    assert domain.retry_delay(attempts) == timedelta(seconds=seconds)


@given(st.integers(min_value=1, max_value=10_000))
def test_retry_delay_grows_and_is_capped(attempts: int) -> None:
    delay = domain.retry_delay(attempts)
    assert timedelta(seconds=1) <= delay <= timedelta(seconds=60)
    assert domain.retry_delay(attempts + 1) >= delay


def test_retry_delay_refuses_zero() -> None:
    with pytest.raises(ValueError, match="starts at 1"):
        domain.retry_delay(0)


def test_gives_up_after_max_attempts() -> None:
    assert domain.after_failure(9) == timedelta(seconds=60)
    assert domain.after_failure(10) is None
    assert domain.after_failure(1, permanent=True) is None
    assert domain.after_failure(2, max_attempts=3, base=timedelta(milliseconds=100)) == timedelta(
        milliseconds=200
    )


@pytest.mark.parametrize(
    ("status", "permanent"),
    [(400, True), (401, True), (404, True), (408, False), (429, False), (500, False), (503, False)],
)
def test_permanent_statuses(status: int, permanent: bool) -> None:
    assert domain.is_permanent(status) is permanent
