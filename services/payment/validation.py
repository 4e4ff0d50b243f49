"""Input rules of a payment request, the payee it pays and its idempotency fingerprint.

Pure: no I/O. Raises ``shared.errors`` domain errors naming the field to fix.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from datetime import date
from typing import Any

from shared.errors import LimitExceeded, ValidationFailed
from shared.events import PaymentMethod, Purpose
from shared.money import format_cny

# ---------------------------------------------------------------------------

PHONE_RE = re.compile(r"^1[3-9]\d{9}$")
PAYER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
PERIOD_RE = re.compile(r"^\d{4}(-(0[1-9]|1[0-2]|Q[1-4]))?$")
REGION_RE = re.compile(r"^\d{6}$")
# Province-level prefixes of GB/T 2260 region codes served by the mainland medical
# insurance schemes (66: the Xinjiang Production and Construction Corps' own bureau).
PROVINCES = frozenset(
    f"{code}"
    for code in (11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44,
                 45, 46, 50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 66)
)
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK_CHARS = "10X98765432"


def is_mobile_phone(phone: str) -> bool:
    """A mainland China mobile number: 11 digits starting 13-19."""
    return bool(PHONE_RE.fullmatch(phone))


def id_check_char(first17: str) -> str:
    """The GB 11643 check character of the first 17 digits of an ID number."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise ValueError("the first 17 characters of an ID number are digits")
    total = sum(int(c) * w for c, w in zip(first17, ID_WEIGHTS, strict=True))
    return ID_CHECK_CHARS[total % 11]


def region_problem(region: str) -> str | None:
    """Why ``region`` is not a region code a bureau collects for, or None."""
    if not REGION_RE.match(region):
        return "a region code has 6 digits (GB/T 2260), e.g. 110000 for Beijing"
    if region[:2] not in PROVINCES:
        return (
            f"{region[:2]} is not a province: a region code starts with its province's"
            " two digits (GB/T 2260), e.g. 110000 Beijing, 310000 Shanghai, 440300 Shenzhen"
        )
    return None


def id_number_problem(id_number: str, today: date) -> str | None:
    """Why ``id_number`` is not a valid 18-character resident ID number, or None."""
    if len(id_number) != 18:
        return "an ID number has 18 characters"
    body, check = id_number[:17], id_number[17].upper()
    if not body.isascii() or not body.isdigit():
        return "the first 17 characters of an ID number are digits"
    if not (check.isdigit() or check == "X"):
        return "the last character of an ID number is a digit or X"
    try:
        born = date(int(body[6:10]), int(body[10:12]), int(body[12:14]))
    except ValueError:
        return "the birth date inside the ID number is not a real date"
    if born > today:
        return "the birth date inside the ID number is in the future"
    if id_check_char(body) != check:
        return "the ID number's check digit does not match; check it for a typo"
    return None


def normalize_id_number(id_number: str) -> str:
    return id_number[:17] + id_number[17:].upper()


def check_request(
    *,
    purpose: Purpose,
    method: PaymentMethod,
    amount: int,
    limits: Mapping[PaymentMethod, int],
) -> None:
    """Cross-field rules of a payment request; raises with the field to fix."""
    if purpose.type == "wallet_topup" and method != "bank_card":
        raise ValidationFailed(
            "a wallet top-up is paid by bank card; send method 'bank_card'", param="method"
        )
    if purpose.type == "premium":
        if purpose.scheme is None:
            raise ValidationFailed(
                "a premium names its scheme: urban_rural_resident, flexible_employment or"
                " commercial_health",
                param="purpose.scheme",
            )
        if purpose.period is None:
            raise ValidationFailed(
                "a premium names the period it pays for, e.g. '2027' or '2027-03'",
                param="purpose.period",
            )
    limit = limits[method]
    if amount > limit:
        raise LimitExceeded(
            f"a single {method} payment is limited to {format_cny(limit)} CNY and this one is"
            f" {format_cny(amount)} CNY; pay with another method or split the amount",
            code="method_limit_exceeded",
            param="amount",
            details={"limit": limit, "amount": amount, "method": method},
        )


def payee_of(purpose: Purpose, payer_id: str, bureau_names: Mapping[str, str]) -> tuple[str, str]:
    """(payee_id, payee_name): the region's bureau for a premium, the wallet for a top-up."""
    if purpose.type == "wallet_topup":
        return f"wallet:{payer_id}", "零钱"
    return f"bureau:{purpose.region}", bureau_names.get(
        purpose.region, f"{purpose.region} 医疗保障局"
    )


def canonical_json(data: Any) -> str:
    """One text per value: sorted keys, no whitespace, UTF-8 kept."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_fingerprint(key: bytes, route: str, body: Any) -> str:
    """Keyed hash of a request: equal exactly when route and canonical body are equal.

    Keyed (HMAC) because the body holds a phone and an ID number.
    """
    message = route.encode() + b"\x1f" + canonical_json(body).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()
