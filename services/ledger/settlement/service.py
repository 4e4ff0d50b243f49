"""Settlement's work: close a day, read it, its bureau files, reconcile, checkpoints.

Closing is one transaction under the journal head lock (the lock every posting takes):
the settlement entries, their projection, the closed day, the transfer rows and the
outbox rows (entries, then ``ClearingDayClosed``) commit together or not at all. A
ledger killed mid-close leaves nothing of it; the next close (scheduler or operator)
decides the same again. Closing a closed day changes nothing and answers the same.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

import asyncpg

from services.ledger import store
from services.ledger.domain.chain import EVENTS, LEDGER_NAMESPACE
from services.ledger.domain.clearing import cutoff_instant, posting_day
from services.ledger.domain.receipts import Signer, iso_utc
from services.ledger.domain.reconciliation import (
    earlier_unbooked_debits,
    ledger_record,
    parse_statement,
    reconcile,
    statement_sha256,
)
from services.ledger.domain.settlement import (
    day_line,
    day_lines,
    decide_close_day,
    net_regions,
    sign_checkpoint,
    transfers_of,
)
from services.ledger.domain.settlement_file import FileLine, settlement_file
from services.ledger.schemas import (
    CheckpointPublic,
    DayPublic,
    DiscrepancyPublic,
    ReconciliationPublic,
    RegionDayPublic,
)
from services.ledger.settlement import store as sstore
from services.ledger.signing import ReceiptSigner
from shared.canonical import canonical_bytes
from shared.errors import Conflict, DomainError, NotFound
from shared.events import (
    BankStatementReconciled,
    Envelope,
    JournalCheckpoint,
    RegionSettlement,
)
from shared.http import Caller
from shared.money import utcnow
from shared.outbox import EventTooLarge, write_outbox

Clock = Callable[[], datetime]


class DayNotOver(Conflict):
    code = "day_not_over"


class DayNotClosed(Conflict):
    code = "day_not_closed"


@dataclass(frozen=True)
class SettlementSetup:
    """What settlement needs: where to publish, the ledger's keys (``signer`` the
    journal's: entries and checkpoints; ``file_signer`` the settlement files', the
    journal's when not given), the cut-off, the bank, whether a day may be closed early
    (development, test), the clock."""

    ledger_topic: str
    signer: ReceiptSigner
    cutoff: time
    bank: str
    may_force: bool
    clock: Clock = utcnow
    file_signer: ReceiptSigner | None = None

    @property
    def files(self) -> ReceiptSigner:
        return self.file_signer or self.signer


# ---------------------------------------------------------------------------
# Closing
# ---------------------------------------------------------------------------


def _too_early(setup: SettlementSetup, day: date, ends: datetime) -> DayNotOver:
    hhmm = setup.cutoff.strftime("%H:%M")
    how = (
        "or close it now with ?force=true (development and test only)"
        if setup.may_force
        else "closing early (?force=true) is only for development and test"
    )
    return DayNotOver(
        f"clearing day {day} closes at its cut-off {hhmm} Asia/Shanghai "
        f"({iso_utc(ends)}); wait for it, {how}",
        param="force",
    )


async def _check_closable(
    conn: asyncpg.Connection, setup: SettlementSetup, day: date, now: datetime, force: bool
) -> bool:
    """Whether the close is early (forced); raises when it may not happen now."""
    ends = cutoff_instant(day, setup.cutoff)
    if now >= ends:
        return False
    if not (force and setup.may_force):
        raise _too_early(setup, day, ends)
    current = posting_day(now, setup.cutoff, await store.last_closed_day(conn))
    if day > current:
        raise DayNotOver(
            f"clearing day {day} has not begun: postings now go to {current}; "
            f"close {current} first",
            param="day",
        )
    return True


async def close_day(pool: asyncpg.Pool, setup: SettlementSetup, day: date, *, force: bool) -> None:
    """Close ``day`` (see the module docstring); nothing when it is closed already."""
    async with pool.acquire() as conn, conn.transaction():
        head = await store.load_head(conn, lock=True)
        if await sstore.closed_day(conn, day) is not None:
            return
        now = setup.clock()
        forced = await _check_closable(conn, setup, day, now, force)
        entries = [x.entry for x in await sstore.entries_of_day(conn, day)]
        carried = await sstore.carried_deficits(conn, day)
        closing = decide_close_day(
            head,
            day,
            entries,
            carried,
            bank=setup.bank,
            closed_at=now,
            forced=forced,
            signer=setup.signer,
        )
        for entry, envelope in zip(closing.entries, closing.events, strict=False):
            head = await store.append_entry(conn, head, entry, envelope.event_id)
        await sstore.insert_closed_day(conn, closing.closed, closing.events[-1].event_id)
        await sstore.insert_transfers(conn, transfers_of(closing, day))
        await write_outbox(conn, setup.ledger_topic, list(closing.events))


async def close_due_days(
    pool: asyncpg.Pool, setup: SettlementSetup, *, look_back_days: int | None = None
) -> list[date]:
    """Close every open day with postings whose cut-off has passed (the scheduler);
    with ``look_back_days``, only days that recent are looked for."""
    now = setup.clock()
    today = posting_day(now, setup.cutoff, None)
    since = today - timedelta(days=look_back_days) if look_back_days is not None else None
    due = await sstore.days_to_close(pool, today, since)
    for day in due:
        await close_day(pool, setup, day, force=False)
    return due


# ---------------------------------------------------------------------------
# Reading a day
# ---------------------------------------------------------------------------


def _checkpoint(cp: JournalCheckpoint) -> CheckpointPublic:
    return CheckpointPublic.model_validate(cp.model_dump())


def _region_public(
    r: RegionSettlement, status: str | None, row: sstore.TransferRow | None
) -> RegionDayPublic:
    return RegionDayPublic(
        region=r.region,
        count=r.count,
        paid=r.paid,
        refunded=r.refunded,
        net=r.net,
        settled=status in ("none", "arrived"),
        carried_in=r.carried_in,
        transfer_amount=r.transfer_amount,
        transfer_reference=r.transfer_reference,
        transfer_status=status,
        transfer_attempts=row.attempts if row else 0,
        transfer_last_error=row.last_error if row else None,
    )


def _visible(caller: Caller, region: str) -> bool:
    return caller.role == "operator" or caller.region == region


async def read_day(pool: asyncpg.Pool, day: date, caller: Caller) -> DayPublic:
    """The day's figures per region (a bureau sees its own region only)."""
    closed = await sstore.closed_day(pool, day)
    if closed is None:
        lines = day_lines(x.entry for x in await sstore.entries_of_day(pool, day))
        regions = net_regions(day, lines, await sstore.carried_deficits(pool, day))
        shown = [_region_public(r, None, None) for r in regions if _visible(caller, r.region)]
        return DayPublic(day=day.isoformat(), status="open", regions=shown, checkpoint=None)
    rows = {t.transfer.reference: t for t in await sstore.transfers_of_day(pool, day)}
    out = []
    for r in closed.closed.regions:
        row = rows.get(r.transfer_reference or "")
        status = "none" if row is None else row.status
        if _visible(caller, r.region):
            out.append(_region_public(r, status, row))
    settled = all(t.status == "arrived" for t in rows.values())
    return DayPublic(
        day=day.isoformat(),
        status="settled" if settled else "closed",
        regions=out,
        checkpoint=_checkpoint(closed.closed.checkpoint),
        closed_at=closed.closed_at,
        forced=closed.forced,
        bank=closed.closed.bank,
    )


