"""Payer codes: SMS one-time codes that confirm a step on an enrolled payer (a phone
change, a family binding, a records session).

``PayerCodes.issue`` runs in the caller's transaction: it checks the spacing between
codes for the same step (60 s) and the codes the phone got in the last hour (under a
lock on the phone's keyed hash), stores only the code's keyed hash
(``payer_code_domain.code_hash``) and stages ``PayerCodeIssued`` (phone and code
sealed for notify, bound to the code id) in the outbox: the code row and its SMS commit
together or not at all, and notify sends it exactly once. ``PayerCodes.confirm``
checks a presented code in its own transaction; a wrong try is counted even though
the request fails, and the confirmed step (``on_pass``) commits with the code's use.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import asyncpg
import structlog

from services.payment import payer_code_domain as rules_
from services.payment import payer_domain, store
from services.payment.config import PaymentSettings
from services.payment.payer_code_domain import Check, PayerCodePurpose
from services.payment.payments import stage_events
from services.payment.person_keys import PersonKeys
from services.payment.store import Payer, StoredPayerCode
from shared.crypto import KeyPurpose, code_aad, keyed_hash, phone_aad
from shared.errors import Conflict, DomainError, NotFound, RateLimited
from shared.events import PayerCodeIssued, Relation
from shared.masking import mask_phone
from shared.money import utcnow
from shared.personal import person_of_payer

log = structlog.get_logger(__name__)

T = TypeVar("T")
Clock = Callable[[], datetime]

# What each purpose's id is called in the API (the path parameter of its verification).
_WHAT: dict[PayerCodePurpose, str] = {
    "phone_change": "phone change",
    "family_binding": "family binding",
    "records_session": "records session",
}


def new_code_id() -> str:
    """``pc_`` + 120 random bits in base32 (never a digit run the log scrubber would mask)."""
    return "pc_" + base64.b32encode(secrets.token_bytes(15)).decode().lower()


@dataclass(frozen=True)
class IssuedCode:
    code_id: str
    phone_masked: str
    expires_at: datetime


def code_not_found(purpose: PayerCodePurpose, code_id: str, param: str = "id") -> NotFound:
    return NotFound(
        f"no {_WHAT[purpose]} {code_id!r} for this payer and caller; check the id",
        param=param,
    )


def code_error(result: Check, rules: rules_.CodeRules) -> DomainError:
    """The answer to a code that did not pass, saying what to do next."""
    if result.outcome in ("wrong_code", "exhausted"):
        left = result.attempts_left
        then = (
            "check the SMS and try again"
            if left
            else f"the code is dead after {rules.max_attempts} wrong tries; ask for a new one"
        )
        return DomainError(
            f"the SMS code is wrong; {left} attempt{'' if left == 1 else 's'} left; {then}",
            code="verification_failed",
            param="code",
            status=422,
            details={"attempts_left": left},
        )
    if result.outcome == "expired":
        return DomainError(
            "the SMS code expired (codes are valid 5 minutes); ask for a new one",
            code="code_expired",
            param="code",
            status=410,
        )
    if result.outcome == "used":
        return Conflict(
            "this code was already used: the step it confirms is done", code="code_used"
        )
    if result.code.dead_reason == "superseded":
        return DomainError(
            "a newer code was sent for this step; enter the latest code",
            code="code_superseded",
            param="code",
            status=410,
        )
    return DomainError(
        f"the code is dead after {rules.max_attempts} wrong tries; ask for a new one",
        code="code_exhausted",
        param="code",
        status=410,
    )


async def owned_payer(conn: asyncpg.Connection, caller: str, payer_id: str) -> Payer:
    """The caller's payer, locked until the transaction ends; 404 otherwise."""
    payer = await store.get_payer(conn, payer_id, for_update=True)
    if payer is None or payer.caller != caller:
        raise payer_domain.payer_not_found(payer_id)
    return payer


