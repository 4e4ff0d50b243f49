"""The log processor's fast path masks exactly what ``scrub`` on the whole event does."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from shared.logging import mask_personal_data
from shared.masking import scrub

PHONE, ID_NUMBER, CARD = "13800138000", "11010519491231002X", "6222021234567890123"
texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from([PHONE, ID_NUMBER, CARD, f"call {PHONE}", f"id={ID_NUMBER};", "pay_1a2b"]),
    st.builds(lambda a, b: a + b, st.text(alphabet="0123456789 xX-", max_size=25), st.text()),
)
values = st.recursive(
    st.one_of(texts, st.integers(), st.none(), st.booleans()),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
keys = st.one_of(
    st.sampled_from(["event", "payer_phone", "error", "code", "api_key", "note", "path"]),
    st.text(max_size=12),
)


@given(st.dictionaries(keys, values, max_size=6))
def test_same_as_scrubbing_every_field(event: dict[str, Any]) -> None:
    expected = scrub(dict(event))
    assert mask_personal_data(None, "info", dict(event)) == expected


def test_masks_a_phone_in_the_message_and_redacts_secrets() -> None:
    out = mask_personal_data(
        None, "info", {"event": f"sms to {PHONE}", "sms_code": "123456", "id": ID_NUMBER}
    )
    assert out == {
        "event": "sms to 138****8000",
        "sms_code": "[redacted]",
        "id": "110105********002X",
    }
