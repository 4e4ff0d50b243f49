"""Payer codes (phone change, family binding, records session): the pure rules.

DOMAIN.md "SMS one-time codes": 6 digits, valid 5 min, single use, at most 5 wrong
tries, 60 s before a resend, only a keyed hash bound to what the code confirms."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notify import domain as notify
from services.payment import payer_code_domain as codes
from services.payment import payer_domain
from shared.crypto import Sealer, code_aad, phone_aad
from shared.events import PayerCodeIssued, PayerEnrolled, decode, encode, new_event

KEY = b"k" * 32
NOW = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)
RULES = codes.CodeRules()


def issued(**kw: object) -> tuple[codes.PayerCode, str]:
    args: dict[str, object] = {
        "code_id": "pc_x",
        "payer_id": "u-1",
        "purpose": "family_binding",
        "subject": "u-2",
        "now": NOW,
        "rules": RULES,
        "hash_key": KEY,
    }
    args.update(kw)
    return codes.issue(**args)  # type: ignore[arg-type]


def test_a_code_is_six_digits_and_only_its_keyed_hash_is_kept() -> None:
    stored, code = issued()
    assert len(code) == 6 and code.isdigit()
    assert code not in stored.code_hash
    assert stored.expires_at == NOW + timedelta(minutes=5)
    assert (stored.state, stored.attempts) == ("pending", 0)


def test_the_right_code_passes_once() -> None:
    stored, code = issued()
    first = codes.check(stored, code, now=NOW, rules=RULES, hash_key=KEY)
    assert (first.outcome, first.code.state, first.changed) == ("passed", "used", True)
    again = codes.check(first.code, code, now=NOW, rules=RULES, hash_key=KEY)
    assert (again.outcome, again.changed) == ("used", False)


@pytest.mark.parametrize(
    ("field", "value"),
    [("code_id", "pc_y"), ("payer_id", "u-9"), ("purpose", "records_session"), ("subject", "u-3")],
)
def test_the_hash_binds_the_code_to_what_it_confirms(field: str, value: str) -> None:
    stored, code = issued()
    moved = codes.PayerCode(**{**stored.__dict__, field: value})
    assert codes.check(moved, code, now=NOW, rules=RULES, hash_key=KEY).outcome == "wrong_code"


def test_five_wrong_tries_kill_the_code_even_for_the_right_one_after() -> None:
    stored, code = issued()
    wrong = "000000" if code != "000000" else "111111"
    lefts = []
    for _ in range(5):
        result = codes.check(stored, wrong, now=NOW, rules=RULES, hash_key=KEY)
        stored = result.code
        lefts.append((result.outcome, result.attempts_left))
    assert lefts == [("wrong_code", n) for n in (4, 3, 2, 1)] + [("exhausted", 0)]
    assert (stored.state, stored.dead_reason) == ("dead", "exhausted")
    late = codes.check(stored, code, now=NOW, rules=RULES, hash_key=KEY)
    assert (late.outcome, late.changed) == ("dead", False)


def test_an_expired_code_does_not_pass_nor_count() -> None:
    stored, code = issued()
    later = NOW + timedelta(minutes=5)
    result = codes.check(stored, code, now=later, rules=RULES, hash_key=KEY)
    assert (result.outcome, result.changed, result.code.attempts) == ("expired", False, 0)


def test_resend_spacing_and_the_phone_window() -> None:
    assert codes.resend_wait(None, NOW, RULES) == timedelta(0)
    assert codes.resend_wait(NOW - timedelta(seconds=20), NOW, RULES) == timedelta(seconds=40)
    assert codes.resend_wait(NOW - timedelta(seconds=60), NOW, RULES) == timedelta(0)
    sent = [NOW - timedelta(minutes=m) for m in (50, 40, 30, 20, 10)]
    assert codes.phone_wait(sent[1:], NOW, RULES) == timedelta(0)
    assert codes.phone_wait(sent, NOW, RULES) == timedelta(minutes=10)
    assert codes.phone_wait([NOW - timedelta(minutes=61), *sent[1:]], NOW, RULES) == timedelta(0)
    assert codes.whole_seconds(timedelta(seconds=0.2)) == 1


@given(st.lists(st.integers(min_value=0, max_value=7200), max_size=12))
def test_after_the_wait_one_more_code_fits_the_window(ages: list[int]) -> None:
    sent = [NOW - timedelta(seconds=a) for a in ages]
    wait = codes.phone_wait(sent, NOW, RULES)
    later = NOW + wait
    assert sum(1 for t in sent if t > later - RULES.window) < RULES.per_phone


def test_binding_needs_another_known_person() -> None:
    ok = {"payer_id": "u-1", "payer_id_hash": "a", "relative_payer_id": "u-2"}
    assert payer_domain.binding_problem(**ok, relative_id_hash="b") is None
    itself = payer_domain.binding_problem(
        **{**ok, "relative_payer_id": "u-1"}, relative_id_hash="b"
    )
    assert itself is not None and itself[0] == "relative_is_payer"
    unknown = payer_domain.binding_problem(**ok, relative_id_hash=None)
    assert unknown is not None and unknown[0] == "relative_not_identified"
    same = payer_domain.binding_problem(**ok, relative_id_hash="a")
    assert same is not None and same[0] == "relative_is_payer" and "same person" in same[1]
    unknown_payer = {**ok, "payer_id_hash": None}
    assert payer_domain.binding_problem(**unknown_payer, relative_id_hash="a") is None


@pytest.mark.parametrize(
    ("method", "relation", "payer_hash", "beneficiary_hash", "needed"),
    [
        ("medical_account", "parent", "a", "b", True),
        ("medical_account", "parent", None, "b", True),
        ("medical_account", "self", "a", "a", False),
        ("medical_account", "self", None, "b", False),  # the payment names the payer itself
        ("medical_account", "self", "a", "b", False),  # "self" is the payer (not compared)
        ("medical_account", "parent", "a", "a", False),  # the payer after all
        ("wallet", "parent", "a", "b", False),
        ("bank_card", "child", None, "b", False),
    ],
)
def test_which_payments_need_a_bound_relative(
    method: str, relation: str, payer_hash: str | None, beneficiary_hash: str, needed: bool
) -> None:
    assert (
        payer_domain.needs_bound_relative(
            method=method,
            relation=relation,  # type: ignore[arg-type]
            payer_id_hash=payer_hash,
            beneficiary_id_hash=beneficiary_hash,
        )
        is needed
    )


def code_event(purpose: str, **kw: object) -> PayerCodeIssued:
    sealer = Sealer(KEY)
    return PayerCodeIssued(
        code_id="pc_x",
        payer_id="u-1",
        purpose=purpose,  # type: ignore[arg-type]
        phone_masked="139****0000",
        phone_sealed=sealer.seal("13900000000", aad=phone_aad("pc_x")),
        code_sealed=sealer.seal("482915", aad=code_aad("pc_x")),
        expires_at=NOW + timedelta(minutes=5),
        **kw,  # type: ignore[arg-type]
    )


def test_code_texts_name_what_the_code_confirms() -> None:
    event_id = uuid.uuid4()
    [binding] = notify.payer_code_notices(
        event_id, code_event("family_binding", relation="parent", payer_name_masked="张*"), "482915"
    )
    assert binding.kind == "sms_code" and binding.payment_id == "pc_x"
    assert "验证码482915" in binding.text and "您正在绑定亲属" in binding.text
    assert "张*" in binding.text and "父母" in binding.text
    [records] = notify.payer_code_notices(event_id, code_event("records_session"), "482915")
    assert "您正在查询消费明细" in records.text
    change = notify.payer_code_notices(
        event_id, code_event("phone_change", replaced_phone_sealed="sealed-old"), "482915"
    )
    assert [n.kind for n in change] == ["sms_code", "security_notice"]
    assert "您正在更换" in change[0].text and "139****0000" in change[0].text
    assert "482915" not in change[1].text and change[1].phone_sealed == "sealed-old"
    assert change[0].message_id != change[1].message_id
    with pytest.raises(ValueError, match="opened code"):
        notify.payer_code_notices(event_id, code_event("records_session"), "")


def test_the_new_events_round_trip_without_clear_values() -> None:
    event = code_event("phone_change", replaced_phone_sealed="x")
    raw = encode(new_event(event, producer="payment", key="u-1", correlation_id="pc_x"))
    assert decode(raw).payload == event
    assert b"13900000000" not in raw and b"482915" not in raw
    enrolled = PayerEnrolled(
        payer_id="u-1", caller_id="caller_x", id_number_hash=None, enrolled_at=NOW
    )
    raw = encode(new_event(enrolled, producer="payment", key="u-1", correlation_id="u-1"))
    assert decode(raw).payload == enrolled