class PayerCodes:
    def __init__(
        self, settings: PaymentSettings, pool: asyncpg.Pool, *, clock: Clock = utcnow
    ) -> None:
        self._pool = pool
        self._sealer = settings.sealer()
        self._person_keys = PersonKeys(self._sealer, settings.topics.person_keys)
        self._phone_key = settings.hash_key_for(KeyPurpose.PHONE_HASH)
        self._code_key = settings.hash_key_for(KeyPurpose.CODE_HASH)
        self._rules = settings.payer_code_rules()
        self._topic = settings.topics.payments
        self._clock = clock

    def now(self) -> datetime:
        return self._clock()

    def phone_hash(self, phone: str) -> str:
        """The keyed hash a phone is counted and compared under (never the number)."""
        return keyed_hash(self._phone_key, "phone", phone)

    async def issue(
        self,
        conn: asyncpg.Connection,
        *,
        payer: Payer,
        purpose: PayerCodePurpose,
        subject: str,
        phone: str,
        relation: Relation | None = None,
        payer_name_masked: str | None = None,
        replaced_phone: str | None = None,
        phone_person: str | None = None,
    ) -> IssuedCode:
        """A new code for ``purpose`` on ``payer``, to ``phone``, in the caller's
        transaction; 429 (``resend_too_soon`` or ``sms_rate_limited``, with
        ``retry_after``) when the step or the phone must wait. An older pending code of
        the same step dies. On the event the phones are sealed under their owner's
        person key: ``phone_person`` (a relative's phone) or the payer's."""
        now = self.now()
        step = payer_domain.code_step(purpose, subject)
        wait = rules_.resend_wait(
            await store.last_code_sent(conn, payer.payer_id, purpose, step), now, self._rules
        )
        if wait.total_seconds() > 0:
            seconds = rules_.whole_seconds(wait)
            raise RateLimited(
                f"a code for this step was sent less than"
                f" {int(self._rules.resend_interval.total_seconds())} s ago; enter it, or ask"
                f" again in {seconds} s",
                code="resend_too_soon",
                param="payer_id",
                details={"retry_after": seconds},
            )
        phone_hash = self.phone_hash(phone)
        sent = await store.lock_phone_codes(conn, phone_hash, now - self._rules.window)
        wait = rules_.phone_wait(sent, now, self._rules)
        if wait.total_seconds() > 0:
            seconds = rules_.whole_seconds(wait)
            raise RateLimited(
                f"this phone already got {self._rules.per_phone} codes in the last hour;"
                f" try again in {seconds} s",
                code="sms_rate_limited",
                param="phone",
                details={"retry_after": seconds},
            )
        code_id = new_code_id()
        stored, code = rules_.issue(
            code_id=code_id,
            payer_id=payer.payer_id,
            purpose=purpose,
            subject=subject,
            now=now,
            rules=self._rules,
            hash_key=self._code_key,
        )
        phone_sealed = self._sealer.seal(phone, aad=phone_aad(code_id))  # this service's row
        payer_person = person_of_payer(payer.id_number_hash, payer.payer_id)
        await store.insert_payer_code(
            conn,
            stored,
            caller=payer.caller,
            phone_hash=phone_hash,
            phone_masked=mask_phone(phone),
            phone_sealed=phone_sealed,
            step_subject=step,
        )
        event = PayerCodeIssued(
            code_id=code_id,
            payer_id=payer.payer_id,
            purpose=purpose,
            phone_masked="",  # inside the sealed phone (issue 11)
            phone_sealed=await self._person_keys.sealed_phone(
                conn, phone_person or payer_person, phone, code_id
            ),
            code_sealed=self._sealer.seal(code, aad=code_aad(code_id)),
            expires_at=stored.expires_at,
            relation=relation,
            payer_name_masked=payer_name_masked,
            replaced_phone_sealed=(
                await self._person_keys.sealed_phone(conn, payer_person, replaced_phone, code_id)
                if replaced_phone is not None
                else None
            ),
        )
        await stage_events(
            conn,
            self._topic,
            [event],
            key=payer.payer_id,
            correlation_id=code_id,
            causation_id=None,
        )
        log.info(
            "payer_code_issued",
            code_id=code_id,
            payer_id=payer.payer_id,
            purpose=purpose,
            phone=mask_phone(phone),
        )
        return IssuedCode(code_id, mask_phone(phone), stored.expires_at)

    def open_payer_phone(self, payer: Payer) -> str:
        """A payer's clear enrolled phone (where its codes go)."""
        return self._sealer.open(payer.phone_sealed, aad=phone_aad(payer.phone_sealed_for))

    def open_phone(self, stored: StoredPayerCode) -> str:
        """The clear phone the code went to (a phone change applies it)."""
        return self._sealer.open(stored.phone_sealed, aad=phone_aad(stored.code.code_id))

    async def confirm(
        self,
        code_id: str,
        *,
        payer_id: str,
        caller: str,
        purpose: PayerCodePurpose,
        presented: str,
        on_pass: Callable[[asyncpg.Connection, Payer, StoredPayerCode], Awaitable[T]],
        not_found: NotFound | None = None,
    ) -> T:
        """Check ``presented`` against the code ``code_id`` (this payer's, this caller's,
        for ``purpose``, else 404); when it passes, ``on_pass`` runs in the transaction
        that marks the code used. A wrong try is counted (committed) before the 422.

        Lock order, as everywhere a payer's codes or bindings change: the payer row,
        then the code, then a binding."""
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                payer = await owned_payer(conn, caller, payer_id)
                stored = await store.get_payer_code(
                    conn, code_id, payer_id=payer_id, purpose=purpose, caller=caller
                )
                if stored is None:
                    raise not_found or code_not_found(purpose, code_id)
                result = rules_.check(
                    stored.code,
                    presented,
                    now=self.now(),
                    rules=self._rules,
                    hash_key=self._code_key,
                )
                if result.changed:
                    await store.save_payer_code(conn, result.code)
                if result.outcome == "passed":
                    value = await on_pass(conn, payer, stored)
            log.info(
                "payer_code_checked",
                code_id=code_id,
                payer_id=payer_id,
                purpose=purpose,
                outcome=result.outcome,
                attempts_left=result.attempts_left,
            )
            if result.outcome != "passed":
                raise code_error(result, self._rules)
            return value
