"""Input rules of the payment API: ID numbers, phones, the request models, fingerprints."""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.payment import validation
from services.payment.intake import new_payment_id
from services.payment.schemas import PaymentCreate, VerificationCreate
from shared.errors import LimitExceeded, ValidationFailed
from shared.events import Purpose
from shared.masking import is_mobile_phone, mask_text

TODAY = date(2026, 11, 24)
LIMITS: dict[Any, int] = {"wallet": 200_000, "bank_card": 500_000, "medical_account": 5_000_000}


@pytest.mark.parametrize(
    ("id_number", "problem"),
    [
        ("11010519491231002X", None),
        ("11010519491231002x", None),  # a lowercase x is accepted (normalised)
        ("11010119900307803X", None),
        ("110101199003074477", None),
        ("440524188001010014", None),  # the example of GB 11643 itself
        ("110101199003074478", "check digit"),
        ("11010519491231002Y", "digit or X"),
        ("110105194912310021", "check digit"),
        ("1101051949123100", "18 characters"),
        ("11010519491231002X1", "18 characters"),
        ("A1010519491231002X", "digits"),
        ("1101051949123１002X", "digits"),  # a full-width digit
        ("110105194902300029", "not a real date"),  # 30 February
        ("110105194913010029", "not a real date"),  # month 13
        ("110105209912310023", "future"),
    ],
)
def test_id_number_rules(id_number: str, problem: str | None) -> None:
    found = validation.id_number_problem(id_number, TODAY)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


@given(st.text(alphabet="0123456789", min_size=17, max_size=17))
def test_exactly_one_check_char_fits(first17: str) -> None:
    good = validation.id_check_char(first17)
    for candidate in "0123456789X":
        full = first17 + candidate
        ok = validation.id_number_problem(full, TODAY)
        if ok is not None and "check digit" not in ok:
            return  # the birth date part is not a date: check digit never reached
        assert (ok is None) == (candidate == good)


@pytest.mark.parametrize(
    ("phone", "valid"),
    [
        ("13800138000", True),
        ("19912345678", True),
        ("15000000000", True),
        ("12800138000", False),  # second digit 2
        ("10800138000", False),
        ("1380013800", False),  # 10 digits
        ("138001380001", False),  # 12 digits
        ("+8613800138000", False),
        ("1380013800a", False),
        ("", False),
        ("13800138000\n", False),
    ],
)
def test_mobile_phone(phone: str, valid: bool) -> None:
    assert is_mobile_phone(phone) is valid


def good_body() -> dict[str, Any]:
    return {
        "payer_id": "u-1001",
        "payer_phone": "13800138000",
        "beneficiary": {"id_number": "11010519491231002X", "name": "张三", "relation": "self"},
        "purpose": {
            "type": "premium",
            "scheme": "urban_rural_resident",
            "region": "110000",
            "period": "2027",
        },
        "amount": 38000,
        "currency": "CNY",
        "method": "bank_card",
    }


