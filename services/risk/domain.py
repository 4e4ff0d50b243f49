"""Risk rules: the payer-day cap ledger, the step-up decision and SMS challenges.

Pure functions over plain data; no I/O. The store loads a payer's day (locked), these
functions decide, and the handler writes the result and its events in one transaction.

The day of a payment is the Asia/Shanghai day of its ``requested_at`` (never the clock
at consumption), so a redelivered or replayed request lands on the same day.
"""

from __future__ import annotations

import hmac
import math
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

from shared.crypto import keyed_hash
from shared.events import DeclineCode, PaymentMethod
from shared.money import SHANGHAI, format_cny, shanghai_day

CODE_DIGITS = 6


@dataclass(frozen=True)
class RiskRules:
    """The numbers risk decides with (DOMAIN.md defaults; settings override them)."""

    daily_cap_fen: int = 5_000_000
    wallet_daily_cap_fen: int = 500_000
    step_up_threshold_fen: int = 200_000
    code_ttl: timedelta = timedelta(seconds=300)
    max_attempts: int = 5
    resend_interval: timedelta = timedelta(seconds=60)
    max_resends: int = 3  # new codes per challenge
    challenge_lifetime: timedelta = timedelta(minutes=15)  # hard, from its opening
    phone_codes_per_window: int = 5  # SMS codes per phone, across payments
    phone_code_window: timedelta = timedelta(hours=1)
    cap_follows_person: bool = False  # count by the keyed ID hash when the payer's is known


# ---------------------------------------------------------------------------
# Whom the cap follows
# ---------------------------------------------------------------------------


def cap_key(payer_id: str, payer_id_hash: str | None) -> str:
    """Where a payer's usage is counted: the person (keyed ID hash) when known, so one
    person under two payer ids, or two callers, shares one cap; else the payer id.

    ``person:`` cannot collide with a payer id (payer ids never hold ':').
    """
    return f"person:{payer_id_hash}" if payer_id_hash else payer_id


# ---------------------------------------------------------------------------
# The payer-day ledger
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DayUsage:
    """One payer's usage of one Shanghai day, in fen. ``used`` counts kept + reserved."""

    kept: int = 0
    reserved: int = 0
    wallet_kept: int = 0
    wallet_reserved: int = 0

    @property
    def used(self) -> int:
        return self.kept + self.reserved

    @property
    def wallet_used(self) -> int:
        return self.wallet_kept + self.wallet_reserved

    def reserve(self, amount: int, method: PaymentMethod) -> DayUsage:
        wallet = amount if method == "wallet" else 0
        return replace(
            self,
            reserved=self.reserved + amount,
            wallet_reserved=self.wallet_reserved + wallet,
        )

    def keep(self, amount: int, method: PaymentMethod) -> DayUsage:
        """A reserved amount was paid: it stays counted, now as kept."""
        wallet = amount if method == "wallet" else 0
        return _checked(
            replace(
                self,
                reserved=self.reserved - amount,
                kept=self.kept + amount,
                wallet_reserved=self.wallet_reserved - wallet,
                wallet_kept=self.wallet_kept + wallet,
            )
        )

    def release(self, amount: int, method: PaymentMethod) -> DayUsage:
        """A reserved amount will not be paid: the headroom comes back."""
        wallet = amount if method == "wallet" else 0
        return _checked(
            replace(
                self,
                reserved=self.reserved - amount,
                wallet_reserved=self.wallet_reserved - wallet,
            )
        )


def _checked(usage: DayUsage) -> DayUsage:
    if min(usage.kept, usage.reserved, usage.wallet_kept, usage.wallet_reserved) < 0:
        raise ValueError(f"day usage would go negative: {usage}")
    return usage


ReservationState = Literal["reserved", "kept", "released", "declined"]


def settle(state: ReservationState, outcome: Literal["succeeded", "ended"]) -> ReservationState:
    """Where a reservation goes when the payment succeeds or ends without paying.

    Only a ``reserved`` amount moves; a reservation already kept, released or never
    made (declined) stays as it is, which makes redelivered outcomes no-ops.
    """
    if state != "reserved":
        return state
    return "kept" if outcome == "succeeded" else "released"


# ---------------------------------------------------------------------------
# Deciding a payment request
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """approve | decline | step_up, with the cap figures a person needs.

    For approve and step_up, ``used`` includes this payment (it is reserved); for a
    decline it is the usage before it. A wallet-rule decline reports the wallet cap.
    """

    outcome: Literal["approve", "decline", "step_up"]
    day: date
    cap: int
    used: int
    remaining: int
    resets_at: datetime
    decline_code: DeclineCode | None = None
    message: str | None = None

    @property
    def reserves(self) -> bool:
        return self.outcome != "decline"


def resets_at(day: date) -> datetime:
    """When the cap of ``day`` resets: 00:00 Asia/Shanghai of the next day, in UTC."""
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=SHANGHAI).astimezone(UTC)


