"""What notify sends, and when: pure rules over events, no I/O.

Each event that owes the resident an SMS has one function here that says which
notices it causes (``Notice``: kind, the payment it belongs to, the sealed phone, the
text). The handlers open the sealed step-up code before calling ``step_up_notice``;
every other text is written from the event alone. Ids are derived from (source event,
kind), never random, so a redelivered event or a resend after a crash names the same
row and the same SMS, and the gateway keeps one copy.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from shared.crypto import phone_aad
from shared.events import (
    RELATION_NAMES,
    DeclineCode,
    MedicalAccountAllocated,
    PayerCodeIssued,
    PaymentDeclined,
    PaymentFailed,
    PaymentMethod,
    PaymentSucceeded,
    ReceiptIssued,
    ReceiptRef,
    RefundFailed,
    RefundSucceeded,
    StepUpRequired,
)
from shared.money import format_cny
from shared.regions import BUREAU_NAMES, bureau_name

Kind = Literal[
    "sms_code", "payment_result", "receipt", "refund_result", "balance_change", "security_notice"
]
State = Literal["pending", "sent", "failed"]

# Fixed namespaces: changing them would re-send every SMS still being retried.
MESSAGE_NAMESPACE = uuid.UUID("6f1d2c1e-4b0a-5d8e-9a51-3c7e0b8f2a10")
NOTIFICATION_NAMESPACE = uuid.UUID("a3e5b7c9-1d2f-5a4b-8c6d-0e1f2a3b4c5d")

# Plain words for each decline code, with what the resident can do next.
DECLINE_REASONS: dict[DeclineCode, str] = {
    "daily_limit_exceeded": "已达当日累计支付限额，请次日再试",
    "method_limit_exceeded": "超过该支付方式的单笔限额，请更换支付方式或分次支付",
    "verification_failed": "短信验证码多次输入错误，请重新发起支付",
    "verification_expired": "短信验证码已过期，请重新发起支付",
    "insufficient_funds": "账户余额不足，请充值或更换支付方式后重试",
    "bank_declined": "银行未同意本次扣款，请联系发卡行或更换支付方式",
    "bank_unavailable": "银行暂未响应，如已扣款将原路退回，请稍后重新发起支付",
    "refund_exceeds_payment": "退款金额超过可退金额，请核对后重新申请",
}

# Why a refund failed, in the resident's words; any other code gets the fallback.
REFUND_FAILURE_REASONS: dict[DeclineCode, str] = {
    "bank_declined": "银行未受理退款，请稍后重新申请或联系客服",
    "bank_unavailable": "银行暂未响应，请稍后重新申请",
    "refund_exceeds_payment": "退款金额超过可退金额，请核对后重新申请",
}
REFUND_FAILURE_FALLBACK = "退款未能完成，请联系客服"

# Where refunded money goes back to: the way it came.
REFUND_DESTINATIONS: dict[PaymentMethod, str] = {
    "wallet": "零钱",
    "bank_card": "原银行卡",
    "medical_account": "医保个人账户",
}

# Keys under which a receipt face may carry its total in fen; the ledger owns the face
# and writes "total" today.
_RECEIPT_AMOUNT_KEYS = ("total", "amount", "total_amount", "amount_total")


@dataclass(frozen=True)
class Notice:
    """One SMS owed to a resident, its text written, its phone still sealed.

    ``payment_id`` is what the notice belongs to: the payment (a refund's payment), or
    the allocation for a medical-account credit; the phone is sealed under
    ``phone_aad(payment_id)`` in every case.
    """

    kind: Kind
    payment_id: str
    payer_id: str
    source_event_id: uuid.UUID
    phone_sealed: str
    text: str = field(repr=False)  # may hold a code or check code: never logged
    payee_name: str | None = None  # kept on result notices; refund notices reuse it
    refund_id: str | None = None

    @property
    def phone_aad(self) -> str:
        return phone_aad(self.payment_id)

    @property
    def message_id(self) -> str:
        return message_id_for(self.source_event_id, self.kind)

    @property
    def notification_id(self) -> uuid.UUID:
        return notification_id_for(self.source_event_id, self.kind)


def message_id_for(source_event_id: uuid.UUID, kind: Kind) -> str:
    """The client message id the gateway dedupes on: one per (event, kind), forever."""
    return str(uuid.uuid5(MESSAGE_NAMESPACE, f"{source_event_id}:{kind}"))


def notification_id_for(source_event_id: uuid.UUID, kind: Kind) -> uuid.UUID:
    """Our row id for the notice; derived so the handler stays deterministic."""
    return uuid.uuid5(NOTIFICATION_NAMESPACE, f"{source_event_id}:{kind}")


PERSON_ERASED = "person erased (issue 11): their phone opens for nobody; not sent"


def text_aad(notification_id: uuid.UUID | str) -> str:
    """The binding of a stored SMS text to its notification row."""
    return f"sms:{notification_id}"


# ---------------------------------------------------------------------------
# Which notices each event causes
# ---------------------------------------------------------------------------


def step_up_notice(event_id: uuid.UUID, p: StepUpRequired, code: str) -> Notice:
    """The step-up code SMS; ``code`` is the opened ``p.code_sealed``."""
    if not code:
        raise ValueError("a step-up SMS needs the opened code")
    text = code_text(code, p.payee_name, p.amount)
    return Notice("sms_code", p.payment_id, p.payer_id, event_id, p.payer_phone_sealed, text)


def payer_code_notices(event_id: uuid.UUID, p: PayerCodeIssued, code: str) -> list[Notice]:
    """The payer code SMS (naming what it confirms; ``code`` is the opened
    ``p.code_sealed``) and, for a phone change, a notice to the phone being replaced.
    Both belong to the code id (their phones are sealed under ``phone_aad(code_id)``)."""
    if not code:
        raise ValueError("a payer code SMS needs the opened code")
    text = payer_code_text(code, p)
    notices = [Notice("sms_code", p.code_id, p.payer_id, event_id, p.phone_sealed, text)]
    if p.purpose == "phone_change" and p.replaced_phone_sealed is not None:
        notices.append(
            Notice(
                "security_notice",
                p.code_id,
                p.payer_id,
                event_id,
                p.replaced_phone_sealed,
                phone_change_notice_text(p.phone_masked),
            )
        )
    return notices


def payment_succeeded_notices(event_id: uuid.UUID, p: PaymentSucceeded) -> list[Notice]:
    """The result notice; a personal medical account's spending also gets its own
    balance-change SMS (个账余额变动实时推送), as an allocation's credit does."""
    result = Notice(
        "payment_result",
        p.payment_id,
        p.payer_id,
        event_id,
        p.payer_phone_sealed,
        success_text(p.payee_name, p.amount, p.payment_id, p.purpose_type),
        payee_name=p.payee_name,
    )
    if p.method != "medical_account":
        return [result]
    balance = Notice(
        "balance_change",
        p.payment_id,
        p.payer_id,
        event_id,
        p.payer_phone_sealed,
        medical_account_debit_text(p.amount, p.payee_name, p.payment_id),
    )
    return [result, balance]


def payment_unsuccessful_notice(event_id: uuid.UUID, p: PaymentDeclined | PaymentFailed) -> Notice:
    text = unsuccessful_text(p.payee_name, p.amount, p.payment_id, p.decline_code)
    return Notice(
        "payment_result",
        p.payment_id,
        p.payer_id,
        event_id,
        p.payer_phone_sealed,
        text,
        payee_name=p.payee_name,
    )


def receipt_notice(event_id: uuid.UUID, p: ReceiptIssued) -> Notice | None:
    """The receipt notice; None for a red receipt (红冲), which the refund notice names."""
    if p.refund_id is not None:
        return None
    text = receipt_text(p.receipt)
    return Notice("receipt", p.payment_id, p.payer_id, event_id, p.payer_phone_sealed, text)


def refund_succeeded_notice(
    event_id: uuid.UUID, p: RefundSucceeded, payee_name: str | None
) -> Notice:
    """``payee_name``: whom the refunded payment paid, when notify knows it."""
    text = refund_text(p.amount, p.method, p.refund_id, p.payment_id, payee_name, p.receipt)
    return Notice(
        "refund_result",
        p.payment_id,
        p.payer_id,
        event_id,
        p.payer_phone_sealed,
        text,
        refund_id=p.refund_id,
    )


def refund_failed_notice(event_id: uuid.UUID, p: RefundFailed, payee_name: str | None) -> Notice:
    text = refund_failed_text(p.amount, p.refund_id, p.payment_id, payee_name, p.decline_code)
    return Notice(
        "refund_result",
        p.payment_id,
        p.payer_id,
        event_id,
        p.payer_phone_sealed,
        text,
        refund_id=p.refund_id,
    )


def allocation_notice(
    event_id: uuid.UUID, p: MedicalAccountAllocated, bureau_names: Mapping[str, str] = BUREAU_NAMES
) -> Notice | None:
    """The balance-change SMS of a credit; None when the payer has no known phone."""
    if p.payer_phone_sealed is None:
        return None
    bureau = bureau_name(p.region, bureau_names)
    text = medical_account_credit_text(p.amount, bureau, p.period, p.allocation_id)
    return Notice(
        "balance_change", p.allocation_id, p.payer_id, event_id, p.payer_phone_sealed, text
    )


# ---------------------------------------------------------------------------
# Texts
# ---------------------------------------------------------------------------


def code_text(code: str, payee_name: str, amount_fen: int) -> str:
    """Step-up code; names the amount and the payee (dynamic linking)."""
    return (
        f"【医保】验证码{code}，用于向{payee_name}支付{format_cny(amount_fen)}元，"
        "5分钟内有效，请勿泄露。"
    )


def payer_code_text(code: str, p: PayerCodeIssued) -> str:
    """A payer code; names the step it confirms, so a code is never typed in blind."""
    if p.purpose == "phone_change":
        step = f"您正在更换医保账户接收短信的手机号为{p.phone_masked}"
    elif p.purpose == "family_binding":
        who = p.payer_name_masked or "医保用户"
        relation = RELATION_NAMES[p.relation] if p.relation is not None else "亲属"
        step = (
            f"您正在绑定亲属：{who}申请将您添加为其{relation}"
            "（家庭共济，可用其医保个人账户为您缴费）"
        )
    else:
        step = "您正在查询消费明细"
    return f"【医保】验证码{code}，{step}，5分钟内有效，请勿泄露。"


def phone_change_notice_text(new_phone_masked: str) -> str:
    """To the phone being replaced: someone asked to move codes and notices elsewhere."""
    return (
        f"【医保】您的医保账户正在申请将接收短信的手机号更换为{new_phone_masked}。"
        "如非本人操作，请勿向任何人透露短信内容，并及时联系客服。"
    )


def success_text(
    payee_name: str, amount_fen: int, payment_id: str, purpose_type: str = "premium"
) -> str:
    if purpose_type == "wallet_topup":
        return f"【医保】您已成功充值{format_cny(amount_fen)}元至零钱，支付单号{payment_id}。"
    return f"【医保】您已成功向{payee_name}支付{format_cny(amount_fen)}元，支付单号{payment_id}。"


def unsuccessful_text(
    payee_name: str, amount_fen: int, payment_id: str, decline_code: DeclineCode
) -> str:
    reason = DECLINE_REASONS[decline_code]
    return (
        f"【医保】您向{payee_name}支付{format_cny(amount_fen)}元未成功：{reason}。"
        f"支付单号{payment_id}。"
    )


def receipt_amount(face: dict[str, Any]) -> int | None:
    """The receipt's total in fen, when its face carries one as an integer."""
    for key in _RECEIPT_AMOUNT_KEYS:
        value = face.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def receipt_text(face: dict[str, Any]) -> str:
    """Receipt notice: code, number and check code let the resident verify it."""
    missing = [k for k in ("code", "number", "check_code") if not face.get(k)]
    if missing:
        raise ValueError(f"receipt face lacks {', '.join(missing)}; cannot write the notice")
    amount = receipt_amount(face)
    amount_part = f"，金额{format_cny(amount)}元" if amount is not None else ""
    return (
        f"【医保】您的电子票据已开具：票据代码{face['code']}，票据号码{face['number']}，"
        f"校验码{face['check_code']}{amount_part}，可在医保服务查验真伪。"
    )


def _paid_to(payee_name: str | None) -> str:
    return f"您向{payee_name}支付的款项" if payee_name else "您支付的款项"


def refund_text(
    amount_fen: int,
    method: PaymentMethod,
    refund_id: str,
    payment_id: str,
    payee_name: str | None,
    red_receipt: ReceiptRef | None,
) -> str:
    """Refund done: how much, back where, and the red receipt (红冲) when one was issued."""
    text = (
        f"【医保】{_paid_to(payee_name)}已退款{format_cny(amount_fen)}元，"
        f"退回{REFUND_DESTINATIONS[method]}，退款单号{refund_id}，支付单号{payment_id}。"
    )
    if red_receipt is None:
        return text
    return text + (
        f"已开具红冲票据：票据代码{red_receipt.code}，票据号码{red_receipt.number}，"
        f"校验码{red_receipt.check_code}，可在医保服务查验真伪。"
    )


def refund_failed_text(
    amount_fen: int,
    refund_id: str,
    payment_id: str,
    payee_name: str | None,
    decline_code: DeclineCode,
) -> str:
    reason = REFUND_FAILURE_REASONS.get(decline_code, REFUND_FAILURE_FALLBACK)
    return (
        f"【医保】{_paid_to(payee_name)}退款{format_cny(amount_fen)}元未成功：{reason}。"
        f"退款单号{refund_id}，支付单号{payment_id}。"
    )


def medical_account_credit_text(
    amount_fen: int, bureau: str, period: str, allocation_id: str
) -> str:
    """Balance change of a personal medical account: the bureau's credit (个账划入)."""
    return (
        f"【医保】您的医保个人账户收入{format_cny(amount_fen)}元"
        f"（{bureau}个账划入，所属期{period}），划入单号{allocation_id}。"
    )


def medical_account_debit_text(amount_fen: int, payee_name: str, payment_id: str) -> str:
    """Balance change of a personal medical account: a payment from it."""
    return (
        f"【医保】您的医保个人账户支出{format_cny(amount_fen)}元"
        f"（向{payee_name}支付），支付单号{payment_id}。"
    )


# ---------------------------------------------------------------------------
# Sending: retry schedule
# ---------------------------------------------------------------------------

MAX_ATTEMPTS = 10
BASE_BACKOFF = timedelta(seconds=1)
MAX_BACKOFF = timedelta(seconds=60)


def retry_delay(
    attempts: int, *, base: timedelta = BASE_BACKOFF, cap: timedelta = MAX_BACKOFF
) -> timedelta:
    """Wait after the ``attempts``-th failed try: 1 s, 2 s, 4 s ... capped at 60 s."""
    if attempts < 1:
        raise ValueError("attempts counts failed tries and starts at 1")
    factor: int = 2 ** min(attempts - 1, 30)
    return min(base * factor, cap)


def after_failure(
    attempts: int,
    *,
    permanent: bool = False,
    max_attempts: int = MAX_ATTEMPTS,
    base: timedelta = BASE_BACKOFF,
    cap: timedelta = MAX_BACKOFF,
) -> timedelta | None:
    """How long to wait before the next try, or None to give up (state ``failed``).

    Gives up after ``max_attempts`` failed tries or on a permanent refusal.
    """
    if permanent or attempts >= max_attempts:
        return None
    return retry_delay(attempts, base=base, cap=cap)


def is_permanent(status: int) -> bool:
    """A 4xx other than timeout/too-many means the request itself is wrong: do not retry."""
    return 400 <= status < 500 and status not in (408, 425, 429)