def _with(path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(good_body())
    *parents, last = path.split(".")
    node = body
    for part in parents:
        node = node[part]
    if value is _DROP:
        del node[last]
    else:
        node[last] = value
    return body


_DROP = object()


def test_good_body_parses() -> None:
    model = PaymentCreate.model_validate(good_body())
    assert model.amount == 38000
    assert model.beneficiary.name == "张三"


@pytest.mark.parametrize(
    ("path", "value", "loc"),
    [
        ("payer_phone", "12345678901", ("payer_phone",)),
        ("beneficiary.id_number", "110105194912310021", ("beneficiary", "id_number")),
        ("beneficiary.relation", "cousin", ("beneficiary", "relation")),
        ("beneficiary.name", "", ("beneficiary", "name")),
        ("beneficiary.name", "张" * 51, ("beneficiary", "name")),
        ("amount", 380.5, ("amount",)),
        ("amount", 380.0, ("amount",)),
        ("amount", "38000", ("amount",)),
        ("amount", True, ("amount",)),
        ("amount", 0, ("amount",)),
        ("amount", -1, ("amount",)),
        ("currency", "USD", ("currency",)),
        ("method", "alipay", ("method",)),
        ("payer_id", "", ("payer_id",)),
        ("payer_id", "x" * 65, ("payer_id",)),
        ("payer_id", "u 1001", ("payer_id",)),
        ("purpose.region", "11000", ("purpose", "region")),
        ("purpose.region", "999999", ("purpose", "region")),
        ("purpose.region", "000000", ("purpose", "region")),
        ("purpose.region", "710000", ("purpose", "region")),
        ("purpose.period", "27", ("purpose", "period")),
        ("purpose.type", "donation", ("purpose", "type")),
        ("purpose.scheme", "private", ("purpose", "scheme")),
        ("extra", 1, ("extra",)),
        ("method", _DROP, ("method",)),
    ],
)
def test_bad_field_is_named(path: str, value: Any, loc: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        PaymentCreate.model_validate(_with(path, value))
    assert info.value.errors()[0]["loc"][: len(loc)] == loc


@pytest.mark.parametrize("region", ["110000", "110105", "310000", "440300", "650100", "660000"])
def test_region_codes_of_the_provinces_are_taken(region: str) -> None:
    assert PaymentCreate.model_validate(_with("purpose.region", region)).purpose.region == region


def test_an_unknown_province_is_named_in_the_message() -> None:
    with pytest.raises(ValidationError) as info:
        PaymentCreate.model_validate(_with("purpose.region", "991234"))
    assert "99 is not a province" in info.value.errors()[0]["msg"]


def test_error_messages_never_echo_the_id_number() -> None:
    with pytest.raises(ValidationError) as info:
        PaymentCreate.model_validate(_with("beneficiary.id_number", "110105194912310021"))
    assert "110105194912310021" not in info.value.errors()[0]["msg"]


@pytest.mark.parametrize("code", ["12345", "1234567", "abcdef", "12345a", ""])
def test_verification_code_is_six_digits(code: str) -> None:
    with pytest.raises(ValidationError):
        VerificationCreate.model_validate({"code": code})
    assert VerificationCreate.model_validate({"code": "012345"}).code == "012345"


def _purpose(**fields: Any) -> Purpose:
    return Purpose.model_validate({"type": "premium", "region": "110000", **fields})


@pytest.mark.parametrize(
    ("purpose", "method", "param"),
    [
        (_purpose(type="wallet_topup"), "wallet", "method"),
        (_purpose(type="wallet_topup"), "medical_account", "method"),
        (_purpose(period="2027"), "bank_card", "purpose.scheme"),
        (_purpose(scheme="urban_rural_resident"), "bank_card", "purpose.period"),
    ],
)
def test_cross_field_rules(purpose: Purpose, method: Any, param: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        validation.validate_request(purpose=purpose, method=method, amount=100, limits=LIMITS)
    assert info.value.param == param
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("method", "amount", "ok"),
    [
        ("wallet", 200_000, True),
        ("wallet", 200_001, False),
        ("bank_card", 500_000, True),
        ("bank_card", 500_001, False),
        ("medical_account", 5_000_000, True),
        ("medical_account", 5_000_001, False),
    ],
)
def test_method_limits(method: Any, amount: int, ok: bool) -> None:
    purpose = _purpose(scheme="urban_rural_resident", period="2027")
    if ok:
        validation.validate_request(purpose=purpose, method=method, amount=amount, limits=LIMITS)
        return
    with pytest.raises(LimitExceeded) as info:
        validation.validate_request(purpose=purpose, method=method, amount=amount, limits=LIMITS)
    err = info.value
    assert (err.status, err.code, err.param) == (422, "method_limit_exceeded", "amount")
    assert "CNY" in err.message
    assert "another method" in err.message
    assert err.details["limit"] == LIMITS[method]


def test_payee() -> None:
    names = {"110000": "北京市医疗保障局"}
    assert validation.payee_of(_purpose(), "u-1", names) == ("bureau:110000", "北京市医疗保障局")
    # A region without a configured name: its name from the shipped GB/T 2260 table.
    assert validation.payee_of(_purpose(region="650100"), "u-1", names) == (
        "bureau:650100",
        "乌鲁木齐市医疗保障局",
    )
    assert validation.payee_of(_purpose(type="wallet_topup"), "u-1", names) == (
        "wallet:u-1",
        "零钱",
    )


KEY = b"k" * 32


def test_fingerprint_ignores_key_order_and_spacing() -> None:
    a = {"b": 1, "a": {"y": "张", "x": [1, 2]}}
    b = {"a": {"x": [1, 2], "y": "张"}, "b": 1}
    assert validation.request_fingerprint(KEY, "r", a) == validation.request_fingerprint(
        KEY, "r", b
    )


@pytest.mark.parametrize(
    "other",
    [
        {"b": 2, "a": {"y": "张", "x": [1, 2]}},
        {"b": 1, "a": {"y": "张", "x": [2, 1]}},
        {"b": 1, "a": {"y": "李", "x": [1, 2]}},
        {"b": "1", "a": {"y": "张", "x": [1, 2]}},
        {"b": 1},
    ],
)
def test_fingerprint_changes_with_the_body(other: dict[str, Any]) -> None:
    base = {"b": 1, "a": {"y": "张", "x": [1, 2]}}
    assert validation.request_fingerprint(KEY, "r", base) != validation.request_fingerprint(
        KEY, "r", other
    )


def test_fingerprint_is_keyed_and_route_bound() -> None:
    body = good_body()
    fp = validation.request_fingerprint(KEY, "POST /v1/payments", body)
    assert fp != validation.request_fingerprint(b"j" * 32, "POST /v1/payments", body)
    assert fp != validation.request_fingerprint(KEY, "POST /v1/other", body)
    assert "13800138000" not in fp


def test_parsed_body_fingerprint_is_stable() -> None:
    """Equal bodies parse to equal dumps; a default currency equals an explicit one."""
    explicit = PaymentCreate.model_validate(good_body()).model_dump(mode="json")
    implicit = PaymentCreate.model_validate(_with("currency", _DROP)).model_dump(mode="json")
    assert validation.request_fingerprint(KEY, "r", explicit) == validation.request_fingerprint(
        KEY, "r", implicit
    )


def test_payment_ids_survive_log_masking() -> None:
    """Ids never look like a phone, card or ID number, so logs keep them whole."""
    ids = {new_payment_id() for _ in range(20_000)}
    assert len(ids) == 20_000
    for payment_id in ids:
        assert mask_text(payment_id) == payment_id
        assert payment_id.startswith("pay_")
