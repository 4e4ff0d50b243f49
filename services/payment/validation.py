"""Input rules of a payment request, the payee it pays and its idempotency fingerprint.

Pure: no I/O. Raises ``shared.errors`` domain errors naming the field to fix. Regions
and bureau names live in ``shared.regions``, the mobile pattern in ``shared.masking``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from typing import Any

from shared.canonical import canonical_json
from shared.crypto import keyed_hash
from shared.errors import LimitExceeded, ValidationFailed
from shared.events import PaymentMethod, Purpose
from shared.money import format_cny
from shared.regions import BUREAU_NAMES, bureau_name

PAYER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
PERIOD_RE = re.compile(r"^[0-9]{4}(-(0[1-9]|1[0-2]|Q[1-4]))?$")
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK_CHARS = "10X98765432"


def id_check_char(first17: str) -> str:
    """The GB 11643 check character of the first 17 digits of an ID number."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise ValueError("the first 17 characters of an ID number are digits")
    total = sum(int(c) * w for c, w in zip(first17, ID_WEIGHTS, strict=True))
    return ID_CHECK_CHARS[total % 11]


def id_number_problem(id_number: str, today: date) -> str | None:
    """Why ``id_number`` is not a valid 18-character resident ID number, or None."""
    if len(id_number) != 18:
        return "an ID number has 18 characters"
    body, check = id_number[:17], id_number[17].upper()
    if not body.isascii() or not body.isdigit():
        return "the first 17 characters of an ID number are digits"
    if not (check in "0123456789" or check == "X"):
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


def validate_request(
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


def payee_of(
    purpose: Purpose, payer_id: str, bureau_names: Mapping[str, str] = BUREAU_NAMES
) -> tuple[str, str]:
    """(payee_id, payee_name): the region's bureau for a premium, the wallet for a top-up."""
    if purpose.type == "wallet_topup":
        return f"wallet:{payer_id}", "零钱"
    return f"bureau:{purpose.region}", bureau_name(purpose.region, bureau_names)


def request_fingerprint(key: bytes, route: str, body: Any) -> str:
    """Keyed hash of a request: equal exactly when route and canonical body are equal.

    Keyed (HMAC) because the body holds a phone and an ID number.
    """
    return keyed_hash(key, route, canonical_json(body))
