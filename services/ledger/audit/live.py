"""Compare the state an audit rebuilt with a live ledger's projection.

Through the database (``--ledger-dsn``): the head, every balance row, every receipt
row (by fingerprint) and the statement (by digest). Through the API (``--ledger-url``
with a caller key): every rebuilt account's balance. Differences are
``Discrepancy`` objects like the log's own.
"""

from __future__ import annotations

import asyncio
import hashlib
from urllib.parse import quote

import asyncpg
import httpx

from services.ledger.audit.model import Discrepancy
from services.ledger.audit.rules import Auditor, receipt_digest, statement_record
from services.ledger.domain.projector import Balance, ReceiptRow
from services.ledger.domain.receipts import iso_utc
from shared.db import connect

API_CONCURRENCY = 8


def _head_fault(auditor: Auditor, seq: int, head_hash: str) -> Discrepancy | None:
    if (seq, head_hash) == (auditor.head.seq, auditor.head.hash):
        return None
    return Discrepancy(
        "live_head",
        f"the live ledger's head is entry {seq} ({head_hash[:16]}…), the log's is "
        f"entry {auditor.head.seq} ({auditor.head.hash[:16]}…); if postings are in flight, "
        "let the outbox relay catch up and audit again",
        seq=seq,
    )


async def compare_database(auditor: Auditor, dsn: str) -> list[Discrepancy]:
    conn = await connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return await _compare_tables(auditor, conn)
    finally:
        await conn.close()


async def _compare_tables(auditor: Auditor, conn: asyncpg.Connection) -> list[Discrepancy]:
    out: list[Discrepancy] = []
    head = await conn.fetchrow("SELECT seq, hash FROM ledger_head WHERE id = 1")
    fault = _head_fault(auditor, int(head["seq"]), str(head["hash"])) if head else None
    if fault:
        out.append(fault)
    out += await _compare_balances(auditor, conn)
    out += await _compare_receipts(auditor, conn)
    out += await _compare_statement(auditor, conn)
    return out


async def _compare_balances(auditor: Auditor, conn: asyncpg.Connection) -> list[Discrepancy]:
    out: list[Discrepancy] = []
    live: dict[str, Balance] = {
        r["account_id"]: Balance(r["balance"], r["currency"], r["last_seq"])
        for r in await conn.fetch("SELECT account_id, balance, currency, last_seq FROM balances")
    }
    for account_id in sorted(set(live) | set(auditor.balances)):
        mine, theirs = auditor.balances.get(account_id), live.get(account_id)
        if mine != theirs:
            either = mine or theirs
            out.append(
                Discrepancy(
                    "live_balance",
                    f"{account_id}: rebuilt {_show(mine)}, live {_show(theirs)}",
                    seq=either.last_seq if either else None,
                )
            )
    return out


async def _compare_receipts(auditor: Auditor, conn: asyncpg.Connection) -> list[Discrepancy]:
    out: list[Discrepancy] = []
    seen: set[tuple[str, str]] = set()
    async for r in conn.cursor(
        "SELECT code, number, payment_id, journal_seq, check_code, face, signature, key_id,"
        " issued_at FROM receipts ORDER BY code, number"
    ):
        key = (r["code"], r["number"])
        seen.add(key)
        row = ReceiptRow(**dict(r))
        expected = auditor.receipts.get(key)
        if expected != receipt_digest(row):
            what = "is not in the log" if expected is None else "differs from the log's"
            out.append(
                Discrepancy(
                    "live_receipt",
                    f"live receipt {key[0]}/{key[1]} {what}",
                    seq=row.journal_seq,
                    payment_id=row.payment_id,
                )
            )
    for code, number in sorted(set(auditor.receipts) - seen):
        out.append(
            Discrepancy(
                "live_receipt",
                f"receipt {code}/{number} from the log is missing from the live receipts table",
            )
        )
    return out


async def _compare_statement(auditor: Auditor, conn: asyncpg.Connection) -> list[Discrepancy]:
    statement = hashlib.sha256()
    async for r in conn.cursor(
        "SELECT account_id, seq, payment_id, amount, balance_after, posted_at"
        " FROM statement_lines ORDER BY seq, account_id"
    ):
        statement.update(
            statement_record(
                r["account_id"],
                r["seq"],
                r["payment_id"],
                r["amount"],
                r["balance_after"],
                iso_utc(r["posted_at"]),
            )
        )
    if statement.hexdigest() == auditor.statement_digest():
        return []
    return [
        Discrepancy(
            "live_statement",
            "the live statement_lines table differs from the statement the log rebuilds",
        )
    ]


def _show(balance: Balance | None) -> str:
    if balance is None:
        return "absent"
    return f"{balance.balance} {balance.currency} (last entry {balance.last_seq})"


async def compare_api(auditor: Auditor, ledger_url: str, api_key: str) -> list[Discrepancy]:
    """Every rebuilt account's balance against ``GET /v1/accounts/{id}``."""
    headers = {"Authorization": f"Bearer {api_key}"}
    gate = asyncio.Semaphore(API_CONCURRENCY)
    out: list[Discrepancy] = []
    async with httpx.AsyncClient(base_url=ledger_url, headers=headers, timeout=15.0) as http:

        async def one(account_id: str, mine: Balance) -> None:
            async with gate:
                r = await http.get(f"/v1/accounts/{quote(account_id, safe=':')}")
            if r.status_code in (401, 403, 404):
                raise ValueError(
                    f"the key given cannot read {account_id} (HTTP {r.status_code}): a payer's"
                    " accounts are read by its own caller only, and comparing every balance"
                    " takes an operator key ($OPERATOR_API_KEY, or --api-key-file)"
                )
            r.raise_for_status()
            live = int(r.json()["balance"])
            if live != mine.balance:
                out.append(
                    Discrepancy(
                        "live_balance",
                        f"{account_id}: rebuilt {mine.balance} fen, the API says {live} fen",
                        seq=mine.last_seq,
                    )
                )

        await asyncio.gather(*(one(a, b) for a, b in sorted(auditor.balances.items())))
    return sorted(out, key=lambda d: d.message)
