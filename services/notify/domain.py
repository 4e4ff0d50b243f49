"""What notify sends, and when: pure rules over events, no I/O.

An event causes at most one notice. ``notice_for`` says which (kind, the payment it
belongs to, where the sealed phone and code are); ``render`` writes the Chinese text
once the handler has opened the sealed values. Ids are derived, never random, so a
redelivered event or a resend after a crash names the same SMS and the gateway keeps
one copy.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from shared.events import (
    DeclineCode,
    Event,
    PaymentDeclined,
    PaymentFailed,
    PaymentSucceeded,
    ReceiptIssued,
    StepUpRequired,
)
from shared.money import format_cny

Kind = Literal["sms_code", "payment_result", "receipt"]
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
}

# Keys under which a receipt face may carry its total in fen; the ledger owns the face
# and writes "total" today.
_RECEIPT_AMOUNT_KEYS = ("total", "amount", "total_amount", "amount_total")


@dataclass(frozen=True)
class Notice:
    """One SMS an event asks for, before any sealed value is opened."""

    kind: Kind
    payment_id: str
    payer_id: str
    source_event_id: uuid.UUID
    phone_sealed: str
    code_sealed: str | None = None
    challenge_id: str | None = None

    @property
    def phone_aad(self) -> str:
        return f"phone:{self.payment_id}"

    @property
    def code_aad(self) -> str | None:
        return f"code:{self.challenge_id}" if self.challenge_id else None

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


def text_aad(notification_id: uuid.UUID | str) -> str:
    """The binding of a stored SMS text to its notification row."""
    return f"sms:{notification_id}"


def notice_for(event: Event) -> Notice | None:
    """The SMS ``event`` causes, or None when it causes none."""
    p = event.payload
    eid = event.event_id
    if isinstance(p, StepUpRequired):
        return Notice(
            kind="sms_code",
            payment_id=p.payment_id,
            payer_id=p.payer_id,
            source_event_id=eid,
            phone_sealed=p.payer_phone_sealed,
            code_sealed=p.code_sealed,
            challenge_id=p.challenge_id,
        )
    if isinstance(p, PaymentSucceeded | PaymentDeclined | PaymentFailed):
        return Notice("payment_result", p.payment_id, p.payer_id, eid, p.payer_phone_sealed)
    if isinstance(p, ReceiptIssued):
        return Notice("receipt", p.payment_id, p.payer_id, eid, p.payer_phone_sealed)
    return None


def code_text(code: str, payee_name: str, amount_fen: int) -> str:
    """Step-up code; names the amount and the payee (dynamic linking)."""
    return (
        f"【医保】验证码{code}，用于向{payee_name}支付{format_cny(amount_fen)}元，"
        "5分钟内有效，请勿泄露。"
    )


def success_text(
    payee_name: str, amount_fen: int, payment_id: str, purpose_type: str = "premium"
) -> str:
    if purpose_type == "wallet_topup":
        return f"【医保】您已成功充值{format_cny(amount_fen)}元至零钱，支付单号{payment_id}。"
    return (
        f"【医保】您已成功向{payee_name}支付{format_cny(amount_fen)}元，支付单号{payment_id}。"
    )


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


def render(event: Event, *, code: str | None = None) -> str:
    """The SMS text for ``event``; ``code`` is the opened step-up code when there is one."""
    p = event.payload
    if isinstance(p, StepUpRequired):
        if not code:
            raise ValueError("a step-up SMS needs the opened code")
        return code_text(code, p.payee_name, p.amount)
    if isinstance(p, PaymentSucceeded):
        return success_text(p.payee_name, p.amount, p.payment_id, p.purpose_type)
    if isinstance(p, PaymentDeclined | PaymentFailed):
        return unsuccessful_text(p.payee_name, p.amount, p.payment_id, p.decline_code)
    if isinstance(p, ReceiptIssued):
        return receipt_text(p.receipt)
    raise ValueError(f"{event.event_type} causes no SMS")


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
