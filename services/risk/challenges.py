"""What risk's HTTP routes do: check an SMS code, send a new one, read a daily cap.

Each is one transaction under the lock order of ``store`` (payer-day row, then the
challenge); outcomes and their risk.v1 events are written together.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta

import asyncpg

from services.risk import store
from services.risk.domain import (
    Challenge,
    RiskRules,
    attempts_left,
    is_expired,
    resend,
    resend_wait,
    resends_left,
    resets_at,
    verify,
)
from services.risk.handlers import (
    phone_code_wait_locked,
    phone_key,
    record_challenge,
    stage_step_up,
)
from services.risk.schemas import DailyCapPublic, ResendPublic, VerificationPublic
from shared.crypto import Sealer, phone_aad
from shared.errors import Conflict, NotFound, RateLimited
from shared.money import shanghai_day
from shared.person_keys import PersonKeyCopies
from shared.personal import PhoneErased
from shared.topics import TopicNames

Clock = Callable[[], datetime]


async def _locked_challenge(conn: asyncpg.Connection, payment_id: str) -> Challenge:
    """The payment's challenge, locked after its payer-day row (the lock order)."""
    reservation = await store.get_reservation(conn, payment_id)
    if reservation is not None:
        await store.lock_day(conn, reservation.cap_key, reservation.day)
    challenge = await store.get_challenge_of_payment(conn, payment_id, lock=True)
    if challenge is None:
        raise NotFound(
            f"no SMS challenge for payment {payment_id}; only payments that risk "
            "stepped up have one",
            param="payment_id",
        )
    return challenge


def _refuse_resend(challenge: Challenge, now: datetime, rules: RiskRules) -> None:
    if challenge.state != "pending" or is_expired(challenge, now):
        raise Conflict(
            "this challenge is closed (passed, failed or expired); a new code cannot "
            "be sent; start a new payment if it was declined",
            code="challenge_closed",
            param="payment_id",
        )
    wait = resend_wait(challenge, now, rules)
    if wait.total_seconds() > 0:
        seconds = math.ceil(wait.total_seconds())
        raise RateLimited(
            f"a code was sent less than {int(rules.resend_interval.total_seconds())} s "
            f"ago; ask again in {seconds} s",
            code="resend_too_soon",
            param="payment_id",
            details={"retry_after": seconds},
        )
    if resends_left(challenge, rules) == 0:
        raise Conflict(
            f"this payment already got {rules.max_resends} new codes, the most it may;"
            " enter the last code sent, or start a new payment",
            code="resend_limit_reached",
            param="payment_id",
        )


def _phone_limited(wait: timedelta, rules: RiskRules) -> RateLimited:
    seconds = math.ceil(wait.total_seconds())
    return RateLimited(
        f"this phone already got {rules.phone_codes_per_window} SMS codes in the last"
        f" {int(rules.phone_code_window.total_seconds() // 60)} minutes; ask again in"
        f" {seconds} s",
        code="sms_rate_limited",
        param="payment_id",
        details={"retry_after": seconds},
    )


class Challenges:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        rules: RiskRules,
        topics: TopicNames,
        sealer: Sealer,
        code_hash_key: bytes,
        phone_hash_key: bytes,
        clock: Clock,
    ) -> None:
        self._pool = pool
        self._rules = rules
        self._topics = topics
        self._sealer = sealer
        self._keys = PersonKeyCopies(sealer, remember_erased=True)
        self._code_hash_key = code_hash_key
        self._phone_hash_key = phone_hash_key
        self._clock = clock

    async def verify_code(self, payment_id: str, code: str) -> VerificationPublic:
        """Check ``code`` against the payment's challenge and record the outcome."""
        rules = self._rules
        async with self._pool.acquire() as conn, conn.transaction():
            challenge = await _locked_challenge(conn, payment_id)
            result = verify(
                challenge, code, now=self._clock(), rules=rules, hash_key=self._code_hash_key
            )
            if result.changed:
                await record_challenge(
                    conn, self._topics, result.challenge, rules=rules, release=result.release
                )
        return VerificationPublic(
            outcome=result.outcome,
            attempts_left=result.attempts_left,
            decline_code=result.decline_code,
            expires_at=result.challenge.expires_at,
        )

    async def _phone(self, conn: asyncpg.Connection, sealed: str, payment_id: str) -> str:
        """The challenge's clear phone; 409 ``phone_erased`` when the person was erased
        (issue 11): no code can reach them."""
        try:
            return await self._keys.open_phone(conn, sealed, aad=phone_aad(payment_id))
        except PhoneErased as exc:
            raise Conflict(
                "the payer's phone was erased; no code can be sent to it",
                code="phone_erased",
                param="payment_id",
            ) from exc

    async def resend_code(self, payment_id: str) -> ResendPublic:
        """A fresh code for a pending challenge (at most one per resend interval)."""
        now = self._clock()
        rules = self._rules
        async with self._pool.acquire() as conn, conn.transaction():
            challenge = await _locked_challenge(conn, payment_id)
            _refuse_resend(challenge, now, rules)
            phone_hash = challenge.phone_hash or phone_key(
                self._phone_hash_key,
                await self._phone(conn, challenge.payer_phone_sealed, payment_id),
            )
            wait = await phone_code_wait_locked(conn, phone_hash, now, rules)
            if wait is not None:
                raise _phone_limited(wait, rules)
            fresh, code = resend(challenge, now=now, rules=rules, hash_key=self._code_hash_key)
            await store.save_challenge(conn, fresh)
            await store.record_phone_code(conn, phone_hash, payment_id, now)
            await stage_step_up(
                conn, self._topics, self._sealer, fresh, code, cap=rules.daily_cap_fen
            )
        return ResendPublic(
            payment_id=fresh.payment_id,
            challenge_id=fresh.challenge_id,
            expires_at=fresh.expires_at,
            attempts_left=attempts_left(fresh, rules),
            next_resend_at=fresh.last_sent_at + rules.resend_interval,
        )

    async def daily_cap(self, caller: str, payer_id: str) -> DailyCapPublic:
        """The payer's cap figures for today (Asia/Shanghai), for the caller that owns
        the payer; the figures are the person's when the payer's ID is known (the cap
        follows the person, whichever payer id or caller paid).

        Another caller's payer, and a payer risk never saw, are both 404 ``not_found``,
        not 403: a 403 would confirm that the payer exists and belongs to someone else.
        """
        rules = self._rules
        day = shanghai_day(self._clock())
        async with self._pool.acquire() as conn:
            owner = await store.get_payer(conn, payer_id)
            if owner is None or owner.caller_id != caller:
                raise NotFound(
                    f"no payer {payer_id!r} for this caller; check the id", param="payer_id"
                )
            usage = await store.read_day(conn, owner.cap_key, day)
        return DailyCapPublic(
            payer_id=payer_id,
            day=day.isoformat(),
            cap=rules.daily_cap_fen,
            used=usage.used,
            remaining=max(rules.daily_cap_fen - usage.used, 0),
            resets_at=resets_at(day),
            wallet_cap=rules.wallet_daily_cap_fen,
            wallet_used=usage.wallet_used,
            wallet_remaining=max(rules.wallet_daily_cap_fen - usage.wallet_used, 0),
        )
