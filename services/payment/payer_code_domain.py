"""Rules of payer codes: SMS one-time codes that confirm a step on an enrolled payer.
Pure: no I/O.

A payer code confirms one thing (its ``purpose`` and ``subject``): a new phone
(``phone_change``, the subject is the keyed hash of the new phone), a relative's
consent to a family binding (``family_binding``, the subject is the relative's payer
id), or a records session (``records_session``, the subject is the payer itself).
DOMAIN.md "SMS one-time codes": 6 digits, valid 5 minutes, single use, at most 5 wrong
tries, 60 s before another code for the same step, never kept in clear: only a keyed
hash bound to the code id, the payer, the purpose and the subject, so a code cannot
confirm anything else. A phone gets at most ``per_phone`` codes in any hour.
"""

from __future__ import annotations

import hmac
import math
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from shared.crypto import keyed_hash

CODE_DIGITS = 6

PayerCodePurpose = Literal["phone_change", "family_binding", "records_session"]
CodeState = Literal["pending", "used", "dead"]
DeadReason = Literal["exhausted", "superseded"]
CheckOutcome = Literal["passed", "wrong_code", "exhausted", "expired", "used", "dead"]


@dataclass(frozen=True)
class CodeRules:
    ttl: timedelta = timedelta(minutes=5)
    max_attempts: int = 5
    resend_interval: timedelta = timedelta(seconds=60)
    per_phone: int = 5  # codes a phone may get in any ``window``
    window: timedelta = timedelta(hours=1)


@dataclass(frozen=True)
class PayerCode:
    """A code as stored: its keyed hash, never the code."""

    code_id: str
    payer_id: str
    purpose: PayerCodePurpose
    subject: str
    code_hash: str
    expires_at: datetime
    attempts: int
    state: CodeState
    dead_reason: DeadReason | None
    sent_at: datetime


def new_code() -> str:
    """Six random digits from the OS's CSPRNG."""
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def code_hash(
    hash_key: bytes,
    *,
    code_id: str,
    payer_id: str,
    purpose: PayerCodePurpose,
    subject: str,
    code: str,
) -> str:
    """The keyed hash stored for ``code``: bound to the code id, the payer, the purpose
    and what it confirms, so the same digits hash differently for anything else."""
    return keyed_hash(hash_key, "payer_code", code_id, payer_id, purpose, subject, code)


def issue(
    *,
    code_id: str,
    payer_id: str,
    purpose: PayerCodePurpose,
    subject: str,
    now: datetime,
    rules: CodeRules,
    hash_key: bytes,
) -> tuple[PayerCode, str]:
    """A fresh pending code and its clear digits (to be sealed for notify, then forgotten)."""
    code = new_code()
    stored = PayerCode(
        code_id=code_id,
        payer_id=payer_id,
        purpose=purpose,
        subject=subject,
        code_hash=code_hash(
            hash_key,
            code_id=code_id,
            payer_id=payer_id,
            purpose=purpose,
            subject=subject,
            code=code,
        ),
        expires_at=now + rules.ttl,
        attempts=0,
        state="pending",
        dead_reason=None,
        sent_at=now,
    )
    return stored, code


def attempts_left(code: PayerCode, rules: CodeRules) -> int:
    return max(rules.max_attempts - code.attempts, 0)


@dataclass(frozen=True)
class Check:
    """What one presented code came to, and the code's new state (store it when
    ``changed``)."""

    outcome: CheckOutcome
    code: PayerCode
    attempts_left: int
    changed: bool


def check(
    stored: PayerCode, presented: str, *, now: datetime, rules: CodeRules, hash_key: bytes
) -> Check:
    """Check ``presented`` against ``stored`` at ``now``: a used, dead or expired code
    stays so (its attempts untouched); a wrong code costs one attempt, the last one kills it."""
    left = attempts_left(stored, rules)
    if stored.state == "used":
        return Check("used", stored, left, changed=False)
    if stored.state == "dead":
        return Check("dead", stored, left, changed=False)
    if now >= stored.expires_at:
        return Check("expired", stored, left, changed=False)
    expected = code_hash(
        hash_key,
        code_id=stored.code_id,
        payer_id=stored.payer_id,
        purpose=stored.purpose,
        subject=stored.subject,
        code=presented,
    )
    if hmac.compare_digest(expected, stored.code_hash):
        return Check("passed", replace(stored, state="used"), left, changed=True)
    tried = replace(stored, attempts=stored.attempts + 1)
    left = attempts_left(tried, rules)
    if left == 0:
        dead = replace(tried, state="dead", dead_reason="exhausted")
        return Check("exhausted", dead, 0, changed=True)
    return Check("wrong_code", tried, left, changed=True)


def resend_wait(last_sent_at: datetime | None, now: datetime, rules: CodeRules) -> timedelta:
    """How long until another code for the same step may go (zero: now)."""
    if last_sent_at is None:
        return timedelta(0)
    return max(last_sent_at + rules.resend_interval - now, timedelta(0))


def phone_wait(sent_at: list[datetime], now: datetime, rules: CodeRules) -> timedelta:
    """How long until one more code may go to a phone that got codes at ``sent_at``
    (zero: now). At most ``rules.per_phone`` in any ``rules.window``."""
    recent = sorted(t for t in sent_at if t > now - rules.window)
    over = len(recent) - rules.per_phone
    if over < 0:
        return timedelta(0)
    return max(recent[over] + rules.window - now, timedelta(seconds=1))


def whole_seconds(wait: timedelta) -> int:
    """A wait as ``Retry-After`` says it: whole seconds, rounded up, at least 1."""
    return max(math.ceil(wait.total_seconds()), 1)
