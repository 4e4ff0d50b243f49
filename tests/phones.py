"""Tests' reading of a phone on an event (issue 11: sealed under the payer's person key):
with the person keys of payment's ``person_keys`` table, as a service holding their
copies would (``shared.personal.open_phone``, the one opening function)."""

from __future__ import annotations

import asyncpg

from shared.crypto import Sealer
from shared.personal import open_phone, person_key_aad


async def person_keys(payment_pool: asyncpg.Pool, sealer: Sealer) -> dict[str, bytes | None]:
    """Payment's person keys, opened; None for an erased one."""
    rows = await payment_pool.fetch("SELECT key_id, key_sealed FROM person_keys")
    return {
        r["key_id"]: None
        if r["key_sealed"] is None
        else bytes.fromhex(sealer.open(r["key_sealed"], aad=person_key_aad(r["key_id"])))
        for r in rows
    }


async def event_phone(payment_pool: asyncpg.Pool, sealer: Sealer, sealed: str, *, aad: str) -> str:
    """The clear phone of an event's sealed phone."""
    keys = await person_keys(payment_pool, sealer)
    return open_phone(sealed, aad=aad, sealer=sealer, person_keys=keys)
