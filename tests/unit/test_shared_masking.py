"""Masking of personal data in text and in structured log events."""

from __future__ import annotations

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from shared.logging import mask_personal_data
from shared.masking import REDACTED, mask_id_number, mask_phone, mask_text, scrub


def test_phone_and_id_masks_follow_the_domain_brief() -> None:
    assert mask_phone("13800138000") == "138****8000"
    assert mask_id_number("11010519491231002X") == "110105********002X"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call 13800138000 now", "call 138****8000 now"),
        ("id 11010519491231002X ok", "id 110105********002X ok"),
        ("id=110105194912310021", "id=110105********0021"),
        ("card 6222021234567890123", "card 622202*********0123"),
        ("amount 38000 fen", "amount 38000 fen"),
        ("12800138000", "12800138000"),  # not a mobile number (second digit 2)
    ],
)
def test_mask_text(text: str, expected: str) -> None:
    assert mask_text(text) == expected


@given(st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True), st.text(alphabet=" ,:=。（", max_size=5))
def test_no_mobile_number_survives(phone: str, pad: str) -> None:
    masked = mask_text(pad + phone + pad)
    assert phone not in masked
    assert phone[:3] + "****" + phone[-4:] in masked


def test_secret_named_fields_are_redacted_recursively() -> None:
    out = scrub(
        {
            "code": "123456",
            "decline_code": "daily_limit_exceeded",
            "nested": {"api_key": "k", "seal_key": "s", "phone": "13800138000"},
            "items": [{"check_code": "ABC123"}],
            "code_sealed": "v1.xxx",
        }
    )
    assert out == {
        "code": REDACTED,
        "decline_code": "daily_limit_exceeded",
        "nested": {"api_key": REDACTED, "seal_key": REDACTED, "phone": "138****8000"},
        "items": [{"check_code": REDACTED}],
        "code_sealed": REDACTED,
    }


def test_log_processor_masks_what_reaches_the_renderer() -> None:
    with structlog.testing.capture_logs(processors=[mask_personal_data]) as logs:
        structlog.get_logger().info(
            "paying", payer_phone="13800138000", note="for 11010519491231002X", code="654321"
        )
    assert logs == [
        {
            "event": "paying",
            "log_level": "info",
            "payer_phone": "138****8000",
            "note": "for 110105********002X",
            "code": REDACTED,
        }
    ]


@pytest.mark.parametrize(
    "token",
    ["pay_319f96079513800138000ab", "req-8c1b1380013800099f", "e3b0c44298fc1c149afbf4c8996fb924"],
)
def test_digit_runs_inside_ids_are_left_alone(token: str) -> None:
    assert mask_text(token) == token
