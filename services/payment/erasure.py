"""Erasure of a person's personal data by crypto-shredding (issue 11).

``POST /v1/erasures`` (operator role) names a person by their ID number or by a payer
id. In one database transaction it destroys the person's keys (``person_keys``:
``key_sealed`` set to NULL), scrubs the payer records and this service's payment rows
of the person's name, masked ID number and phone, records the erasure, and stages, in
the outbox, ``PersonKeyErased`` per key on ``person-keys.v1`` (the ledger drops its
copy; compaction drops the key from the topic) and one ``PersonalDataErased`` on
``payments.v1`` (no personal data: the erasure id, key ids and payer ids). A crash
(kill -9) before the commit leaves nothing done; after it, the relay publishes the
events. Asked again when nothing is left to erase, it answers the last erasure of that
person (idempotent).

What stays, by law (the statutory retention of accounting records): amounts, dates,
receipt numbers and check codes, payer ids (pseudonyms), keyed hashes, journal hashes
and signatures. Blobs sealed under the destroyed keys stay on the log and open for
nobody; events from before issue 11 carry names in the clear and keep them.
"""

from __future__ import annotations

import base64
import json
import secrets

import asyncpg
import structlog

from services.payment import payers, store, webhooks
from services.payment.config import PaymentSettings
from services.payment.payments import EVENTS
from services.payment.schemas import ErasureCreate, ErasurePublic
from shared.crypto import KeyPurpose, keyed_hash
from shared.errors import NotFound
from shared.events import PersonalDataErased, PersonKeyErased
from shared.money import utcnow
from shared.outbox import write_outbox
from shared.personal import ERASED, person_of_payer

log = structlog.get_logger(__name__)

ERASED_FIELDS = ("name", "id_number_masked", "phone_masked", "phone_sealed")
KEPT_FIELDS = (
    "amounts",
    "dates",
    "receipt_numbers",
    "check_codes",
    "payer_ids",
    "keyed_hashes",
    "journal_hashes_and_signatures",
)


def new_erasure_id() -> str:
    return "er_" + base64.b32encode(secrets.token_bytes(10)).decode().lower()


