"""The event contract: exact round-trips, upcasting, and refusal of what a reader can't know."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import UndecodableEvent
from shared.events import (
    BeneficiaryRef,
    EventPayload,
    PaymentDetails,
    PaymentRequested,
    Purpose,
    RiskDeclined,
    decode,
    encode,
    new_event,
    register,
    upcaster,
)

aware_datetimes = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)


def details(amount: int, requested_at: datetime, payer_id: str = "u-1001") -> PaymentDetails:
    return PaymentDetails(
        payment_id="pay_" + uuid.uuid4().hex,
        payer_id=payer_id,
        payer_phone_masked="138****8000",
        payer_phone_sealed="v1.sealed",
        beneficiary=BeneficiaryRef(
            id_number_masked="110105********002X",
            id_number_hash="ab" * 32,
            name="张三",
            relation="self",
        ),
        purpose=Purpose(
            type="premium", scheme="urban_rural_resident", region="110000", period="2027"
        ),
        amount=amount,
        method="bank_card",
        payee_id="bureau:110000",
        payee_name="北京市医疗保障局",
        requested_at=requested_at,
    )


@given(
    amount=st.integers(min_value=1, max_value=10**15),
    at=aware_datetimes,
    payer=st.text(min_size=1, max_size=40),
)
def test_payment_requested_round_trips_exactly(amount: int, at: datetime, payer: str) -> None:
    env = new_event(
        PaymentRequested(payment=details(amount, at, payer)),
        producer="payment",
        key=payer,
        correlation_id="pay_1",
        occurred_at=at,
    )
    raw = encode(env)
    event = decode(raw)
    assert event.envelope == env
    assert isinstance(event.payload, PaymentRequested)
    assert event.payload.payment.amount == amount
    assert type(event.payload.payment.amount) is int
    assert encode(event.envelope) == raw


def test_times_are_normalised_to_utc() -> None:
    cst = timezone(timedelta(hours=8))
    env = new_event(
        PaymentRequested(payment=details(100, datetime(2026, 1, 1, 8, 0, tzinfo=cst))),
        producer="payment",
        key="u-1",
        correlation_id=None,
        occurred_at=datetime(2026, 1, 1, 8, 0, tzinfo=cst),
    )
    assert env.occurred_at == datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    assert env.occurred_at.utcoffset() == timedelta(0)
    assert b'"occurred_at":"2026-01-01T00:00:00Z"' in encode(env)


def test_amounts_refuse_floats_in_the_wire_form() -> None:
    env = new_event(
        PaymentRequested(payment=details(38000, datetime.now(UTC))),
        producer="payment",
        key="u-1",
        correlation_id=None,
    )
    raw = encode(env).replace(b'"amount":38000', b'"amount":380.5')
    with pytest.raises(UndecodableEvent):
        decode(raw)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not a valid envelope"),
        (None, "no value"),
        (b"{}", "not a valid envelope"),
    ],
)
def test_garbage_is_undecodable(raw: bytes | None, reason: str) -> None:
    with pytest.raises(UndecodableEvent, match=reason):
        decode(raw)


def _envelope(event_type: str, version: int, payload: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "event_type": event_type,
            "schema_version": version,
            "occurred_at": "2026-11-23T00:00:00Z",
            "producer": "risk",
            "key": "u-1",
            "correlation_id": "pay_1",
            "causation_id": None,
            "payload": payload,
        }
    ).encode()


def test_unknown_event_type_is_undecodable() -> None:
    with pytest.raises(UndecodableEvent, match="unknown event_type"):
        decode(_envelope("SomethingNew", 1, {}))


def test_newer_schema_version_than_the_reader_knows_is_undecodable() -> None:
    with pytest.raises(UndecodableEvent, match="newer than this reader"):
        decode(_envelope("RiskDeclined", 2, {}))


@register
class _Greeting(EventPayload):
    """A test-only event at version 3 with upcasters from 1 and 2."""

    event_type: ClassVar[str] = "TestGreeting"
    schema_version: ClassVar[int] = 3
    text: str
    amount: int


@upcaster("TestGreeting", 1)
def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {"text": data["message"], "yuan": data["yuan"]}


@upcaster("TestGreeting", 2)
def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    return {"text": data["text"], "amount": data["yuan"] * 100}


def test_old_versions_are_upcast_step_by_step() -> None:
    event = decode(_envelope("TestGreeting", 1, {"message": "hi", "yuan": 3}))
    assert event.payload == _Greeting(text="hi", amount=300)
    assert decode(_envelope("TestGreeting", 3, {"text": "x", "amount": 1})).payload.amount == 1  # type: ignore[attr-defined]


def test_risk_decline_carries_the_figures() -> None:
    payload = RiskDeclined(
        payment_id="p",
        payer_id="u",
        day="2026-11-23",
        cap=5_000_000,
        used=4_850_000,
        remaining=150_000,
        decline_code="daily_limit_exceeded",
        message="daily cap 50,000.00 CNY reached",
    )
    env = new_event(payload, producer="risk", key="u", correlation_id="p")
    assert decode(encode(env)).payload == payload
