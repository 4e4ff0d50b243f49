"""Masked forms of personal data (DOMAIN.md "Personal data") and a scrubber for logs."""

from __future__ import annotations

import re
from typing import Any

# A mainland China mobile number: 11 digits starting 13-19 (validation and gateways).
MOBILE_PATTERN = r"^1[3-9][0-9]{9}$"  # [0-9]: pydantic's \d takes any Unicode digit
MOBILE_RE = re.compile(MOBILE_PATTERN)


def is_mobile_phone(phone: str) -> bool:
    """A mainland China mobile number: 11 ASCII digits starting 13-19."""
    return phone.isascii() and bool(MOBILE_RE.fullmatch(phone))


# Anchored on letters too, so digit runs inside hex ids and tokens are left alone.
PHONE_RE = re.compile(r"(?<![0-9A-Za-z])(1[3-9]\d)(\d{4})(\d{4})(?![0-9A-Za-z])")
ID_RE = re.compile(r"(?<![0-9A-Za-z])(\d{6})(\d{8})(\d{3}[0-9Xx])(?![0-9A-Za-z])")
CARD_RE = re.compile(r"(?<![0-9A-Za-z])(\d{6})(\d{3,9})(\d{4})(?![0-9A-Za-z])")

# Field names whose values never reach a log: SMS codes, secrets, sealed values.
_SECRET_NAMES = re.compile(
    r"^(code|otp|sms_code|check_code|password|secret|token|api_key|authorization|cookie"
    r"|.*_(secret|token|password|key|sealed|otp))$",
    re.IGNORECASE,
)
REDACTED = "[redacted]"


def mask_phone(phone: str) -> str:
    """13800138000 -> 138****8000."""
    return phone[:3] + "****" + phone[-4:] if len(phone) >= 7 else "****"


def mask_id_number(id_number: str) -> str:
    """First 6 + ******** + last 4."""
    return id_number[:6] + "********" + id_number[-4:] if len(id_number) >= 10 else "********"


def mask_card(card: str) -> str:
    return card[:6] + "*" * max(len(card) - 10, 4) + card[-4:]


def mask_text(text: str) -> str:
    """Mask every phone and ID number inside free text (ID numbers first: they are longer)."""
    text = ID_RE.sub(lambda m: m.group(1) + "********" + m.group(3)[-4:], text)
    text = PHONE_RE.sub(lambda m: m.group(1) + "****" + m.group(3), text)
    return CARD_RE.sub(lambda m: m.group(1) + "*" * len(m.group(2)) + m.group(3), text)


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAMES.match(name))


def scrub(value: Any) -> Any:
    """Recursively mask strings and redact secret-named fields."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and is_secret_name(k) else scrub(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(scrub(v) for v in value)
    return value
