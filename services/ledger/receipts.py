"""E-receipt rules (DOMAIN.md "Electronic receipts"): code, number, check code, face.

Pure. The face is what gets signed (Ed25519 over its canonical JSON, see
``services.ledger.signing``); everything on it comes from the payment and the
decision recorded in the journal, so a receipt can be re-derived and checked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from services.ledger.canonical import canonical_json
from shared.errors import DomainError
from shared.events import PaymentDetails
from shared.money import SHANGHAI, chinese_capitals, shanghai_day

DEFAULT_RECEIPT_TITLE = "医疗保障费用电子票据"
DEFAULT_REVIEWER = "系统复核"
SCHEME_ITEMS: Mapping[str, str] = {
    "urban_rural_resident": "城乡居民基本医疗保险费",
    "flexible_employment": "灵活就业人员基本医疗保险费",
    "commercial_health": "商业健康保险费",
}
GENERIC_ITEM = "医疗保障费"


class ReceiptNumbersExhausted(DomainError):
    """A code ran out of 10-digit numbers (a configuration problem, not a payer's)."""

    code = "receipt_numbers_exhausted"


class Signer(Protocol):
    """Signs receipt faces (``services.ledger.signing.ReceiptSigner`` is the real one)."""

    @property
    def key_id(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True)
class ReceiptPolicy:
    """Settings that shape the receipt face (票据代码 parts, 票据名称, 复核人)."""

    category: str = "06"
    type_code: str = "01"
    title: str = DEFAULT_RECEIPT_TITLE
    reviewer: str = DEFAULT_REVIEWER
    bureau_names: Mapping[str, str] = field(default_factory=dict)  # region → 收款单位

    def payee_of(self, payment: PaymentDetails) -> str:
        """The payment's payee name; the configured bureau name when it carries none."""
        region = payment.purpose.region
        return payment.payee_name or self.bureau_names.get(region, f"{region} 医疗保障局")


def receipt_code(region: str, posted_at: datetime, policy: ReceiptPolicy) -> str:
    """票据代码: region (2) + category (2) + type (2) + year (2, Asia/Shanghai)."""
    year = posted_at.astimezone(SHANGHAI).year % 100
    return f"{region[:2]}{policy.category}{policy.type_code}{year:02d}"


def receipt_number(n: int) -> str:
    """票据号码: 10 digits."""
    if not 1 <= n < 10**10:
        raise ReceiptNumbersExhausted(
            f"receipt number {n} is outside 10 digits; configure a new receipt type"
        )
    return f"{n:010d}"


def check_code(key: bytes, code: str, number: str, payment_id: str, amount: int) -> str:
    """校验码: 6 chars of base32 HMAC over code|number|payment_id|amount."""
    message = "|".join((code, number, payment_id, str(amount))).encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.b32encode(digest).decode()[:6]


def mask_account_id(payer_id: str) -> str:
    if len(payer_id) <= 4:
        return "*" * len(payer_id)
    return payer_id[:2] + "*" * (len(payer_id) - 4) + payer_id[-2:]


def mask_name(name: str) -> str:
    """张三 -> 张*, 欧阳娜娜 -> 欧***."""
    return name[:1] + "*" * max(len(name) - 1, 1) if name else ""


def item_name(payment: PaymentDetails) -> str:
    scheme = payment.purpose.scheme
    name = SCHEME_ITEMS.get(scheme, GENERIC_ITEM) if scheme else GENERIC_ITEM
    return f"{name} {payment.purpose.period}" if payment.purpose.period else name


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def receipt_face(
    payment: PaymentDetails,
    *,
    code: str,
    number: str,
    check: str,
    posted_at: datetime,
    policy: ReceiptPolicy,
) -> dict[str, Any]:
    """The signed face of a premium receipt (DOMAIN.md "Electronic receipts")."""
    b = payment.beneficiary
    return {
        "title": policy.title,
        "code": code,
        "number": number,
        "check_code": check,
        "issued_at": iso_utc(posted_at),
        "issue_date": shanghai_day(posted_at).isoformat(),
        "payer_name": b.name,
        "payer_id_masked": mask_account_id(payment.payer_id),
        "payer_id": payment.payer_id,
        "beneficiary": {
            "name": b.name,
            "id_number_masked": b.id_number_masked,
            "relation": b.relation,
        },
        "items": [{"name": item_name(payment), "amount": payment.amount}],
        "total": payment.amount,
        "total_in_words": chinese_capitals(payment.amount),
        "currency": payment.currency,
        "payee": policy.payee_of(payment),
        "payee_id": payment.payee_id,
        "reviewer": policy.reviewer,
        "payment_id": payment.payment_id,
        "method": payment.method,
        "qr_payload": f"yibao-receipt:{code}:{number}:{check}",
    }


def sign_face(face: Mapping[str, Any], signer: Signer) -> str:
    return base64.b64encode(signer.sign(canonical_json(dict(face)).encode())).decode()
