"""notify's pure rules: which event causes which SMS, its text, its ids, the retry schedule."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notify import domain
from services.notify.config import NotifySettings
from services.notify.handlers import build_handlers
from shared.crypto import code_aad
from shared.events import (
    DeclineCode,
    LimitReleased,
    MedicalAccountAllocated,
    PaymentDeclined,
    PaymentFailed,
    PaymentSucceeded,
    ReceiptIssued,
    ReceiptRef,
    RefundFailed,
    RefundSucceeded,
    RiskApproved,
    StepUpRequired,
)

NOW = datetime(2027, 1, 15, 2, 30, tzinfo=UTC)
EVENT_ID = uuid.UUID("00000000-0000-4000-8000-00000000e001")


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
        payment_id="pay-1",
        payer_id="u-1",
        day="2027-01-15",
        cap=5000000,
        used=600000,
        remaining=4400000,
        challenge_id="ch-1",
        expires_at=NOW + timedelta(minutes=5),
        amount=amount,
        payee_name=payee,
        code_sealed="v1.code",
        payer_phone_sealed="v1.phone",
    )


def succeeded() -> PaymentSucceeded:
    return PaymentSucceeded(**_outcome(journal_seq=7, receipt=None))


def receipt_issued(face: dict[str, Any] | None = None) -> ReceiptIssued:
    return ReceiptIssued(
        payment_id="pay-1",
        payer_id="u-1",
        journal_seq=7,
        receipt=face
        if face is not None
        else {
            "code": "11012327",
            "number": "0000000042",
            "check_code": "a1B2c3",
            "total": 38000,
        },
        signature="sig",
        key_id="k1",
        payer_phone_sealed="v1.phone",
    )


# --- texts -----------------------------------------------------------------


def test_code_text_names_code_amount_and_payee() -> None:
    text = domain.step_up_notice(EVENT_ID, step_up(), "482915").text
    assert text == (
        "【医保】验证码482915，用于向北京市医疗保障局支付6,000.00元，5分钟内有效，请勿泄露。"
    )


def test_code_text_needs_the_code() -> None:
    with pytest.raises(ValueError, match="code"):
        domain.step_up_notice(EVENT_ID, step_up(), "")


def test_success_text() -> None:
    (notice,) = domain.payment_succeeded_notices(EVENT_ID, succeeded())
    assert notice.text == ("【医保】您已成功向北京市医疗保障局支付380.00元，支付单号pay-1。")


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
    notice = domain.payment_unsuccessful_notice(EVENT_ID, payload)
    text = notice.text
    assert text.startswith("【医保】您向北京市医疗保障局支付380.00元未成功：")
    assert words in text
    assert text.endswith("支付单号pay-1。")
    assert "machine words" not in text
    assert notice.kind == "payment_result"


def test_every_decline_code_has_plain_words() -> None:
    assert set(domain.DECLINE_REASONS) == set(get_args(DeclineCode))


def test_receipt_text() -> None:
    notice = domain.receipt_notice(EVENT_ID, receipt_issued())
    assert notice is not None
    assert notice.text == (
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


# --- issue 9: refunds and personal medical account balance changes -----------


def _refund_outcome(method: str = "bank_card", **extra: Any) -> dict[str, Any]:
    return {
        "refund_id": "re_1",
        "payment_id": "pay-1",
        "payer_id": "u-1",
        "amount": 12345,
        "method": method,
        "payer_phone_masked": "138****8000",
        "payer_phone_sealed": "v1.phone",
        **extra,
    }


RED = ReceiptRef(code="11012327", number="0000000043", check_code="Rk9x2Q")


def refund_succeeded(method: str = "bank_card", red: ReceiptRef | None = RED) -> RefundSucceeded:
    return RefundSucceeded(
        **_refund_outcome(method),
        journal_seq=9,
        receipt=red,
        original_receipt=ReceiptRef(code="11012327", number="0000000042", check_code="a1B2c3"),
        refunded_total=12345,
    )


def allocation(phone_sealed: str | None = "v1.phone.al") -> MedicalAccountAllocated:
    return MedicalAccountAllocated(
        allocation_id="al_1",
        region="110000",
        period="2027",
        payer_id="u-1",
        amount=100000,
        allocated_at=NOW,
        payer_phone_masked="138****8000" if phone_sealed else None,
        payer_phone_sealed=phone_sealed,
    )


def test_refund_text_names_amount_payee_destination_and_red_receipt() -> None:
    notice = domain.refund_succeeded_notice(EVENT_ID, refund_succeeded(), "北京市医疗保障局")
    assert notice.text == (
        "【医保】您向北京市医疗保障局支付的款项已退款123.45元，退回原银行卡，"
        "退款单号re_1，支付单号pay-1。已开具红冲票据：票据代码11012327，"
        "票据号码0000000043，校验码Rk9x2Q，可在医保服务查验真伪。"
    )
    assert (notice.kind, notice.payment_id, notice.refund_id) == ("refund_result", "pay-1", "re_1")
    assert notice.phone_aad == "phone:pay-1"
    assert notice.source_event_id == EVENT_ID


@pytest.mark.parametrize(
    ("method", "destination"),
    [
        ("wallet", "退回零钱"),
        ("medical_account", "退回医保个人账户"),
        ("bank_card", "退回原银行卡"),
    ],
)
def test_refund_goes_back_the_way_it_came(method: str, destination: str) -> None:
    text = domain.refund_succeeded_notice(EVENT_ID, refund_succeeded(method, None), "零钱").text
    assert destination in text
    assert "红冲" not in text  # no red receipt (a top-up has none)
    assert text.endswith("支付单号pay-1。")


def test_refund_text_without_a_known_payee() -> None:
    text = domain.refund_succeeded_notice(EVENT_ID, refund_succeeded(red=None), None).text
    assert text == (
        "【医保】您支付的款项已退款123.45元，退回原银行卡，退款单号re_1，支付单号pay-1。"
    )


@pytest.mark.parametrize(
    ("decline_code", "words"),
    [
        ("bank_declined", "银行未受理退款"),
        ("bank_unavailable", "银行暂未响应"),
        ("refund_exceeds_payment", "退款金额超过可退金额"),
        ("insufficient_funds", "请联系客服"),
    ],
)
def test_refund_failed_text(decline_code: str, words: str) -> None:
    payload = RefundFailed(**_refund_outcome(), decline_code=decline_code, message="machine words")
    notice = domain.refund_failed_notice(EVENT_ID, payload, "北京市医疗保障局")
    assert notice.text.startswith("【医保】您向北京市医疗保障局支付的款项退款123.45元未成功：")
    assert words in notice.text
    assert notice.text.endswith("退款单号re_1，支付单号pay-1。")
    assert "machine words" not in notice.text
    assert (notice.kind, notice.refund_id) == ("refund_result", "re_1")


def test_allocation_credit_text() -> None:
    notice = domain.allocation_notice(EVENT_ID, allocation())
    assert notice is not None
    assert notice.text == (
        "【医保】您的医保个人账户收入1,000.00元（北京市医疗保障局个账划入，所属期2027），"
        "划入单号al_1。"
    )
    assert (notice.kind, notice.payment_id, notice.payer_id) == ("balance_change", "al_1", "u-1")
    assert notice.phone_aad == "phone:al_1"  # shared.crypto.phone_aad(allocation_id)
    assert notice.phone_sealed == "v1.phone.al"


def test_allocation_names_the_configured_bureau() -> None:
    notice = domain.allocation_notice(EVENT_ID, allocation(), {"110000": "北京医保"})
    assert notice is not None
    assert "（北京医保个账划入" in notice.text


def test_allocation_without_a_phone_sends_nothing() -> None:
    assert domain.allocation_notice(EVENT_ID, allocation(None)) is None


def test_medical_account_payment_also_tells_the_balance_change() -> None:
    payload = PaymentSucceeded(**_outcome(method="medical_account", journal_seq=7, receipt=None))
    result, balance = domain.payment_succeeded_notices(EVENT_ID, payload)
    assert result.text == "【医保】您已成功向北京市医疗保障局支付380.00元，支付单号pay-1。"
    assert balance.text == (
        "【医保】您的医保个人账户支出380.00元（向北京市医疗保障局支付），支付单号pay-1。"
    )
    assert (balance.kind, balance.payment_id) == ("balance_change", "pay-1")
    assert balance.notification_id != result.notification_id
    assert balance.message_id != result.message_id


@pytest.mark.parametrize("method", ["wallet", "bank_card"])
def test_other_methods_cause_no_balance_change(method: str) -> None:
    payload = PaymentSucceeded(**_outcome(method=method, journal_seq=7, receipt=None))
    assert [n.kind for n in domain.payment_succeeded_notices(EVENT_ID, payload)] == [
        "payment_result"
    ]


def test_red_receipt_has_no_receipt_notice_of_its_own() -> None:
    red = ReceiptIssued(
        payment_id="pay-1",
        payer_id="u-1",
        journal_seq=9,
        receipt={"code": "11012327", "number": "0000000043", "check_code": "Rk9x2Q"},
        signature="sig",
        key_id="k1",
        payer_phone_sealed="v1.phone",
        refund_id="re_1",
    )
    assert domain.receipt_notice(EVENT_ID, red) is None


# --- which event causes which notice -----------------------------------------


def test_notice_for_step_up_carries_code_binding() -> None:
    payload = step_up()
    notice = domain.step_up_notice(EVENT_ID, payload, "482915")
    assert (notice.kind, notice.payment_id, notice.payer_id) == ("sms_code", "pay-1", "u-1")
    assert notice.phone_aad == "phone:pay-1"
    assert notice.phone_sealed == "v1.phone"
    assert payload.code_sealed == "v1.code"
    assert code_aad(payload.challenge_id) == "code:ch-1"  # what the handler opens it with
    assert notice.source_event_id == EVENT_ID
    assert "482915" not in repr(notice)  # the text never reaches a log through repr


def test_notice_for_results_and_receipts() -> None:
    (result,) = domain.payment_succeeded_notices(EVENT_ID, succeeded())
    receipt = domain.receipt_notice(EVENT_ID, receipt_issued())
    assert receipt is not None
    for notice, kind in ((result, "payment_result"), (receipt, "receipt")):
        assert notice.kind == kind
        assert notice.phone_sealed == "v1.phone"
        assert notice.phone_aad == "phone:pay-1"
    assert result.payee_name == "北京市医疗保障局"  # kept for the refund notices


def test_other_events_cause_nothing() -> None:
    handled = set(build_handlers(NotifySettings()))
    assert handled == {
        "PaymentRequested",  # no SMS: names the payment's owning caller
        "StepUpRequired",
        "PaymentSucceeded",
        "PaymentDeclined",
        "PaymentFailed",
        "ReceiptIssued",
        "RefundSucceeded",
        "RefundFailed",
        "MedicalAccountAllocated",
        "PayerCodeIssued",  # payer codes: phone change, family binding, records session
        "PersonKeyIssued",  # person-keys.v1 (own consumer): the keys sealing phones
        "PersonKeyErased",
    }
    assert RiskApproved.event_type not in handled
    assert LimitReleased.event_type not in handled


# --- ids ------------------------------------------------------------------------


@given(
    st.uuids(),
    st.sampled_from(["sms_code", "payment_result", "receipt", "refund_result", "balance_change"]),
)
def test_ids_are_deterministic(event_id: uuid.UUID, kind: domain.Kind) -> None:
    assert domain.message_id_for(event_id, kind) == domain.message_id_for(event_id, kind)
    assert domain.notification_id_for(event_id, kind) == domain.notification_id_for(event_id, kind)
    assert str(domain.notification_id_for(event_id, kind)) != domain.message_id_for(event_id, kind)


@given(st.uuids(), st.uuids())
def test_ids_differ_per_event_and_kind(a: uuid.UUID, b: uuid.UUID) -> None:
    kinds: list[domain.Kind] = list(get_args(domain.Kind))
    ids = {domain.message_id_for(e, k) for e in {a, b} for k in kinds}
    assert len(ids) == len(kinds) * len({a, b})


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
