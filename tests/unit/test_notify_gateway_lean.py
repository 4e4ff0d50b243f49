"""The development SMS gateway's hand-written check of a POST /sms body is never looser
than its model: whatever ``_lean_sms`` accepts, ``SmsCreate`` accepts as the same
message; what it declines, the model judges (tests/integration/test_notify_gateway.py
holds the HTTP contract)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.notify.gateway import SmsCreate, _lean_sms

_phones = st.one_of(
    st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True),
    st.text(max_size=14),
    st.from_regex(r"\s*1[0-9]{10}\s*", fullmatch=True),
    st.integers(),
    st.none(),
)
_texts = st.one_of(st.text(max_size=1005), st.text(min_size=995, max_size=1003), st.none())
_ids = st.one_of(st.text(max_size=205), st.uuids().map(str), st.integers())


@given(
    st.fixed_dictionaries(
        {}, optional={"phone": _phones, "text": _texts, "message_id": _ids, "extra": st.text()}
    )
)
def test_lean_check_accepts_only_what_the_model_accepts(body: dict[str, Any]) -> None:
    lean = _lean_sms(body)
    try:
        model = SmsCreate.model_validate(body)
    except ValidationError:
        assert lean is None
        return
    if lean is not None:
        assert lean.model_dump() == model.model_dump()


def test_a_plain_message_takes_the_lean_path() -> None:
    body = {"phone": "13800138000", "text": "【医保】验证码123456", "message_id": "m-1"}
    lean = _lean_sms(body)
    assert lean is not None
    assert lean.model_dump() == body
    assert _lean_sms({**body, "text": " padded "}) is None  # the model strips it
    assert _lean_sms([body]) is None