class Erasures:
    def __init__(self, settings: PaymentSettings, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._id_key = settings.hash_key_for(KeyPurpose.ID_HASH)
        self._topics = settings.topics

    async def erase(self, body: ErasureCreate) -> ErasurePublic:
        async with self._pool.acquire() as conn, conn.transaction():
            person_hash = await self._person(conn, body)
            return await self._erase(conn, person_hash, body.payer_id)

    async def _person(self, conn: asyncpg.Connection, body: ErasureCreate) -> str | None:
        if body.id_number is not None:
            return keyed_hash(self._id_key, "id", body.id_number)
        assert body.payer_id is not None
        payer = await store.get_payer(conn, body.payer_id, for_update=True)
        if payer is None:
            raise NotFound(f"no payer {body.payer_id!r}; check the id", param="payer_id")
        return payer.id_number_hash

    async def _erase(
        self, conn: asyncpg.Connection, person_hash: str | None, payer_id: str | None
    ) -> ErasurePublic:
        erasure_id, now = new_erasure_id(), utcnow()
        # The person's keys, locked and destroyed: another erasure of them waits here.
        key_ids = sorted(
            r["key_id"]
            for r in await conn.fetch(
                "UPDATE person_keys SET key_sealed = NULL, erased_at = $2, erasure_id = $3"
                " WHERE person_hash = $1 AND erased_at IS NULL RETURNING key_id",
                person_hash,
                now,
                erasure_id,
            )
        )
        payer_ids = await payers.scrub_person(conn, person_hash, payer_id)
        # Their phones: sealed under the person's key, or, for a payer enrolled without
        # an ID number, under the payer's own (``person_of_payer``); the payments' own
        # copies of the masked phone are scrubbed.
        key_ids = sorted(
            {
                *key_ids,
                *(
                    r["key_id"]
                    for r in await conn.fetch(
                        "UPDATE person_keys SET key_sealed = NULL, erased_at = $2,"
                        " erasure_id = $3 WHERE person_hash = ANY($1::text[])"
                        " AND erased_at IS NULL RETURNING key_id",
                        [person_of_payer(None, p) for p in {*payer_ids, *filter(None, [payer_id])}],
                        now,
                        erasure_id,
                    )
                ),
            }
        )
        phone_payments = [
            r["id"]
            for r in await conn.fetch(
                "UPDATE payments SET payer_phone_masked = $2"
                " WHERE payer_id = ANY($1::text[]) AND payer_phone_masked <> $2 RETURNING id",
                payer_ids,
                ERASED,
            )
        ]
        phones = len(phone_payments)
        await conn.execute(
            "UPDATE idempotency_keys SET response_body = jsonb_set("
            "response_body::jsonb, '{payer_phone}', to_jsonb($2::text))::text"
            " WHERE payment_id = ANY($1::text[]) AND response_body IS NOT NULL"
            " AND response_body::jsonb ? 'payer_phone'",
            phone_payments,
            ERASED,
        )
        payment_ids = [
            r["id"]
            for r in await conn.fetch(
                "UPDATE payments SET beneficiary = beneficiary"
                " || jsonb_build_object('name', $2::text, 'id_number_masked', $2::text)"
                " WHERE beneficiary->>'id_number_hash' = $1 AND beneficiary->>'name' <> $2"
                " RETURNING id",
                person_hash,
                ERASED,
            )
        ]
        # The stored answers to replayed requests name the beneficiary too (until they
        # expire): scrubbed alike (a replay then answers 已删除).
        await conn.execute(
            "UPDATE idempotency_keys SET response_body = jsonb_set(jsonb_set("
            "response_body::jsonb, '{beneficiary,name}', to_jsonb($2::text)),"
            " '{beneficiary,id_number}', to_jsonb($2::text))::text"
            " WHERE payment_id = ANY($1::text[]) AND response_body IS NOT NULL"
            " AND response_body::jsonb ? 'beneficiary'",
            payment_ids,
            ERASED,
        )
        await webhooks.scrub_events(conn, payment_ids, ERASED)
        scrubbed = len(payment_ids)
        if not key_ids and not payer_ids and not scrubbed and not phones:
            return await self._answered_before(conn, person_hash, payer_id)
        answer = ErasurePublic(
            id=erasure_id,
            erased_at=now,
            key_ids=key_ids,
            payer_ids=payer_ids,
            payments=int(scrubbed or 0),
            erased=list(ERASED_FIELDS),
            kept=list(KEPT_FIELDS),
        )
        await conn.execute(
            "INSERT INTO erasures (erasure_id, person_hash, answer, erased_at)"
            " VALUES ($1, $2, $3, $4)",
            erasure_id,
            person_hash or f"payer:{payer_id}",
            json.loads(answer.model_dump_json()),
            now,
        )
        await write_outbox(
            conn,
            self._topics.person_keys,
            [
                EVENTS.new(PersonKeyErased(key_id=k, erased_at=now), key=k, correlation_id=None)
                for k in key_ids
            ],
        )
        erased = PersonalDataErased(
            erasure_id=erasure_id, key_ids=tuple(key_ids), payer_ids=tuple(payer_ids), erased_at=now
        )
        await write_outbox(
            conn,
            self._topics.payments,
            [EVENTS.new(erased, key=payer_id or erasure_id, correlation_id=erasure_id)],
        )
        log.info("personal_data_erased", erasure_id=erasure_id, keys=len(key_ids))
        return answer

    async def _answered_before(
        self, conn: asyncpg.Connection, person_hash: str | None, payer_id: str | None
    ) -> ErasurePublic:
        row = await conn.fetchrow(
            "SELECT answer FROM erasures WHERE person_hash = $1 ORDER BY erased_at DESC LIMIT 1",
            person_hash or f"payer:{payer_id}",
        )
        if row is None:
            raise NotFound(
                "no personal data is held for this person; check the ID number or payer id",
                param="id_number" if payer_id is None else "payer_id",
            )
        return ErasurePublic.model_validate(row["answer"]).model_copy(update={"replayed": True})