async def close_and_read(
    pool: asyncpg.Pool, setup: SettlementSetup, day: date, *, force: bool, caller: Caller
) -> DayPublic:
    await close_day(pool, setup, day, force=force)
    return await read_day(pool, day, caller)


# ---------------------------------------------------------------------------
# The bureau's file
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedFile:
    body: bytes
    signature: str  # base64 Ed25519 over ``body``
    key_id: str
    checkpoint: str  # base64 of the canonical JSON of the day's signed checkpoint
    filename: str


def _not_visible(day: date, region: str) -> NotFound:
    return NotFound(
        f"no settlement file for region {region} on {day}: the region had no payments "
        "or refunds that day, or this key may not read it",
        param="region",
    )


async def bureau_file(
    pool: asyncpg.Pool, signer: Signer, day: date, region: str, caller: Caller
) -> SignedFile:
    if not _visible(caller, region):
        raise _not_visible(day, region)
    closed = await sstore.closed_day(pool, day)
    if closed is None:
        raise DayNotClosed(
            f"clearing day {day} is not closed yet; its files exist once it is closed "
            "(at the cut-off, or POST /v1/settlement/days/{day}/close)",
            param="day",
        )
    figures = next((r for r in closed.closed.regions if r.region == region), None)
    if figures is None:
        raise _not_visible(day, region)
    entries = [x for x in await sstore.entries_of_day(pool, day)]
    lines = [(day_line(x.entry), x.face) for x in entries]
    mine = [(line, face) for line, face in lines if line is not None and line.region == region]
    days = await sstore.payment_days(pool, [line.payment_id for line, _ in mine])
    body = settlement_file(
        [FileLine(line, face, days.get(line.payment_id, "")) for line, face in mine],
        figures,
        carried_from=await _carried_from(pool, day, region) if figures.carried_in else "",
    )
    checkpoint = closed.closed.checkpoint.model_dump()
    return SignedFile(
        body=body,
        signature=base64.b64encode(signer.sign(body)).decode(),
        key_id=signer.key_id,
        checkpoint=base64.b64encode(canonical_bytes(checkpoint)).decode(),
        filename=f"settlement-{day}-{region}.csv",
    )


