"""Taking a payment in, exactly once per (caller, Idempotency-Key).

One transaction does it all: it takes the key's transaction-scoped advisory lock
(``pg_try_advisory_xact_lock``) and reads the key's row in one statement, then stores
the payment, its PaymentRequested outbox row and the answer, and commits. A replay
with the same body gets the first answer byte for byte (it needs no lock); another
body gets 422; a duplicate while the first runs finds the lock taken and gets 409. A
crash (or an error) before the commit leaves nothing: no claim to release or take
over, the caller may retry at once. Rows left ``in_flight`` by an older version of this
service (which claimed keys in a transaction of their own) are still honoured: 409,
and taken over after ``idempotency_takeover_seconds``. ``IdempotencyKeyPurger``
deletes keys past their expiry.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import structlog

from services.payment import domain, payment_list, relatives, store, validation, webhooks
from services.payment.config import PaymentSettings
from services.payment.payers import Payers
from services.payment.payments import stage_events
from services.payment.person_keys import KnownKeys, PersonKeys
from services.payment.premium_domain import CheckedPremium, premium_slot
from services.payment.premiums import Premiums
from services.payment.schemas import PaymentCreate, public_view
from shared.crypto import KeyPurpose, keyed_hash
from shared.errors import Conflict, DomainError
from shared.events import BeneficiaryRef, PaymentDetails, Purpose
from shared.masking import mask_id_number
from shared.money import shanghai_day, utcnow
from shared.outbox import staged_together
from shared.personal import person_of_payer

log = structlog.get_logger(__name__)

CREATE_ROUTE = "POST /v1/payments"


def new_payment_id() -> str:
    """``pay_`` + 120 random bits in base32 (a-z, 2-7).

    Not hex: a long run of decimal digits in a hex id looks like a phone or card number
    to the log scrubber, which would mask it and break log correlation.
    """
    return "pay_" + base64.b32encode(secrets.token_bytes(15)).decode().lower()


@dataclass(frozen=True)
class IntakeResponse:
    """The HTTP answer to a payment request: first made now, or replayed as stored."""

    status: int
    body: str  # JSON text, sent as is
    replayed: bool


class _KeyTaken(Exception):
    """An answer or claim for the key committed after this transaction looked."""


def in_flight_error() -> Conflict:
    return Conflict(
        "the first request with this Idempotency-Key is still being processed; retry shortly",
        code="request_in_flight",
        param="Idempotency-Key",
    )


def reused_error() -> DomainError:
    return DomainError(
        "this Idempotency-Key was already used with a different body; use a new"
        " key for a new request, or resend the first body unchanged",
        code="idempotency_key_reused",
        param="Idempotency-Key",
        status=422,
    )


Work = Callable[[asyncpg.Connection], Awaitable[tuple[str, int, str]]]


class IdempotentRequests:
    """Run a request once per (caller, Idempotency-Key): the same answer for a replay
    with the same body, 422 for another body, 409 while the first is in flight.

    ``work`` runs inside the transaction that locks the key and stores the answer, and
    returns (resource id, status, JSON text). An error it raises is answered and not
    stored (the transaction rolls back).
    """

    def __init__(self, settings: PaymentSettings, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._ttl = timedelta(hours=settings.idempotency_ttl_hours)
        self._takeover_after = timedelta(seconds=settings.idempotency_takeover_seconds)

    async def answered(self, caller: str, key: str) -> bool:
        """Whether (caller, key) holds a stored answer (a replay would answer it)."""
        return bool(
            await self._pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM idempotency_keys WHERE caller = $1"
                " AND idem_key = $2 AND state = 'done' AND expires_at > now())",
                caller,
                key,
            )
        )

    async def once(self, caller: str, key: str, fingerprint: str, work: Work) -> IntakeResponse:
        async with self._pool.acquire() as conn:
            for _ in range(3):
                try:
                    return await self._attempt(conn, caller, key, fingerprint, work)
                except _KeyTaken:
                    continue  # rolled back: look at the key again
        raise in_flight_error()

    async def _attempt(
        self, conn: asyncpg.Connection, caller: str, key: str, fingerprint: str, work: Work
    ) -> IntakeResponse:
        async with conn.transaction():
            look = await store.lock_key(
                conn,
                caller=caller,
                key=key,
                request_hash=fingerprint,
                takeover_after=self._takeover_after,
            )
            if look.outcome == "replay":
                assert look.response_status is not None
                assert look.response_body is not None
                return IntakeResponse(look.response_status, look.response_body, replayed=True)
            if look.outcome == "reused":
                raise reused_error()
            if look.outcome == "in_flight":
                raise in_flight_error()
            async with staged_together(conn):  # a new payer's events too: one write
                resource_id, status, text = await work(conn)
            stored = await store.save_key(
                conn,
                caller=caller,
                key=key,
                request_hash=fingerprint,
                payment_id=resource_id,
                response_status=status,
                response_body=text,
                ttl=self._ttl,
                takeover_after=self._takeover_after,
            )
            if not stored:
                raise _KeyTaken
        return IntakeResponse(status, text, replayed=False)


class Intake:
    def __init__(
        self,
        settings: PaymentSettings,
        pool: asyncpg.Pool,
        requests: IdempotentRequests,
        payers: Payers,
        premiums: Premiums,
        person_keys: PersonKeys | None = None,
    ) -> None:
        self._settings = settings
        self._person_keys = person_keys or PersonKeys(
            settings.sealer(), settings.topics.person_keys
        )
        self._requests = requests
        self._payers = payers
        self._premiums = premiums
        self._fingerprint_key = settings.hash_key_for(KeyPurpose.FINGERPRINT)
        self._id_key = settings.hash_key_for(KeyPurpose.ID_HASH)

    async def answered(self, caller: str, key: str) -> bool:
        """Whether this payment request was answered before (see ``IdempotentRequests``)."""
        return await self._requests.answered(caller, key)

    async def submit(self, caller: str, key: str, body: PaymentCreate) -> IntakeResponse:
        """Check (a premium against the schedule too), then create the payment once for
        (caller, key); the answer to send."""
        purpose = Purpose.model_validate(body.purpose.model_dump())
        validation.validate_request(
            purpose=purpose,
            method=body.method,
            amount=body.amount,
            limits=self._settings.method_limits(),
        )
        premium = self._premiums.check(body, purpose, shanghai_day(utcnow()))
        fingerprint = validation.request_fingerprint(
            self._fingerprint_key, CREATE_ROUTE, fingerprinted(body)
        )

        async def create(conn: asyncpg.Connection) -> tuple[str, int, str]:
            payment_id, text = await self._create(conn, caller, body, purpose, premium)
            return payment_id, 202, text

        response = await self._requests.once(caller, key, fingerprint, create)
        if not response.replayed:  # committed: the payment's one line at its start
            log.info("payment_requested", amount=body.amount, method=body.method)
        return response

    async def _create(
        self,
        conn: asyncpg.Connection,
        caller: str,
        body: PaymentCreate,
        purpose: Purpose,
        premium: CheckedPremium | None,
    ) -> tuple[str, str]:
        """Store the payment and its PaymentRequested; (payment id, the 202 body as JSON).

        The payer is enrolled by this payment when never seen; a payer another caller
        enrolled is 404. The events carry the enrolled phone, not ``payer_phone``. A
        personal medical account pays only for its payer or a bound relative (422
        ``relative_not_bound``). A premium takes its slot first (409 ``already_paid``
        when a live payment holds it)."""
        payment_id = new_payment_id()
        payer = await self._payers.of_payment(conn, caller, body, payment_id)
        id_number = body.beneficiary.id_number
        id_number_hash = keyed_hash(self._id_key, "id", id_number)
        await relatives.check_payment(
            conn,
            payer_id=body.payer_id,
            payer_id_hash=payer.payer_id_hash,
            method=body.method,
            relation=body.beneficiary.relation,
            beneficiary_id_hash=id_number_hash,
        )
        slot = None
        if premium is not None and purpose.scheme is not None:
            slot = premium_slot(purpose.scheme, purpose.region, id_number_hash, premium.period)
        if slot is not None:
            await self._premiums.hold(conn, slot)
        payee_id, payee_name = validation.payee_of(
            purpose, body.payer_id, self._settings.bureau_names
        )
        known: KnownKeys = {}  # a payer paying for themself: one person, one look-up
        beneficiary = await self._person_keys.sealed_beneficiary(
            conn,
            BeneficiaryRef(
                id_number_masked=mask_id_number(id_number),
                id_number_hash=id_number_hash,
                name=body.beneficiary.name,
                relation=body.beneficiary.relation,
            ),
            payment_id,
            known,
        )
        details = PaymentDetails(
            payment_id=payment_id,
            payer_id=body.payer_id,
            payer_phone_masked=payer.phone_masked,  # the payment's own record; "" on the log
            payer_phone_sealed=await self._person_keys.sealed_phone(
                conn,
                person_of_payer(payer.payer_id_hash, body.payer_id),
                payer.phone,
                payment_id,
                known,
            ),
            beneficiary=beneficiary,
            purpose=purpose,
            amount=body.amount,
            currency=body.currency,
            method=body.method,
            payee_id=payee_id,
            payee_name=payee_name,
            requested_at=utcnow(),
            payer_id_hash=payer.payer_id_hash,
            caller_id=caller,
        )
        payment, payloads = domain.request_payment(details)
        stored = await store.insert_payment(conn, payment, caller=caller, premium_slot=slot)
        if body.metadata or body.client_reference is not None:
            stored = await payment_list.save_caller_fields(
                conn, payment_id, metadata=body.metadata, client_reference=body.client_reference
            )
        await webhooks.record_payment_change(conn, None, stored)
        await stage_events(
            conn,
            self._settings.topics.payments,
            payloads,
            key=body.payer_id,
            correlation_id=payment_id,
            causation_id=None,
        )
        structlog.contextvars.bind_contextvars(payment_id=payment_id, correlation_id=payment_id)
        return payment_id, public_view(stored).model_dump_json()


def fingerprinted(body: PaymentCreate) -> dict[str, object]:
    """The body as fingerprinted: without ``beneficiary.category``, ``metadata`` or
    ``client_reference`` when not sent, so a body without them hashes as it did before
    the fields existed."""
    data: dict[str, object] = body.model_dump(mode="json")
    for added in ("metadata", "client_reference"):
        if data.get(added) is None:
            data.pop(added, None)
    beneficiary = data["beneficiary"]
    if isinstance(beneficiary, dict) and beneficiary.get("category") is None:
        beneficiary.pop("category", None)
    return data


class IdempotencyKeyPurger:
    """Deletes idempotency keys past their expiry, every ``interval`` seconds."""

    def __init__(self, pool: asyncpg.Pool, interval: float) -> None:
        self._pool = pool
        self._interval = interval

    async def run(self) -> None:
        while True:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                purged = await store.purge_keys(self._pool)
                if purged:
                    log.info("idempotency_keys_purged", count=purged)
            await asyncio.sleep(self._interval)
