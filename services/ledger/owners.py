"""Who owns a payer, and who may read what of it (issue 11; DESIGN.md "Contract
additions: trust").

The ledger learns owners from payments.v1, in the consumer's transaction:
``PayerEnrolled`` (payment enrolled the payer to a caller), and, for payers enrolled
before that event existed, the ``caller_id`` on ``PaymentAuthorized`` and
``RefundAuthorized``. The first owner stays (payment never moves a payer to another
caller); a later event may only add the keyed ID hash the row did not have.

Reads: a payer's ``wallet:``/``medical:`` accounts, records, overview and certificate
are the owning caller's (the ``Caller.id`` of its key, the same pseudonymous id payment
puts in ``caller_id``) and operators'. Anyone else gets the same 404 as for a payer
nobody enrolled, so a key learns nothing about another caller's payers (404, not 403:
a 403 would confirm the payer exists). Institutional accounts (``bureau:*``, ``cash:*``,
clearing, funding) stay readable by caller keys; a bureau key reads its own region's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import structlog

from services.ledger.store import Reader
from shared.errors import NotFound
from shared.http import Caller

log = structlog.get_logger(__name__)

_PAYER_ACCOUNT = re.compile(r"^(?:wallet|medical):(.+)$")
_REGION_ACCOUNT = re.compile(r"^(?:bureau|cash):([0-9]{6}):")


@dataclass(frozen=True)
class PayerOwner:
    payer_id: str
    caller_id: str
    id_number_hash: str | None
    enrolled_at: datetime


async def record_owner(
    conn: asyncpg.Connection,
    payer_id: str,
    caller_id: str,
    id_number_hash: str | None,
    at: datetime,
) -> None:
    """Remember ``caller_id`` as ``payer_id``'s owner (idempotent: the first owner
    stays; the same owner may fill in the ID hash it lacked)."""
    owner = await conn.fetchval(
        "INSERT INTO payer_owners AS o (payer_id, caller_id, id_number_hash, enrolled_at)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (payer_id) DO UPDATE"
        " SET id_number_hash = COALESCE(o.id_number_hash, EXCLUDED.id_number_hash)"
        " WHERE o.caller_id = EXCLUDED.caller_id"
        " RETURNING caller_id",
        payer_id,
        caller_id,
        id_number_hash,
        at,
    )
    if owner is None:
        log.warning("payer_owner_unchanged", payer_id=payer_id, named_caller=caller_id)


@dataclass(frozen=True)
class NamedOwner:
    """An event's word on a payer's owner: what ``record_owner`` takes."""

    payer_id: str
    caller_id: str
    id_number_hash: str | None
    at: datetime


async def record_owners(conn: asyncpg.Connection, named: Sequence[NamedOwner]) -> None:
    """``record_owner`` for each of ``named`` in order, in one statement.

    A payer named by one caller throughout folds to one row with the same outcome: the
    first event's time, the first ID hash given (the row keeps its own if it has one;
    nothing changes when it belongs to another caller). A payer named by several
    callers in one run (never, unless upstream is wrong) goes event by event."""
    callers: dict[str, set[str]] = {}
    for n in named:
        callers.setdefault(n.payer_id, set()).add(n.caller_id)
    folded: dict[str, NamedOwner] = {}
    for n in named:
        if len(callers[n.payer_id]) > 1:
            await record_owner(conn, n.payer_id, n.caller_id, n.id_number_hash, n.at)
            continue
        first = folded.setdefault(n.payer_id, n)
        if first.id_number_hash is None and n.id_number_hash is not None:
            folded[n.payer_id] = NamedOwner(
                first.payer_id, first.caller_id, n.id_number_hash, first.at
            )
    if not folded:
        return
    rows = list(folded.values())
    recorded = await conn.fetch(
        "INSERT INTO payer_owners AS o (payer_id, caller_id, id_number_hash, enrolled_at)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])"
        " ON CONFLICT (payer_id) DO UPDATE"
        " SET id_number_hash = COALESCE(o.id_number_hash, EXCLUDED.id_number_hash)"
        " WHERE o.caller_id = EXCLUDED.caller_id"
        " RETURNING payer_id",
        [r.payer_id for r in rows],
        [r.caller_id for r in rows],
        [r.id_number_hash for r in rows],
        [r.at for r in rows],
    )
    unchanged = set(folded) - {r["payer_id"] for r in recorded}
    for payer_id in sorted(unchanged):
        log.warning(
            "payer_owner_unchanged", payer_id=payer_id, named_caller=folded[payer_id].caller_id
        )


async def owner_of(conn: Reader, payer_id: str) -> PayerOwner | None:
    row = await conn.fetchrow(
        "SELECT payer_id, caller_id, id_number_hash, enrolled_at FROM payer_owners"
        " WHERE payer_id = $1",
        payer_id,
    )
    return PayerOwner(**dict(row)) if row is not None else None


def owns(caller: Caller, owner: PayerOwner | None) -> bool:
    """``caller`` may read the payer: an operator, or the owning caller-role key."""
    if caller.role == "operator":
        return True
    return caller.role == "caller" and owner is not None and owner.caller_id == caller.id


def unknown_payer(payer_id: str) -> NotFound:
    """The one answer for a payer nobody enrolled and another caller's payer."""
    return NotFound(
        f"no payer {payer_id!r} enrolled by this API key; enroll it with the payment API"
        " (PUT /v1/payers/{payer_id}) or pay for it first",
        param="payer_id",
    )


async def owned_payer(conn: Reader, caller: Caller, payer_id: str) -> PayerOwner:
    """The payer's owner row when ``caller`` may read it; else the 404 of an unknown
    payer. An operator reading a payer nobody enrolled gets the 404 too."""
    owner = await owner_of(conn, payer_id)
    if owner is None or not owns(caller, owner):
        raise unknown_payer(payer_id)
    return owner


async def may_read_account(conn: Reader, caller: Caller, account_id: str) -> bool:
    """Whether ``caller`` may read ``account_id`` (a well-formed id; see the module
    docstring for the rule)."""
    if caller.role == "operator":
        return True
    payer = _PAYER_ACCOUNT.match(account_id)
    if payer is not None:
        return owns(caller, await owner_of(conn, payer.group(1)))
    if caller.role == "caller":
        return True
    region = _REGION_ACCOUNT.match(account_id)
    return caller.role == "bureau" and region is not None and region.group(1) == caller.region
