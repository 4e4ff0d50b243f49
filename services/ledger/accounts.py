"""Account reads for the API: a balance and a statement page, from the projections.

Who may read which account is ``owners.may_read_account``: a payer's accounts only
its owning caller (and operators); an account the reader may not see answers exactly
like a malformed one (the same 404), so it reveals nothing."""

from __future__ import annotations

import asyncpg

from services.ledger import owners, store
from services.ledger.domain.accounts import is_well_formed_account
from services.ledger.schemas import AccountPublic, StatementLinePublic, StatementPublic
from shared.errors import NotFound
from shared.http import Caller


def _unknown_account(account_id: str) -> NotFound:
    return NotFound(
        f"no account {account_id!r}; ids look like wallet:<payer_id>, "
        "medical:<payer_id>, bureau:<6-digit region>:premium or "
        "cash:<region>:collected|platform|bureau|transit:<bank>",
        param="account_id",
    )


async def _readable(pool: asyncpg.Pool, caller: Caller, account_id: str) -> None:
    if not is_well_formed_account(account_id) or not await owners.may_read_account(
        pool, caller, account_id
    ):
        raise _unknown_account(account_id)


async def account_balance(pool: asyncpg.Pool, caller: Caller, account_id: str) -> AccountPublic:
    """The balance; 0 for a well-formed account never moved, 404 for a malformed id
    or one ``caller`` may not read."""
    await _readable(pool, caller, account_id)
    found = await store.account_balance(pool, account_id)
    if found is not None:
        return AccountPublic(account_id=account_id, balance=found.balance, currency=found.currency)
    if not is_well_formed_account(account_id):
        raise _unknown_account(account_id)
    return AccountPublic(account_id=account_id, balance=0, currency="CNY")


async def account_statement(
    pool: asyncpg.Pool, caller: Caller, account_id: str, *, after_seq: int, limit: int
) -> StatementPublic:
    """Each journal entry that moved the account, oldest first, one page."""
    await _readable(pool, caller, account_id)
    found = await store.account_balance(pool, account_id)
    if found is None and not is_well_formed_account(account_id):
        raise _unknown_account(account_id)
    rows = await store.statement(pool, account_id, after_seq=after_seq, limit=limit)
    lines = [
        StatementLinePublic(
            seq=r.seq,
            payment_id=r.payment_id,
            amount=r.amount,
            balance_after=r.balance_after,
            posted_at=r.posted_at,
        )
        for r in rows
    ]
    return StatementPublic(
        account_id=account_id,
        currency=found.currency if found is not None else "CNY",
        lines=lines,
        next_after_seq=lines[-1].seq if len(lines) == limit else None,
    )
