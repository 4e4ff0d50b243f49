"""asyncpg access to risk's tables. Every function runs on the caller's connection.

Lock order, everywhere: the payer-day row first, then the challenge, then the
reservation, then a phone's code window. A payer-day row (keyed by the cap key: the
person when known, else the payer id) is created if missing and then locked ``FOR
UPDATE``, so two instances deciding for one person wait for each other instead of
racing.

The hot paths take few round trips: deciding a request is ``lock_day_for`` (the day
locked and read, and whether the payment was decided, in one statement) then
``record_decision`` (the reservation, the day and the payer's owner in one); an
outcome is ``lock_reserved`` (day, then reservation, locked and read in one) then
``settle_reserved`` (both written in one). A consumer's run of events (issue 13) is
``lock_run`` (its days, then its reservations, locked and read) then ``save_run``
(every reservation, day and owner it changed, in one statement).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import cast

import asyncpg

from services.risk.domain import Challenge, ChallengeState, DayUsage, ReservationState
from shared.events import DeclineCode, PaymentMethod


@dataclass(frozen=True)
class Reservation:
    payment_id: str
    payer_id: str
    day: date
    amount: int
    method: PaymentMethod
    state: ReservationState
    cap_key: str  # the payer-day row it is counted in (domain.cap_key)


@dataclass(frozen=True)
class PayerOwner:
    payer_id: str
    caller_id: str
    cap_key: str


# ---------------------------------------------------------------------------
# payer-day usage
# ---------------------------------------------------------------------------


def _usage_from_row(row: asyncpg.Record | None) -> DayUsage:
    if row is None:
        return DayUsage()
    return DayUsage(
        kept=row["kept"],
        reserved=row["reserved"],
        wallet_kept=row["wallet_kept"],
        wallet_reserved=row["wallet_reserved"],
    )


async def lock_day(conn: asyncpg.Connection, payer_id: str, day: date) -> DayUsage:
    """The payer's usage of ``day``, locked until the transaction ends.

    One statement: the row is created when missing, and ``DO UPDATE`` (a no-op write)
    takes the row lock and returns the row either way.
    """
    row = await conn.fetchrow(
        "INSERT INTO payer_day_usage (payer_id, day) VALUES ($1, $2)"
        " ON CONFLICT (payer_id, day) DO UPDATE SET payer_id = EXCLUDED.payer_id"
        " RETURNING kept, reserved, wallet_kept, wallet_reserved",
        payer_id,
        day,
    )
    return _usage_from_row(row)


async def lock_day_for(
    conn: asyncpg.Connection, payer_id: str, day: date, payment_id: str
) -> tuple[DayUsage, bool]:
    """``lock_day``, and whether ``payment_id`` has a reservation already (decided), in
    one statement.

    The second answer is read in the statement's snapshot, taken before the day lock
    was granted: a copy of the request decided by a transaction that held the lock
    meanwhile is not seen here. ``record_decision`` sees it (its insert conflicts) and
    writes nothing; this answer only spares the common redelivery the work."""
    row = await conn.fetchrow(
        "WITH d AS (INSERT INTO payer_day_usage (payer_id, day) VALUES ($1, $2)"
        " ON CONFLICT (payer_id, day) DO UPDATE SET payer_id = EXCLUDED.payer_id"
        " RETURNING kept, reserved, wallet_kept, wallet_reserved)"
        " SELECT d.*, EXISTS (SELECT 1 FROM reservations WHERE payment_id = $3) AS decided"
        " FROM d",
        payer_id,
        day,
        payment_id,
    )
    assert row is not None  # the upsert returns its row either way
    return _usage_from_row(row), bool(row["decided"])


async def record_decision(
    conn: asyncpg.Connection,
    reservation: Reservation,
    *,
    decision: str,
    decline_code: DeclineCode | None,
    usage: DayUsage | None,
    caller_id: str | None,
) -> bool:
    """Record a decided request in one statement: its reservation (``declined`` when
    nothing is reserved), the day's new ``usage`` (None: unchanged; the row was locked
    with ``lock_day_for``) and the payer's owner (the first caller stays; the cap key
    follows the person once known), all only when the reservation is new. False: the
    payment was decided meanwhile, and nothing was written."""
    return bool(
        await conn.fetchval(
            "WITH r AS (INSERT INTO reservations (payment_id, payer_id, day, amount, method,"
            " state, decision, decline_code, cap_key)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " ON CONFLICT (payment_id) DO NOTHING RETURNING payment_id),"
            " d AS (UPDATE payer_day_usage SET kept = $10, reserved = $11, wallet_kept = $12,"
            " wallet_reserved = $13, updated_at = now()"
            " WHERE payer_id = $9 AND day = $3 AND $14::boolean AND EXISTS (SELECT 1 FROM r)),"
            " p AS (INSERT INTO payers (payer_id, caller_id, cap_key)"
            " SELECT $2, $15::text, $9 WHERE $15::text IS NOT NULL AND EXISTS (SELECT 1 FROM r)"
            " ON CONFLICT (payer_id) DO UPDATE SET cap_key = EXCLUDED.cap_key,"
            " updated_at = now() WHERE payers.cap_key IS DISTINCT FROM EXCLUDED.cap_key)"
            " SELECT EXISTS (SELECT 1 FROM r)",
            reservation.payment_id,
            reservation.payer_id,
            reservation.day,
            reservation.amount,
            reservation.method,
            reservation.state,
            decision,
            decline_code,
            reservation.cap_key,
            0 if usage is None else usage.kept,
            0 if usage is None else usage.reserved,
            0 if usage is None else usage.wallet_kept,
            0 if usage is None else usage.wallet_reserved,
            usage is not None,
            caller_id,
        )
    )


async def read_day(conn: asyncpg.Connection, payer_id: str, day: date) -> DayUsage:
    row = await conn.fetchrow(
        "SELECT kept, reserved, wallet_kept, wallet_reserved FROM payer_day_usage"
        " WHERE payer_id = $1 AND day = $2",
        payer_id,
        day,
    )
    return _usage_from_row(row)


# ---------------------------------------------------------------------------
# reservations
# ---------------------------------------------------------------------------


def _reservation_from_row(row: asyncpg.Record) -> Reservation:
    return Reservation(
        payment_id=row["payment_id"],
        payer_id=row["payer_id"],
        day=row["day"],
        amount=row["amount"],
        method=cast(PaymentMethod, row["method"]),
        state=cast(ReservationState, row["state"]),
        cap_key=row["cap_key"],
    )


async def get_reservation(
    conn: asyncpg.Connection, payment_id: str, *, lock: bool = False
) -> Reservation | None:
    sql = (
        "SELECT payment_id, payer_id, day, amount, method, state, cap_key FROM reservations"
        " WHERE payment_id = $1"
    )
    row = await conn.fetchrow(sql + (" FOR UPDATE" if lock else ""), payment_id)
    return None if row is None else _reservation_from_row(row)


async def lock_reserved(
    conn: asyncpg.Connection, payment_id: str
) -> tuple[Reservation, DayUsage] | None:
    """A reservation that was ``reserved``, with its day's usage: the day row locked
    first, then the reservation (the lock order), both read in one statement. None when
    it was not reserved (no reservation, or kept, released or declined already).

    The reservation is returned as it is once locked (its latest version): the caller
    checks it is still ``reserved`` (another transaction may have settled it while this
    one waited for the day)."""
    row = await conn.fetchrow(
        "WITH d AS MATERIALIZED (SELECT d.kept, d.reserved, d.wallet_kept, d.wallet_reserved"
        " FROM reservations r0 JOIN payer_day_usage d"
        " ON d.payer_id = r0.cap_key AND d.day = r0.day"
        " WHERE r0.payment_id = $1 AND r0.state = 'reserved' FOR UPDATE OF d)"
        " SELECT d.kept, d.reserved, d.wallet_kept, d.wallet_reserved, r.payment_id,"
        " r.payer_id, r.day, r.amount, r.method, r.state, r.cap_key"
        " FROM d, reservations r WHERE r.payment_id = $1 FOR UPDATE OF r",
        payment_id,
    )
    return None if row is None else (_reservation_from_row(row), _usage_from_row(row))


async def settle_reserved(
    conn: asyncpg.Connection, reservation: Reservation, usage: DayUsage, state: ReservationState
) -> None:
    """Write a reservation's new ``state`` and its day's new ``usage`` (both locked with
    ``lock_reserved``), in one statement."""
    await conn.execute(
        "WITH d AS (UPDATE payer_day_usage SET kept = $3, reserved = $4, wallet_kept = $5,"
        " wallet_reserved = $6, updated_at = now() WHERE payer_id = $1 AND day = $2)"
        " UPDATE reservations SET state = $8, updated_at = now() WHERE payment_id = $7",
        reservation.cap_key,
        reservation.day,
        usage.kept,
        usage.reserved,
        usage.wallet_kept,
        usage.wallet_reserved,
        reservation.payment_id,
        state,
    )


# ---------------------------------------------------------------------------
# a consumer's run of events, set-based (handlers.RiskHandlers.on_events)
# ---------------------------------------------------------------------------

DayKey = tuple[str, date]  # (cap key, day): one payer_day_usage row


async def lock_run(
    conn: asyncpg.Connection, days: Sequence[DayKey], payment_ids: Sequence[str]
) -> tuple[dict[DayKey, DayUsage], dict[str, Reservation]]:
    """For a run: the days it decides in (``days``, created when missing) and the days
    of its ``payment_ids``' still-reserved reservations, locked in key order and read;
    then those payments' reservations, locked in id order and read (in a snapshot
    taken after the day locks: a payment another transaction decided meanwhile is
    seen). Two statements, the lock order of ``lock_day_for`` and ``lock_reserved``."""
    rows = await conn.fetch(
        "WITH wanted AS (SELECT k, d FROM unnest($1::text[], $2::date[]) AS w(k, d)"
        " UNION SELECT cap_key, day FROM reservations"
        " WHERE payment_id = ANY($3::text[]) AND state = 'reserved')"
        " INSERT INTO payer_day_usage (payer_id, day) SELECT k, d FROM wanted ORDER BY k, d"
        " ON CONFLICT (payer_id, day) DO UPDATE SET payer_id = EXCLUDED.payer_id"
        " RETURNING payer_id, day, kept, reserved, wallet_kept, wallet_reserved",
        [k for k, _ in days],
        [d for _, d in days],
        list(payment_ids),
    )
    usages = {(r["payer_id"], r["day"]): _usage_from_row(r) for r in rows}
    found = await conn.fetch(
        "SELECT payment_id, payer_id, day, amount, method, state, cap_key FROM reservations"
        " WHERE payment_id = ANY($1::text[]) ORDER BY payment_id FOR UPDATE",
        list(payment_ids),
    )
    return usages, {r["payment_id"]: _reservation_from_row(r) for r in found}


@dataclass(frozen=True)
class NewDecision:
    reservation: Reservation
    decision: str
    decline_code: DeclineCode | None


async def save_run(
    conn: asyncpg.Connection,
    *,
    decided: Sequence[NewDecision],
    settled: Mapping[str, ReservationState],
    usages: Mapping[DayKey, DayUsage],
    owners: Mapping[str, PayerOwner],
) -> int:
    """Write what a run changed, in one statement: the new reservations (in their final
    state), the settled states of reservations that existed before it, the days' usage,
    and the payers' owners (the first caller stays; the cap key follows the person).
    Returns how many reservations were new (fewer than ``decided``: another
    transaction decided one meanwhile, and the caller must roll back)."""
    news = [d.reservation for d in decided]
    return int(
        await conn.fetchval(
            "WITH r AS (INSERT INTO reservations (payment_id, payer_id, day, amount, method,"
            " state, decision, decline_code, cap_key) SELECT * FROM unnest($1::text[],"
            " $2::text[], $3::date[], $4::bigint[], $5::text[], $6::text[], $7::text[],"
            " $8::text[], $9::text[]) ON CONFLICT (payment_id) DO NOTHING RETURNING payment_id),"
            " s AS (UPDATE reservations AS x SET state = u.state, updated_at = now()"
            " FROM unnest($10::text[], $11::text[]) AS u(payment_id, state)"
            " WHERE x.payment_id = u.payment_id),"
            " d AS (UPDATE payer_day_usage AS x SET kept = u.kept, reserved = u.reserved,"
            " wallet_kept = u.wallet_kept, wallet_reserved = u.wallet_reserved,"
            " updated_at = now() FROM unnest($12::text[], $13::date[], $14::bigint[],"
            " $15::bigint[], $16::bigint[], $17::bigint[])"
            " AS u(payer_id, day, kept, reserved, wallet_kept, wallet_reserved)"
            " WHERE x.payer_id = u.payer_id AND x.day = u.day),"
            " p AS (INSERT INTO payers (payer_id, caller_id, cap_key)"
            " SELECT * FROM unnest($18::text[], $19::text[], $20::text[])"
            " ON CONFLICT (payer_id) DO UPDATE SET cap_key = EXCLUDED.cap_key,"
            " updated_at = now() WHERE payers.cap_key IS DISTINCT FROM EXCLUDED.cap_key)"
            " SELECT count(*) FROM r",
            [r.payment_id for r in news],
            [r.payer_id for r in news],
            [r.day for r in news],
            [r.amount for r in news],
            [r.method for r in news],
            [r.state for r in news],
            [d.decision for d in decided],
            [d.decline_code for d in decided],
            [r.cap_key for r in news],
            list(settled),
            list(settled.values()),
            [k for k, _ in usages],
            [d for _, d in usages],
            [u.kept for u in usages.values()],
            [u.reserved for u in usages.values()],
            [u.wallet_kept for u in usages.values()],
            [u.wallet_reserved for u in usages.values()],
            list(owners),
            [o.caller_id for o in owners.values()],
            [o.cap_key for o in owners.values()],
        )
    )


# ---------------------------------------------------------------------------
# challenges
# ---------------------------------------------------------------------------

_CHALLENGE_COLUMNS = (
    "challenge_id, payment_id, payer_id, code_hash, amount, payee_id, payee_name,"
    " payer_phone_sealed, expires_at, attempts, state, decline_code, last_sent_at,"
    " opened_at, resends, phone_hash"
)


def _challenge_from_row(row: asyncpg.Record) -> Challenge:
    return Challenge(
        challenge_id=row["challenge_id"],
        payment_id=row["payment_id"],
        payer_id=row["payer_id"],
        code_hash=row["code_hash"],
        amount=row["amount"],
        payee_id=row["payee_id"],
        payee_name=row["payee_name"],
        payer_phone_sealed=row["payer_phone_sealed"],
        expires_at=row["expires_at"],
        attempts=row["attempts"],
        state=cast(ChallengeState, row["state"]),
        decline_code=cast(DeclineCode | None, row["decline_code"]),
        last_sent_at=row["last_sent_at"],
        opened_at=row["opened_at"],
        resends=row["resends"],
        phone_hash=row["phone_hash"],
    )


async def insert_challenge(conn: asyncpg.Connection, c: Challenge) -> None:
    await conn.execute(
        f"INSERT INTO challenges ({_CHALLENGE_COLUMNS})"  # noqa: S608 (constant column list)
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        c.challenge_id,
        c.payment_id,
        c.payer_id,
        c.code_hash,
        c.amount,
        c.payee_id,
        c.payee_name,
        c.payer_phone_sealed,
        c.expires_at,
        c.attempts,
        c.state,
        c.decline_code,
        c.last_sent_at,
        c.opened_at,
        c.resends,
        c.phone_hash,
    )


async def get_challenge_of_payment(
    conn: asyncpg.Connection, payment_id: str, *, lock: bool = False
) -> Challenge | None:
    row = await conn.fetchrow(
        f"SELECT {_CHALLENGE_COLUMNS} FROM challenges WHERE payment_id = $1"  # noqa: S608
        + (" FOR UPDATE" if lock else ""),
        payment_id,
    )
    return None if row is None else _challenge_from_row(row)


async def save_challenge(conn: asyncpg.Connection, c: Challenge) -> None:
    await conn.execute(
        "UPDATE challenges SET code_hash = $2, expires_at = $3, attempts = $4, state = $5,"
        " decline_code = $6, last_sent_at = $7, resends = $8, updated_at = now()"
        " WHERE challenge_id = $1",
        c.challenge_id,
        c.code_hash,
        c.expires_at,
        c.attempts,
        c.state,
        c.decline_code,
        c.last_sent_at,
        c.resends,
    )


async def find_expired_challenges(
    conn: asyncpg.Connection, now: datetime, limit: int
) -> list[tuple[str, str]]:
    """(challenge_id, payment_id) of pending challenges past expiry; not locked yet."""
    rows = await conn.fetch(
        "SELECT challenge_id, payment_id FROM challenges"
        " WHERE state = 'pending' AND expires_at <= $1 ORDER BY expires_at LIMIT $2",
        now,
        limit,
    )
    return [(r["challenge_id"], r["payment_id"]) for r in rows]


async def claim_expired(
    conn: asyncpg.Connection, challenge_id: str, now: datetime
) -> Challenge | None:
    """Lock the challenge if it is still pending and expired and nobody else holds it."""
    row = await conn.fetchrow(
        f"SELECT {_CHALLENGE_COLUMNS} FROM challenges"  # noqa: S608
        " WHERE challenge_id = $1 AND state = 'pending' AND expires_at <= $2"
        " FOR UPDATE SKIP LOCKED",
        challenge_id,
        now,
    )
    return None if row is None else _challenge_from_row(row)


# ---------------------------------------------------------------------------
# payer owners (from PaymentRequested.payment.caller_id)
# ---------------------------------------------------------------------------


async def get_payer(conn: asyncpg.Connection, payer_id: str) -> PayerOwner | None:
    row = await conn.fetchrow(
        "SELECT payer_id, caller_id, cap_key FROM payers WHERE payer_id = $1", payer_id
    )
    return None if row is None else PayerOwner(row["payer_id"], row["caller_id"], row["cap_key"])


# ---------------------------------------------------------------------------
# SMS codes per phone
# ---------------------------------------------------------------------------


async def lock_phone_codes(
    conn: asyncpg.Connection, phone_hash: str, since: datetime
) -> list[datetime]:
    """When codes went to the phone since ``since``; the phone's window is locked until
    the transaction ends (an advisory lock: two payments to one phone count in turn)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 11))", phone_hash)
    await conn.execute(
        "DELETE FROM phone_codes WHERE phone_hash = $1 AND sent_at <= $2", phone_hash, since
    )
    rows = await conn.fetch(
        "SELECT sent_at FROM phone_codes WHERE phone_hash = $1 AND sent_at > $2",
        phone_hash,
        since,
    )
    return [r["sent_at"] for r in rows]


async def record_phone_code(
    conn: asyncpg.Connection, phone_hash: str, payment_id: str, sent_at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO phone_codes (phone_hash, sent_at, payment_id) VALUES ($1, $2, $3)",
        phone_hash,
        sent_at,
        payment_id,
    )
