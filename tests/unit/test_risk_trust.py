"""Risk's trust rules (issue 11): whom the cap follows, resends per challenge, the
challenge's hard expiry, SMS codes per phone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.risk.domain import (
    Challenge,
    Decision,
    RiskRules,
    cap_key,
    hard_expiry,
    is_expired,
    open_challenge,
    phone_code_wait,
    phone_limited,
    resend,
    resends_left,
)

RULES = RiskRules()
HASH_KEY = b"k" * 32
NOON = datetime(2027, 3, 1, 4, 0, tzinfo=UTC)


def _challenge(now: datetime = NOON) -> Challenge:
    challenge, _ = open_challenge(
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
        phone_hash="ph",
    )
    return challenge


def test_the_cap_key_is_the_person_when_known() -> None:
    assert cap_key("u-1", None) == "u-1"
    assert cap_key("u-1", "") == "u-1"
    assert cap_key("u-1", "abc") == cap_key("u-2", "abc") == "person:abc"


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}", fullmatch=True))
def test_no_payer_id_can_pose_as_a_person(payer_id: str) -> None:
    assert cap_key(payer_id, None) == payer_id
    assert not payer_id.startswith("person:")


def test_at_most_max_resends_new_codes() -> None:
    challenge = _challenge()
    assert (challenge.resends, resends_left(challenge, RULES)) == (0, 3)
    now = NOON
    for n in range(1, 4):
        now += timedelta(seconds=61)
        challenge, _ = resend(challenge, now=now, rules=RULES, hash_key=HASH_KEY)
        assert challenge.resends == n
    assert resends_left(challenge, RULES) == 0
    with pytest.raises(ValueError, match="all its resends"):
        resend(challenge, now=now + timedelta(seconds=61), rules=RULES, hash_key=HASH_KEY)


def test_resends_never_push_the_expiry_past_the_hard_one() -> None:
    rules = RiskRules(max_resends=100)
    challenge = _challenge()
    assert hard_expiry(challenge, rules) == NOON + timedelta(minutes=15)
    now = NOON
    while not is_expired(challenge, now + timedelta(seconds=61)):
        now += timedelta(seconds=61)
        challenge, _ = resend(challenge, now=now, rules=rules, hash_key=HASH_KEY)
        assert challenge.expires_at <= NOON + timedelta(minutes=15)
    # Kept alive one code a minute, it still dies at the hard expiry.
    assert challenge.expires_at == NOON + timedelta(minutes=15)
    assert is_expired(challenge, NOON + timedelta(minutes=15))


def test_a_lifetime_shorter_than_a_code_caps_the_first_code() -> None:
    rules = RiskRules(challenge_lifetime=timedelta(minutes=2))
    challenge, _ = open_challenge(
        challenge_id="c",
        payment_id="p",
        payer_id="u",
        amount=1,
        payee_id="x",
        payee_name="x",
        payer_phone_sealed="s",
        now=NOON,
        rules=rules,
        hash_key=HASH_KEY,
    )
    assert challenge.expires_at == NOON + timedelta(minutes=2)


@pytest.mark.parametrize(
    ("minutes_ago", "wait"),
    [
        ([], timedelta(0)),
        ([1, 2, 3, 4], timedelta(0)),  # 4 in the hour: a 5th may go
        ([10, 20, 30, 40, 50], timedelta(minutes=10)),  # 5: wait until the 50-min-old one ages out
        ([10, 20, 30, 40, 50, 70], timedelta(minutes=10)),  # older than the hour: not counted
        ([1, 1, 1, 1, 1, 1], timedelta(minutes=59)),  # 6 (a race): both oldest must age out
    ],
)
def test_codes_per_phone_per_hour(minutes_ago: list[int], wait: timedelta) -> None:
    sent = [NOON - timedelta(minutes=m) for m in minutes_ago]
    assert phone_code_wait(sent, NOON, RULES) == wait


@given(st.lists(st.integers(0, 7200), max_size=20))
def test_after_the_wait_a_code_may_go(seconds_ago: list[int]) -> None:
    sent = [NOON - timedelta(seconds=s) for s in seconds_ago]
    wait = phone_code_wait(sent, NOON, RULES)
    assert phone_code_wait(sent, NOON + wait, RULES) == timedelta(0)


def test_a_step_up_beyond_the_phone_limit_is_declined_saying_what_to_do() -> None:
    step_up = Decision("step_up", NOON.date(), 5_000_000, 300_000, 4_700_000, NOON)
    declined = phone_limited(step_up, 0, timedelta(minutes=9, seconds=1), RULES)
    assert (declined.outcome, declined.decline_code) == ("decline", "verification_failed")
    assert (declined.used, declined.remaining) == (0, 5_000_000)
    assert not declined.reserves
    assert declined.message is not None
    assert "5 codes in the last 60 minutes" in declined.message
    assert "try again in 10 min" in declined.message
    assert "2,000.00 CNY" in declined.message