def decide_request(
    usage: DayUsage,
    amount: int,
    method: PaymentMethod,
    requested_at: datetime,
    rules: RiskRules,
) -> Decision:
    """Approve, decline (daily cap or wallet daily cap) or ask for a step-up.

    ``usage`` is the payer's usage of the Shanghai day of ``requested_at``. Exactly
    reaching a cap is allowed; one fen over is declined.
    """
    if amount <= 0:
        raise ValueError("amount must be positive fen")
    day = shanghai_day(requested_at)
    reset = resets_at(day)
    remaining = rules.daily_cap_fen - usage.used
    if amount > remaining:
        left = max(remaining, 0)
        return Decision(
            "decline",
            day,
            rules.daily_cap_fen,
            usage.used,
            left,
            reset,
            decline_code="daily_limit_exceeded",
            message=(
                f"daily cap {format_cny(rules.daily_cap_fen)} CNY reached; "
                f"{format_cny(left)} CNY left today; resets 00:00 Asia/Shanghai"
            ),
        )
    if method == "wallet":
        wallet_left = max(rules.wallet_daily_cap_fen - usage.wallet_used, 0)
        if amount > wallet_left:
            return Decision(
                "decline",
                day,
                rules.wallet_daily_cap_fen,
                usage.wallet_used,
                wallet_left,
                reset,
                decline_code="daily_limit_exceeded",
                message=(
                    f"wallet-balance daily cap {format_cny(rules.wallet_daily_cap_fen)} CNY "
                    f"reached (PBOC rule for wallet payments); {format_cny(wallet_left)} CNY "
                    "left today by wallet; resets 00:00 Asia/Shanghai; "
                    "pay by bank card or medical account instead"
                ),
            )
    used = usage.used + amount
    outcome: Literal["approve", "step_up"] = (
        "step_up" if amount >= rules.step_up_threshold_fen else "approve"
    )
    return Decision(outcome, day, rules.daily_cap_fen, used, rules.daily_cap_fen - used, reset)


def phone_limited(
    decision: Decision, used_before: int, wait: timedelta, rules: RiskRules
) -> Decision:
    """A step-up whose code may not be sent (the phone had its codes for the hour):
    declined with what to do, nothing reserved."""
    minutes = max(math.ceil(wait.total_seconds() / 60), 1)
    return Decision(
        "decline",
        decision.day,
        decision.cap,
        used_before,
        max(decision.cap - used_before, 0),
        decision.resets_at,
        decline_code="verification_failed",
        message=(
            f"no SMS code could be sent: this phone already got "
            f"{rules.phone_codes_per_window} codes in the last "
            f"{int(rules.phone_code_window.total_seconds() // 60)} minutes; try again in "
            f"{minutes} min, or pay less than {format_cny(rules.step_up_threshold_fen)} CNY"
        ),
    )


# ---------------------------------------------------------------------------
# SMS challenges
# ---------------------------------------------------------------------------

ChallengeState = Literal["pending", "passed", "dead"]
VerifyOutcome = Literal["passed", "already_passed", "wrong_code", "exhausted", "expired", "closed"]


@dataclass(frozen=True)
class Challenge:
    """An SMS step-up challenge. The code itself is never kept: only its keyed hash,
    bound to the challenge, the payment, the amount and the payee."""

    challenge_id: str
    payment_id: str
    payer_id: str
    code_hash: str
    amount: int
    payee_id: str
    payee_name: str
    payer_phone_sealed: str  # opaque sealed token, passed on to notify on a resend
    expires_at: datetime
    attempts: int
    state: ChallengeState
    decline_code: DeclineCode | None
    last_sent_at: datetime
    opened_at: datetime  # the hard expiry counts from here, whatever the resends
    resends: int = 0
    phone_hash: str | None = None  # keyed hash of the phone the codes go to


def new_code() -> str:
    """Six random digits from the OS's CSPRNG."""
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def code_hash(
    hash_key: bytes, challenge_id: str, payment_id: str, amount: int, payee_id: str, code: str
) -> str:
    """The keyed hash stored for a code; a change of amount or payee gives another hash."""
    return keyed_hash(hash_key, "sms", challenge_id, payment_id, str(amount), payee_id, code)


def open_challenge(
    *,
    challenge_id: str,
    payment_id: str,
    payer_id: str,
    amount: int,
    payee_id: str,
    payee_name: str,
    payer_phone_sealed: str,
    now: datetime,
    rules: RiskRules,
    hash_key: bytes,
    phone_hash: str | None = None,
) -> tuple[Challenge, str]:
    """A fresh challenge and its clear code (to be sealed for notify, then forgotten)."""
    code = new_code()
    challenge = Challenge(
        challenge_id=challenge_id,
        payment_id=payment_id,
        payer_id=payer_id,
        code_hash=code_hash(hash_key, challenge_id, payment_id, amount, payee_id, code),
        amount=amount,
        payee_id=payee_id,
        payee_name=payee_name,
        payer_phone_sealed=payer_phone_sealed,
        expires_at=min(now + rules.code_ttl, now + rules.challenge_lifetime),
        attempts=0,
        state="pending",
        decline_code=None,
        last_sent_at=now,
        opened_at=now,
        phone_hash=phone_hash,
    )
    return challenge, code


