"""Person keys (issue 11): the payment service owns one data key per person.

A person is the keyed hash of their ID number (``id_number_hash``, as on events). Their
key is random, stored sealed under the system seal key in ``person_keys`` and, the
first time it is made, published on ``person-keys.v1`` (``PersonKeyIssued``, through
the outbox in the same transaction) for the ledger, which shows receipt faces. New
events carry the person's name and masked ID number sealed under it
(``shared.personal``), and the payer's phone under the payer's key (``sealed_phone``;
a payer enrolled without an ID number is the person ``payer:<payer id>``,
``shared.personal.person_of_payer``). Erasure (``services.payment.erasure``) destroys it.

Two payments of one person at once: the partial unique index on the live key makes
one insert win; the other reads the winner's key. A crash before commit leaves
nothing (the key and its event are in the payment's transaction).
"""

from __future__ import annotations

import asyncpg

from services.payment.payments import EVENTS
from shared.crypto import Sealer, phone_aad
from shared.events import BeneficiaryRef, PersonKeyIssued
from shared.money import utcnow
from shared.outbox import write_outbox
from shared.personal import (
    new_person_key,
    person_key_aad,
    personal_aad,
    seal_personal,
    seal_phone,
)

KnownKeys = dict[str, tuple[str, bytes]]  # person hash -> (key id, key), one transaction's


class PersonKeys:
    def __init__(self, sealer: Sealer, topic: str) -> None:
        self._sealer = sealer
        self._topic = topic

    async def key_for(
        self, conn: asyncpg.Connection, person_hash: str, known: KnownKeys | None = None
    ) -> tuple[str, bytes]:
        """The person's live key, made (and published) now when they have none.

        ``known``: the keys this transaction already has (filled here), so a request
        that seals for one person twice (a payer paying for themself) asks once."""
        if known is not None and person_hash in known:
            return known[person_hash]
        key_id, key = new_person_key()
        sealed = self._sealer.seal(key.hex(), aad=person_key_aad(key_id))
        # One statement either way: the new key, or the live one committed before it.
        row = await conn.fetchrow(
            "WITH made AS (INSERT INTO person_keys (key_id, person_hash, key_sealed, created_at)"
            " VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (person_hash) WHERE erased_at IS NULL DO NOTHING"
            " RETURNING key_id, key_sealed)"
            " SELECT key_id, key_sealed, true AS made FROM made UNION ALL"
            " SELECT key_id, key_sealed, false FROM person_keys"
            " WHERE person_hash = $2 AND erased_at IS NULL AND NOT EXISTS (SELECT FROM made)",
            key_id,
            person_hash,
            sealed,
            utcnow(),
        )
        if row is not None and row["made"]:
            event = EVENTS.new(
                PersonKeyIssued(key_id=key_id, key_sealed=sealed),
                key=key_id,
                correlation_id=None,
            )
            await write_outbox(conn, self._topic, [event])
            found = key_id, key
        else:
            if row is None:  # the conflicting key committed after this statement began
                row = await conn.fetchrow(
                    "SELECT key_id, key_sealed FROM person_keys"
                    " WHERE person_hash = $1 AND erased_at IS NULL",
                    person_hash,
                )
                assert row is not None  # visible once its insert committed
            found = row["key_id"], self.open_key(row["key_id"], row["key_sealed"])
        if known is not None:
            known[person_hash] = found
        return found

    def open_key(self, key_id: str, key_sealed: str) -> bytes:
        return bytes.fromhex(self._sealer.open(key_sealed, aad=person_key_aad(key_id)))

    async def sealed_beneficiary(
        self,
        conn: asyncpg.Connection,
        beneficiary: BeneficiaryRef,
        payment_id: str,
        known: KnownKeys | None = None,
    ) -> BeneficiaryRef:
        """``beneficiary`` with its name and masked ID number also sealed (``personal``)
        under the person's key, bound to ``payment_id``."""
        key_id, key = await self.key_for(conn, beneficiary.id_number_hash, known)
        fields = {"name": beneficiary.name, "id_number_masked": beneficiary.id_number_masked}
        blob = seal_personal(key_id, key, fields, aad=personal_aad(payment_id))
        return beneficiary.model_copy(update={"personal": blob})

    async def sealed_phone(
        self,
        conn: asyncpg.Connection,
        person: str,
        phone: str,
        record_id: str,
        known: KnownKeys | None = None,
    ) -> str:
        """``phone`` for an event, under ``person``'s key (``person_of_payer``), bound to
        ``record_id`` (``phone_aad``: the payment, allocation or code it goes with)."""
        key_id, key = await self.key_for(conn, person, known)
        return seal_phone(key_id, key, phone, aad=phone_aad(record_id))
