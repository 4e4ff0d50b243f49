"""A service's copy of the person keys (issue 11), from the compacted ``person-keys.v1``.

The ledger (receipt faces), risk and notify (the resident's phone) keep each key as it
came (sealed under the system seal key, ``person_key_aad``) in their ``person_keys``
table, and drop it on ``PersonKeyErased``. Risk and notify also remember the erased
key ids (``person_keys_erased``): a phone sealed under a key they do not hold is then
either erased (never opens: ``PhoneErased``) or not copied yet (``PersonKeyPending``,
retried), and a late ``PersonKeyIssued`` of an erased key is not kept again.

One home for the three services' handlers: ``PersonKeyCopies(...).handlers()``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping

import asyncpg
import structlog

from shared.consumer import Handler, InboxConsumer
from shared.crypto import Sealer
from shared.events import Event, PersonKeyErased, PersonKeyIssued
from shared.personal import open_phone, person_key_aad, phone_key_id

log = structlog.get_logger(__name__)

KeyHook = Callable[[asyncpg.Connection, str], Awaitable[None]]


class PersonKeyCopies:
    """``remember_erased``: the service has ``person_keys_erased`` (risk, notify);
    ``on_erased``: what else the service scrubs of an erased key, in the same
    transaction (notify: the masked phones of its notices)."""

    def __init__(
        self, sealer: Sealer | None, *, remember_erased: bool, on_erased: KeyHook | None = None
    ) -> None:
        self._sealer = sealer
        self._remember = remember_erased
        self._on_erased = on_erased

    def handlers(self) -> dict[str, Handler]:
        return {
            PersonKeyIssued.event_type: self.on_person_key_issued,
            PersonKeyErased.event_type: self.on_person_key_erased,
        }

    async def on_person_key_issued(self, conn: asyncpg.Connection, event: Event) -> None:
        """person-keys.v1: keep a copy of the key (sealed as it came)."""
        issued = event.payload
        assert isinstance(issued, PersonKeyIssued)
        if self._remember:
            await conn.execute(
                "INSERT INTO person_keys (key_id, key_sealed) SELECT $1, $2"
                " WHERE NOT EXISTS (SELECT 1 FROM person_keys_erased WHERE key_id = $1)"
                " ON CONFLICT (key_id) DO NOTHING",
                issued.key_id,
                issued.key_sealed,
            )
            return
        await conn.execute(
            "INSERT INTO person_keys (key_id, key_sealed) VALUES ($1, $2)"
            " ON CONFLICT (key_id) DO NOTHING",
            issued.key_id,
            issued.key_sealed,
        )

    async def on_person_key_erased(self, conn: asyncpg.Connection, event: Event) -> None:
        """person-keys.v1: the key is destroyed (erasure): drop the copy."""
        erased = event.payload
        assert isinstance(erased, PersonKeyErased)
        await conn.execute("DELETE FROM person_keys WHERE key_id = $1", erased.key_id)
        if self._remember:
            await conn.execute(
                "INSERT INTO person_keys_erased (key_id, erased_at) VALUES ($1, $2)"
                " ON CONFLICT (key_id) DO NOTHING",
                erased.key_id,
                erased.erased_at,
            )
        if self._on_erased is not None:
            await self._on_erased(conn, erased.key_id)
        log.info("person_key_erased", key_id=erased.key_id)

    async def keys(
        self, conn: asyncpg.Connection | asyncpg.Pool, key_ids: Iterable[str]
    ) -> dict[str, bytes | None]:
        """The opened copies of ``key_ids``; None for an erased one (when remembered);
        an unknown one is absent."""
        assert self._sealer is not None, "opening keys needs the system sealer"
        wanted = sorted(set(key_ids))
        if not wanted:
            return {}
        found: dict[str, bytes | None] = {}
        if self._remember:  # one round trip: each wanted id, its copy and its erasure
            for r in await conn.fetch(
                "SELECT w.key_id, k.key_sealed, e.key_id IS NOT NULL AS erased"
                " FROM unnest($1::text[]) AS w (key_id)"
                " LEFT JOIN person_keys k ON k.key_id = w.key_id"
                " LEFT JOIN person_keys_erased e ON e.key_id = w.key_id",
                wanted,
            ):
                kid = r["key_id"]
                if r["key_sealed"] is not None:  # a copy wins, as it always did
                    found[kid] = self.open_copy(kid, r["key_sealed"])
                elif r["erased"]:
                    found[kid] = None
            return found
        for r in await conn.fetch(
            "SELECT key_id, key_sealed FROM person_keys WHERE key_id = ANY($1::text[])", wanted
        ):
            found[r["key_id"]] = self.open_copy(r["key_id"], r["key_sealed"])
        return found

    def open_copy(self, kid: str, sealed: str) -> bytes:
        """A key copy as read from ``person_keys`` (``key_sealed``), opened."""
        assert self._sealer is not None
        return bytes.fromhex(self._sealer.open(sealed, aad=person_key_aad(kid)))

    async def open_phone(
        self, conn: asyncpg.Connection | asyncpg.Pool, sealed: str, *, aad: str
    ) -> str:
        """``shared.personal.open_phone`` with this service's copies of the keys."""
        kid = phone_key_id(sealed)
        keys = await self.keys(conn, [kid] if kid else [])
        assert self._sealer is not None
        return open_phone(sealed, aad=aad, sealer=self._sealer, person_keys=keys)


def person_key_consumer(
    *,
    service: str,
    bootstrap: str,
    topic: str,
    pool: asyncpg.Pool,
    handlers: Mapping[str, Handler],
) -> InboxConsumer:
    """Risk's and notify's copier of ``person-keys.v1`` (group ``<service>-person-keys``;
    ``handlers``: the service's map, whose ``PersonKeyCopies`` handlers apply), apart
    from their main consumer: an event whose phone waits for its key
    (``PersonKeyPending``, retried) never holds the key up behind it."""
    return InboxConsumer(
        name=f"{service}-person-keys",
        bootstrap=bootstrap,
        topics=[topic],
        pool=pool,
        handlers={t: handlers[t] for t in (PersonKeyIssued.event_type, PersonKeyErased.event_type)},
    )