@dataclass(frozen=True)
class Verification:
    """What one verify did: the answer, the new challenge, and the effects to record."""

    outcome: VerifyOutcome
    challenge: Challenge
    attempts_left: int
    decline_code: DeclineCode | None
    changed: bool  # the challenge changed: store it and publish StepUpPassed/StepUpFailed
    release: bool  # the challenge died: release the payment's reservation


def attempts_left(challenge: Challenge, rules: RiskRules) -> int:
    return max(rules.max_attempts - challenge.attempts, 0)


def expire(challenge: Challenge) -> Challenge:
    return replace(challenge, state="dead", decline_code="verification_expired")


def is_expired(challenge: Challenge, now: datetime) -> bool:
    return challenge.state == "pending" and now >= challenge.expires_at


def verify(
    challenge: Challenge,
    code: str,
    *,
    now: datetime,
    rules: RiskRules,
    hash_key: bytes,
    amount: int | None = None,
    payee_id: str | None = None,
) -> Verification:
    """Check ``code`` against ``challenge`` at ``now``.

    ``amount`` and ``payee_id`` default to the challenge's; passing others (a payment
    whose amount or payee changed) makes even the right code a mismatch.
    """
    left = attempts_left(challenge, rules)
    if challenge.state == "passed":
        return Verification("already_passed", challenge, left, None, changed=False, release=False)
    if challenge.state == "dead":
        return Verification(
            "closed", challenge, left, challenge.decline_code, changed=False, release=False
        )
    if now >= challenge.expires_at:
        dead = expire(challenge)
        return Verification(
            "expired", dead, left, "verification_expired", changed=True, release=True
        )
    presented = code_hash(
        hash_key,
        challenge.challenge_id,
        challenge.payment_id,
        challenge.amount if amount is None else amount,
        challenge.payee_id if payee_id is None else payee_id,
        code,
    )
    if hmac.compare_digest(presented, challenge.code_hash):
        passed = replace(challenge, state="passed")
        return Verification("passed", passed, left, None, changed=True, release=False)
    tried = replace(challenge, attempts=challenge.attempts + 1)
    left = attempts_left(tried, rules)
    if left == 0:
        dead = replace(tried, state="dead", decline_code="verification_failed")
        return Verification("exhausted", dead, 0, "verification_failed", changed=True, release=True)
    return Verification("wrong_code", tried, left, None, changed=True, release=False)


def resend_wait(challenge: Challenge, now: datetime, rules: RiskRules) -> timedelta:
    """How long until a new code may be sent; zero when it may be sent now."""
    return max(challenge.last_sent_at + rules.resend_interval - now, timedelta(0))


def hard_expiry(challenge: Challenge, rules: RiskRules) -> datetime:
    """When the challenge dies whatever happens: ``challenge_lifetime`` after opening."""
    return challenge.opened_at + rules.challenge_lifetime


def resends_left(challenge: Challenge, rules: RiskRules) -> int:
    return max(rules.max_resends - challenge.resends, 0)


def phone_code_wait(sent_at: list[datetime], now: datetime, rules: RiskRules) -> timedelta:
    """How long until one more code may go to a phone that got codes at ``sent_at``;
    zero when it may go now. At most ``phone_codes_per_window`` in any window."""
    recent = sorted(t for t in sent_at if t > now - rules.phone_code_window)
    over = len(recent) - rules.phone_codes_per_window
    if over < 0:
        return timedelta(0)
    # The oldest codes must leave the window until one place is free.
    return max(recent[over] + rules.phone_code_window - now, timedelta(seconds=1))


def resend(
    challenge: Challenge, *, now: datetime, rules: RiskRules, hash_key: bytes
) -> tuple[Challenge, str]:
    """A new code for a pending challenge: same challenge, new hash, expiry from now
    but never past its hard expiry.

    Wrong attempts already made still count (a resend does not buy more guesses).
    The caller checks ``resend_wait``, ``resends_left`` and that the challenge is
    pending and unexpired.
    """
    if challenge.state != "pending" or is_expired(challenge, now):
        raise ValueError("only a pending, unexpired challenge can get a new code")
    if resends_left(challenge, rules) == 0:
        raise ValueError("this challenge had all its resends")
    code = new_code()
    fresh = replace(
        challenge,
        code_hash=code_hash(
            hash_key,
            challenge.challenge_id,
            challenge.payment_id,
            challenge.amount,
            challenge.payee_id,
            code,
        ),
        expires_at=min(now + rules.code_ttl, hard_expiry(challenge, rules)),
        last_sent_at=now,
        resends=challenge.resends + 1,
    )
    return fresh, code
