"""The receipts package's own SQL: who owns a receipt, the public rate limit's token
buckets (migration 0010, shared by every ledger instance on the database) and the
signing keys (migrations 0011, 0013)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from shared.errors import RateLimited


class Reader(Protocol):
    """An asyncpg pool or connection."""

    async def fetchval(self, query: str, *args: object) -> object: ...

    async def fetch(self, query: str, *args: object) -> list[Any]: ...

    async def execute(self, query: str, *args: object) -> str: ...


async def receipt_owner(conn: Reader, journal_seq: int) -> str | None:
    """The caller that owns the receipt posted at ``journal_seq`` (``ReceiptIssued.
    caller_id``, kept with the journal entry); None for receipts issued before issue 11."""
    owner = await conn.fetchval(
        "SELECT receipt_event ->> 'caller_id' FROM journal WHERE seq = $1", journal_seq
    )
    return str(owner) if owner else None


async def verification_count(conn: Reader, code: str, number: str) -> int:
    """How many times the receipt was verified (查验次数), without counting this read."""
    count = await conn.fetchval(
        "SELECT verify_count FROM receipt_checks WHERE code = $1 AND number = $2", code, number
    )
    return int(count) if isinstance(count, int) else 0


@dataclass(frozen=True)
class Bucket:
    """A client's token bucket: ``capacity`` tokens, refilled at ``per_second``."""

    capacity: float
    per_second: float


# The refill is computed from the stored row in the database's clock (one clock for
# every instance): LEAST(capacity, tokens + seconds since updated_at * per_second).
_TAKE = (
    "INSERT INTO receipt_rate_buckets AS b (client, tokens, updated_at)"
    " VALUES ($1, $2::float8 - 1, now())"
    " ON CONFLICT (client) DO UPDATE SET"
    " tokens = LEAST($2::float8, b.tokens"
    "  + GREATEST(0, EXTRACT(EPOCH FROM now() - b.updated_at)) * $3::float8) - 1,"
    " updated_at = now()"
    " WHERE LEAST($2::float8, b.tokens"
    "  + GREATEST(0, EXTRACT(EPOCH FROM now() - b.updated_at)) * $3::float8) >= 1"
    " RETURNING tokens"
)
_LEFT = (
    "SELECT LEAST($2::float8, b.tokens"
    " + GREATEST(0, EXTRACT(EPOCH FROM now() - b.updated_at)) * $3::float8)"
    " FROM receipt_rate_buckets AS b WHERE client = $1"
)


async def take_token(conn: Reader, client: str, bucket: Bucket) -> None:
    """Take one token from ``client``'s bucket, or raise ``RateLimited`` (429) with the
    seconds to wait. One statement: concurrent takes queue on the row, so two
    instances never both spend the last token."""
    taken = await conn.fetchval(_TAKE, client, bucket.capacity, bucket.per_second)
    if taken is not None:
        return
    left = await conn.fetchval(_LEFT, client, bucket.capacity, bucket.per_second)
    tokens = float(left) if isinstance(left, float | int) else 0.0
    wait = max(1, math.ceil((1.0 - tokens) / bucket.per_second))
    raise RateLimited(
        f"too many receipt requests from this address; wait {wait} s and try again",
        details={"retry_after": wait},
    )


async def forget_full_buckets(conn: Reader, bucket: Bucket) -> None:
    """Delete buckets that have had time to refill: they hold no information."""
    await conn.execute(
        "DELETE FROM receipt_rate_buckets WHERE updated_at < now() - make_interval(secs => $1)",
        bucket.capacity / bucket.per_second,
    )


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    algorithm: str
    public_key: str  # base64 of the raw public key
    purpose: str  # services.ledger.signing.SigningPurpose, or "all" (UNDIVIDED)


async def register_signing_key(conn: Reader, key: SigningKey) -> None:
    """Remember a key the ledger signs with (once; later calls change nothing)."""
    await conn.execute(
        "INSERT INTO receipt_signing_keys (key_id, algorithm, public_key, purpose)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (key_id) DO NOTHING",
        key.key_id,
        key.algorithm,
        key.public_key,
        key.purpose,
    )


async def key_signed_records(conn: Reader, key_id: str) -> bool:
    """Whether a receipt or a journal entry in the ledger names ``key_id``."""
    found = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM receipts WHERE key_id = $1)"
        " OR EXISTS (SELECT 1 FROM journal WHERE entry ->> 'key_id' = $1)",
        key_id,
    )
    return found is True


async def keys_in_force(conn: Reader, current_key_ids: list[str]) -> list[SigningKey]:
    """The known keys an auditor needs, oldest first: the current ones; a receipts key
    while a receipt names it; the undivided key ("all") while a receipt or a journal
    entry names it; a journal, settlement, manifests or certificates key always (what
    it signed is not withdrawn)."""
    rows = await conn.fetch(
        "SELECT key_id, algorithm, public_key, purpose FROM receipt_signing_keys k"
        " WHERE key_id = ANY($1::text[])"
        " OR purpose NOT IN ('receipts', 'all')"
        " OR EXISTS (SELECT 1 FROM receipts r WHERE r.key_id = k.key_id)"
        " OR (purpose = 'all'"
        "     AND EXISTS (SELECT 1 FROM journal j WHERE j.entry ->> 'key_id' = k.key_id))"
        " ORDER BY first_seen, key_id",
        current_key_ids,
    )
    return [SigningKey(r["key_id"], r["algorithm"], r["public_key"], r["purpose"]) for r in rows]
