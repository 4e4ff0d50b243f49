"""Risk's pure rules: the daily cap ledger, step-up, and SMS challenges."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.risk.domain import (
    Challenge,
    DayUsage,
    RiskRules,
    decide_request,
    expire,
    is_expired,
    open_challenge,
    resend,
    resend_wait,
    resets_at,
    settle,
    verify,
)
from shared.events import PaymentMethod

RULES = RiskRules()
HASH_KEY = b"k" * 32
NOON = datetime(2027, 3, 1, 4, 0, tzinfo=UTC)  # 12:00 Asia/Shanghai


# ---------------------------------------------------------------------------
# the daily cap
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("used", "amount", "method", "outcome", "remaining"),
    [
        (0, 100, "bank_card", "approve", 4_999_900),
        (0, 199_999, "bank_card", "approve", 4_800_001),
        (0, 200_000, "bank_card", "step_up", 4_800_000),  # threshold is inclusive
        (4_500_000, 500_000, "bank_card", "step_up", 0),  # exactly at the cap: allowed
        (4_500_000, 500_001, "bank_card", "decline", 500_000),  # one fen over
        (4_999_999, 1, "medical_account", "approve", 0),
        (5_000_000, 1, "medical_account", "decline", 0),
        (4_850_000, 200_000, "bank_card", "decline", 150_000),
    ],
)
def test_daily_cap_arithmetic(
    used: int, amount: int, method: PaymentMethod, outcome: str, remaining: int
) -> None:
    decision = decide_request(DayUsage(kept=used), amount, method, NOON, RULES)
    assert decision.outcome == outcome
    assert decision.cap == 5_000_000
    assert decision.remaining == remaining
    assert decision.used == (used if outcome == "decline" else used + amount)
    assert decision.day == date(2027, 3, 1)
    if outcome == "decline":
        assert decision.decline_code == "daily_limit_exceeded"
    else:
        assert decision.decline_code is None


def test_decline_message_names_cap_headroom_and_reset() -> None:
    decision = decide_request(DayUsage(kept=4_850_000), 200_000, "bank_card", NOON, RULES)
    assert decision.message == (
        "daily cap 50,000.00 CNY reached; 1,500.00 CNY left today; resets 00:00 Asia/Shanghai"
    )
    assert decision.resets_at == datetime(2027, 3, 1, 16, 0, tzinfo=UTC)


def test_reserved_amounts_count_against_the_cap() -> None:
    usage = DayUsage(kept=2_000_000, reserved=3_000_000)
    assert decide_request(usage, 1, "bank_card", NOON, RULES).outcome == "decline"


@pytest.mark.parametrize(
    ("wallet_used", "amount", "outcome"),
    [(0, 199_999, "approve"), (300_000, 200_000, "step_up"), (300_001, 200_000, "decline")],
)
def test_wallet_daily_cap(wallet_used: int, amount: int, outcome: str) -> None:
    usage = DayUsage(kept=wallet_used, wallet_kept=wallet_used)
    decision = decide_request(usage, amount, "wallet", NOON, RULES)
    assert decision.outcome == outcome
    if outcome == "decline":
        assert decision.decline_code == "daily_limit_exceeded"
        assert decision.cap == 500_000
        assert decision.remaining == 500_000 - wallet_used
        assert decision.message is not None
        assert "wallet" in decision.message
        assert "PBOC" in decision.message


def test_wallet_cap_does_not_limit_other_methods() -> None:
    usage = DayUsage(kept=500_000, wallet_kept=500_000)
    assert decide_request(usage, 100, "bank_card", NOON, RULES).outcome == "approve"
    assert decide_request(usage, 100, "wallet", NOON, RULES).outcome == "decline"


def test_threshold_is_configurable() -> None:
    rules = replace(RULES, step_up_threshold_fen=100_000)
    assert decide_request(DayUsage(), 100_000, "bank_card", NOON, rules).outcome == "step_up"
    assert decide_request(DayUsage(), 99_999, "bank_card", NOON, rules).outcome == "approve"


def test_day_boundary_is_midnight_shanghai() -> None:
    before = datetime(2027, 3, 1, 15, 59, 59, tzinfo=UTC)
    after = datetime(2027, 3, 1, 16, 0, 0, tzinfo=UTC)
    d1 = decide_request(DayUsage(), 100, "bank_card", before, RULES)
    d2 = decide_request(DayUsage(), 100, "bank_card", after, RULES)
    assert d1.day == date(2027, 3, 1)
    assert d2.day == date(2027, 3, 2)
    assert d1.resets_at == after
    assert resets_at(d2.day) == after + timedelta(days=1)


def test_release_restores_headroom_and_keep_does_not() -> None:
    full = DayUsage().reserve(5_000_000, "bank_card")
    assert decide_request(full, 1, "bank_card", NOON, RULES).outcome == "decline"
    released = full.release(5_000_000, "bank_card")
    assert released.used == 0
    assert decide_request(released, 5_000_000, "bank_card", NOON, RULES).outcome == "step_up"
    kept = full.keep(5_000_000, "bank_card")
    assert (kept.kept, kept.reserved) == (5_000_000, 0)
    assert decide_request(kept, 1, "bank_card", NOON, RULES).outcome == "decline"


def test_wallet_usage_follows_reserve_keep_release() -> None:
    usage = DayUsage().reserve(300, "wallet").reserve(200, "wallet")
    assert usage.wallet_used == 500
    usage = usage.keep(300, "wallet").release(200, "wallet")
    figures = (usage.kept, usage.reserved, usage.wallet_kept, usage.wallet_reserved)
    assert figures == (300, 0, 300, 0)


def test_releasing_more_than_reserved_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        DayUsage(reserved=10).release(11, "bank_card")


@pytest.mark.parametrize(
    ("state", "outcome", "after"),
    [
        ("reserved", "succeeded", "kept"),
        ("reserved", "ended", "released"),
        ("kept", "ended", "kept"),
        ("released", "succeeded", "released"),
        ("declined", "ended", "declined"),
    ],
)
def test_settle(state: str, outcome: str, after: str) -> None:
    assert settle(state, outcome) == after  # type: ignore[arg-type]


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("request"),
            st.integers(min_value=1, max_value=2_000_000),
            st.sampled_from(["wallet", "bank_card", "medical_account"]),
        ),
        st.tuples(st.just("keep"), st.integers(min_value=0, max_value=1000), st.just("")),
        st.tuples(st.just("release"), st.integers(min_value=0, max_value=1000), st.just("")),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_cap_is_never_exceeded_under_any_order(sequence: list[tuple[str, int, str]]) -> None:
    usage = DayUsage()
    open_: list[tuple[int, PaymentMethod]] = []
    for op, n, method in sequence:
        if op == "request":
            decision = decide_request(usage, n, method, NOON, RULES)  # type: ignore[arg-type]
            if decision.reserves:
                usage = usage.reserve(n, method)  # type: ignore[arg-type]
                open_.append((n, method))  # type: ignore[arg-type]
                assert decision.used == usage.used
        elif open_:
            amount, m = open_.pop(n % len(open_))
            usage = usage.keep(amount, m) if op == "keep" else usage.release(amount, m)
        assert 0 <= usage.kept + usage.reserved <= RULES.daily_cap_fen
        assert 0 <= usage.wallet_used <= RULES.wallet_daily_cap_fen
        assert usage.reserved == sum(a for a, _ in open_)


# ---------------------------------------------------------------------------
# SMS challenges
# ---------------------------------------------------------------------------


def _challenge(now: datetime = NOON) -> tuple[Challenge, str]:
    return open_challenge(
        challenge_id="c-1",
        payment_id="p-1",
        payer_id="u-1",
        amount=300_000,
        payee_id="bureau:110000",
        payee_name="北京市医疗保障局",
        payer_phone_sealed="v1.sealed",
        now=now,
        rules=RULES,
        hash_key=HASH_KEY,
    )


def _wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def test_new_challenge_holds_no_clear_code() -> None:
    challenge, code = _challenge()
    assert len(code) == 6
    assert code.isdigit()
    assert code not in repr(challenge)
    assert challenge.expires_at == NOON + timedelta(seconds=300)
    assert (challenge.state, challenge.attempts) == ("pending", 0)


def test_codes_are_random() -> None:
    codes = {_challenge()[1] for _ in range(50)}
    assert len(codes) > 40


def test_right_code_passes_then_already_passed() -> None:
    challenge, code = _challenge()
    first = verify(challenge, code, now=NOON, rules=RULES, hash_key=HASH_KEY)
    assert (first.outcome, first.changed, first.release) == ("passed", True, False)
    assert first.challenge.state == "passed"
    again = verify(first.challenge, code, now=NOON, rules=RULES, hash_key=HASH_KEY)
    assert (again.outcome, again.changed) == ("already_passed", False)


@pytest.mark.parametrize(
    ("amount", "payee_id"),
    [(300_001, None), (None, "bureau:310000"), (299_999, "wallet:u-1")],
)
def test_code_is_bound_to_amount_and_payee(amount: int | None, payee_id: str | None) -> None:
    challenge, code = _challenge()
    result = verify(
        challenge,
        code,
        now=NOON,
        rules=RULES,
        hash_key=HASH_KEY,
        amount=amount,
        payee_id=payee_id,
    )
    assert result.outcome == "wrong_code"


def test_code_does_not_verify_under_another_key() -> None:
    challenge, code = _challenge()
    result = verify(challenge, code, now=NOON, rules=RULES, hash_key=b"x" * 32)
    assert result.outcome == "wrong_code"


def test_five_wrong_tries_exhaust_the_challenge() -> None:
    challenge, code = _challenge()
    for left in (4, 3, 2, 1):
        result = verify(challenge, _wrong(code), now=NOON, rules=RULES, hash_key=HASH_KEY)
        assert (result.outcome, result.attempts_left, result.decline_code) == (
            "wrong_code",
            left,
            None,
        )
        assert not result.release
        challenge = result.challenge
    fifth = verify(challenge, _wrong(code), now=NOON, rules=RULES, hash_key=HASH_KEY)
    assert (fifth.outcome, fifth.attempts_left, fifth.decline_code) == (
        "exhausted",
        0,
        "verification_failed",
    )
    assert fifth.release
    assert fifth.challenge.state == "dead"
    after = verify(fifth.challenge, code, now=NOON, rules=RULES, hash_key=HASH_KEY)
    assert (after.outcome, after.decline_code, after.changed) == (
        "closed",
        "verification_failed",
        False,
    )


def test_malformed_code_counts_as_a_wrong_try() -> None:
    challenge, _ = _challenge()
    result = verify(challenge, "12ab", now=NOON, rules=RULES, hash_key=HASH_KEY)
    assert (result.outcome, result.attempts_left) == ("wrong_code", 4)


def test_expiry() -> None:
    challenge, code = _challenge()
    just_before = challenge.expires_at - timedelta(microseconds=1)
    assert verify(challenge, code, now=just_before, rules=RULES, hash_key=HASH_KEY).outcome == (
        "passed"
    )
    assert not is_expired(challenge, just_before)
    assert is_expired(challenge, challenge.expires_at)
    late = verify(challenge, code, now=challenge.expires_at, rules=RULES, hash_key=HASH_KEY)
    assert (late.outcome, late.decline_code, late.release) == (
        "expired",
        "verification_expired",
        True,
    )
    closed = verify(late.challenge, code, now=NOON, rules=RULES, hash_key=HASH_KEY)
    assert (closed.outcome, closed.decline_code) == ("closed", "verification_expired")
    assert expire(challenge).state == "dead"


def test_resend_waits_sixty_seconds_and_keeps_attempts() -> None:
    challenge, old_code = _challenge()
    assert resend_wait(challenge, NOON + timedelta(seconds=59), RULES) == timedelta(seconds=1)
    later = NOON + timedelta(seconds=60)
    assert resend_wait(challenge, later, RULES) == timedelta(0)
    tried = verify(challenge, _wrong(old_code), now=NOON, rules=RULES, hash_key=HASH_KEY)
    fresh, code = resend(tried.challenge, now=later, rules=RULES, hash_key=HASH_KEY)
    assert fresh.challenge_id == challenge.challenge_id
    assert fresh.attempts == 1
    assert fresh.expires_at == later + timedelta(seconds=300)
    assert resend_wait(fresh, later + timedelta(seconds=30), RULES) == timedelta(seconds=30)
    if code != old_code:
        old = verify(fresh, old_code, now=later, rules=RULES, hash_key=HASH_KEY)
        assert old.outcome == "wrong_code"
    assert verify(fresh, code, now=later, rules=RULES, hash_key=HASH_KEY).outcome == "passed"


def test_resend_refuses_closed_challenges() -> None:
    challenge, _ = _challenge()
    with pytest.raises(ValueError, match="pending"):
        resend(expire(challenge), now=NOON, rules=RULES, hash_key=HASH_KEY)
    with pytest.raises(ValueError, match="pending"):
        resend(challenge, now=challenge.expires_at, rules=RULES, hash_key=HASH_KEY)