async def _carried_from(pool: asyncpg.Pool, day: date, region: str) -> str:
    """The day whose close carried the region's deficit into ``day``."""
    found = ""
    for closed in await sstore.closed_days_before(pool, day):
        for r in closed.closed.regions:
            if r.region == region:
                found = closed.closed.day if r.carried_out else ""
    return found


# ---------------------------------------------------------------------------
# Reconciliation, checkpoints
# ---------------------------------------------------------------------------


def _outcome_id(outcome: BankStatementReconciled) -> uuid.UUID:
    figures = outcome.model_dump(mode="json", include={"matched", "reversed", "discrepancies"})
    digest = hashlib.sha256(canonical_bytes(figures)).hexdigest()
    name = f"BankStatementReconciled:{outcome.day}:{outcome.statement_sha256}:{digest}"
    return uuid.uuid5(LEDGER_NAMESPACE, name)


async def reconcile_statement(
    pool: asyncpg.Pool, setup: SettlementSetup, day: date, text: str
) -> ReconciliationPublic:
    """Match the bank's statement of ``day`` with the journal; publish the outcome once
    (``BankStatementReconciled``, with the statement) and answer it."""
    statement = parse_statement(text)
    start = cutoff_instant(day - timedelta(days=1), setup.cutoff)
    end = cutoff_instant(day, setup.cutoff)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        head = await store.load_head(conn)
        entries = await sstore.bank_confirmed_entries(
            conn, start, end, [b.reference for b in statement]
        )
        records = [r for r in (ledger_record(e) for e in entries) if r is not None]
        earlier = earlier_unbooked_debits(await sstore.discrepancies_before(conn, day), day)
        result = reconcile(day, records, statement, cutoff=setup.cutoff, earlier_unbooked=earlier)
        outcome = BankStatementReconciled(
            day=day.isoformat(),
            bank=setup.bank,
            cutoff=setup.cutoff.strftime("%H:%M"),
            statement_sha256=statement_sha256(text),
            statement=text,
            journal_seq=head.seq,
            matched=result.matched,
            reversed=result.reversed,
            discrepancies=result.discrepancies,
            reconciled_at=setup.clock(),
        )
        event_id = _outcome_id(outcome)
        if await sstore.insert_reconciliation(conn, event_id, outcome):
            envelope = reconciled_event(outcome, event_id)
            try:
                await write_outbox(conn, setup.ledger_topic, [envelope])
            except EventTooLarge as exc:  # the transaction rolls back: nothing recorded
                raise DomainError(
                    f"the outcome of this statement, the statement and its"
                    f" {len(outcome.discrepancies)} discrepancies, is {exc.size} bytes, over"
                    f" the {exc.limit}-byte limit of a journal event; nothing was"
                    " recorded. Check that it is this day's statement from this bank",
                    code="request_too_large",
                    status=413,
                    param="body",
                    details={"max_bytes": exc.limit},
                ) from exc
    return ReconciliationPublic(
        day=outcome.day,
        matched=outcome.matched,
        reversed=outcome.reversed,
        discrepancies=[
            DiscrepancyPublic.model_validate(d.model_dump()) for d in outcome.discrepancies
        ],
        statement_sha256=outcome.statement_sha256,
        journal_seq=outcome.journal_seq,
    )


def reconciled_event(outcome: BankStatementReconciled, event_id: uuid.UUID) -> Envelope:
    return EVENTS.new(
        outcome,
        key=outcome.day,
        correlation_id=f"day:{outcome.day}",
        occurred_at=outcome.reconciled_at,
        event_id=event_id,
    )


async def journal_checkpoint(pool: asyncpg.Pool, setup: SettlementSetup) -> CheckpointPublic:
    """The journal's head now, signed."""
    async with pool.acquire() as conn:
        head = await store.load_head(conn)
    return _checkpoint(sign_checkpoint(head, setup.clock(), setup.signer))
