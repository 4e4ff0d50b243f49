"""Settlement (清算): closing a clearing day, its transfers and their arrival. Pure.

Closing day D nets, per region, the premiums and premium refunds whose entries record
``clearing_day`` D, plus any deficit carried from the region's earlier close:
``net = paid - refunded + carried_in``. A positive net is transferred to the bureau
(one ``settlement`` entry, platform → transit, reference ``st_{day}_{region}``); a net
at or below zero transfers nothing and is carried into the region's next close, where
it shows as a deduction. The close also publishes ``ClearingDayClosed`` with the
figures and the journal's signed head after the settlement entries. The bank's
confirmation of a transfer books its ``settlement_arrival`` (transit → bureau).

Everything here is decided from its inputs (entries, carried deficits, the time and
the key handed in): ids are derived, never drawn, so a retried close decides the same.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime

from services.ledger.domain.accounts import (
    arrival_lines,
    method_of,
    premium_region,
    settlement_lines,
)
from services.ledger.domain.chain import EVENTS, LEDGER_NAMESPACE, LedgerHead
from services.ledger.domain.posting import seal
from services.ledger.domain.receipts import Signer, iso_utc
from shared.canonical import canonical_bytes
from shared.events import (
    ClearingDayClosed,
    Envelope,
    JournalCheckpoint,
    JournalEntryPosted,
    ReceiptRef,
    RegionSettlement,
)

SETTLEMENT_KINDS = ("settlement", "settlement_arrival")


def transfer_reference(day: date, region: str) -> str:
    """The transfer's id at the bank (stable: a retried transfer reuses it)."""
    return f"st_{day.isoformat()}_{region}"


def bureau_account(region: str) -> str:
    """The bureau's account the bank transfers to."""
    return f"bureau:{region}"


def settlement_ids(kind: str, reference: str) -> tuple[str, uuid.UUID]:
    """(transaction id, event id) of a settlement or arrival entry: derived."""
    return (
        str(uuid.uuid5(LEDGER_NAMESPACE, f"{kind}:{reference}")),
        uuid.uuid5(LEDGER_NAMESPACE, f"JournalEntryPosted:{kind}:{reference}"),
    )


# ---------------------------------------------------------------------------
# A day's lines and figures
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DayLine:
    """One premium (``payment``, positive) or premium refund (``refund``, negative)
    of a region's clearing day, as its journal entry records it."""

    region: str
    kind: str  # payment | refund
    amount: int  # signed fen
    seq: int
    payment_id: str
    refund_id: str | None
    receipt: ReceiptRef | None
    method: str
    bank_reference: str | None
    posted_at: datetime


def day_line(entry: JournalEntryPosted) -> DayLine | None:
    """The entry as a line of its region's day; None for entries no bureau settles."""
    found = premium_region(entry)
    if found is None:
        return None
    region, amount = found
    return DayLine(
        region=region,
        kind="refund" if entry.kind == "refund" else "payment",
        amount=amount,
        seq=entry.seq,
        payment_id=entry.payment_id,
        refund_id=entry.refund_id,
        receipt=entry.receipt,
        method=method_of(entry),
        bank_reference=entry.bank_reference,
        posted_at=entry.posted_at,
    )


def day_lines(entries: Iterable[JournalEntryPosted]) -> list[DayLine]:
    lines = [x for x in (day_line(e) for e in entries) if x is not None]
    return sorted(lines, key=lambda x: x.seq)


@dataclass
class _Tally:
    count: int = 0
    paid: int = 0
    refunded: int = 0


def net_regions(
    day: date, lines: Iterable[DayLine], carried_in: Mapping[str, int]
) -> tuple[RegionSettlement, ...]:
    """Each region with lines on ``day``, netted with its carried deficit (≤ 0)."""
    tallies: dict[str, _Tally] = {}
    for line in lines:
        t = tallies.setdefault(line.region, _Tally())
        t.count += 1
        if line.amount > 0:
            t.paid += line.amount
        else:
            t.refunded -= line.amount
    out = []
    for region in sorted(tallies):
        t, carried = tallies[region], min(carried_in.get(region, 0), 0)
        net = t.paid - t.refunded + carried
        transfer = net if net > 0 else 0
        out.append(
            RegionSettlement(
                region=region,
                count=t.count,
                paid=t.paid,
                refunded=t.refunded,
                carried_in=carried,
                net=net,
                transfer_amount=transfer,
                transfer_reference=transfer_reference(day, region) if transfer else None,
                carried_out=0 if transfer else net,
            )
        )
    return tuple(out)


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


def checkpoint_message(seq: int, head_hash: str, at: str) -> bytes:
    """What a checkpoint signs: the canonical JSON of ``{"seq", "hash", "at"}``."""
    return canonical_bytes({"seq": seq, "hash": head_hash, "at": at})


def sign_checkpoint(head: LedgerHead, at: datetime, signer: Signer) -> JournalCheckpoint:
    when = iso_utc(at)
    signature = signer.sign(checkpoint_message(head.seq, head.hash, when))
    return JournalCheckpoint(
        seq=head.seq,
        hash=head.hash,
        at=when,
        key_id=signer.key_id,
        signature=base64.b64encode(signature).decode(),
    )


# ---------------------------------------------------------------------------
# Closing a day; a transfer's arrival
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DayClosing:
    """What a close appends and publishes, in order."""

    entries: tuple[JournalEntryPosted, ...]
    closed: ClearingDayClosed
    head: LedgerHead  # after the settlement entries
    events: tuple[Envelope, ...]


def _settlement_entry(
    head: LedgerHead,
    region: RegionSettlement,
    *,
    bank: str,
    day: date,
    at: datetime,
    signer: Signer,
) -> JournalEntryPosted:
    reference = region.transfer_reference
    assert reference is not None
    transaction, _event = settlement_ids("settlement", reference)
    return seal(
        JournalEntryPosted(
            seq=head.seq + 1,
            transaction_id=transaction,
            payment_id=reference,
            payer_id=region.region,
            kind="settlement",
            lines=settlement_lines(region.region, bank, region.transfer_amount),
            posted_at=at,
            receipt=None,
            prev_hash=head.hash,
            hash="",
            clearing_day=day.isoformat(),
        ),
        signer,
    )


def _entry_event(entry: JournalEntryPosted, event_id: uuid.UUID) -> Envelope:
    return EVENTS.new(
        entry,
        key=entry.payer_id,
        correlation_id=entry.payment_id,
        occurred_at=entry.posted_at,
        event_id=event_id,
    )


def decide_close_day(
    head: LedgerHead,
    day: date,
    entries: Iterable[JournalEntryPosted],
    carried_in: Mapping[str, int],
    *,
    bank: str,
    closed_at: datetime,
    forced: bool,
    signer: Signer,
) -> DayClosing:
    """Net ``day`` (its entries), post one settlement entry per positive net after
    ``head``, and the ``ClearingDayClosed`` with the signed head after them."""
    at = closed_at.astimezone(UTC)
    regions = net_regions(day, day_lines(entries), carried_in)
    posted: list[JournalEntryPosted] = []
    events: list[Envelope] = []
    for region in regions:
        if not region.transfer_amount:
            continue
        entry = _settlement_entry(head, region, bank=bank, day=day, at=at, signer=signer)
        posted.append(entry)
        events.append(_entry_event(entry, settlement_ids("settlement", entry.payment_id)[1]))
        head = LedgerHead(entry.seq, entry.hash, head.next_receipt_numbers)
    closed = ClearingDayClosed(
        day=day.isoformat(),
        closed_at=at,
        forced=forced,
        bank=bank,
        regions=regions,
        checkpoint=sign_checkpoint(head, at, signer),
    )
    events.append(
        EVENTS.new(
            closed,
            key=day.isoformat(),
            correlation_id=f"day:{day.isoformat()}",
            occurred_at=at,
            event_id=uuid.uuid5(LEDGER_NAMESPACE, f"ClearingDayClosed:{day.isoformat()}"),
        )
    )
    return DayClosing(tuple(posted), closed, head, tuple(events))


@dataclass(frozen=True)
class Transfer:
    """A settlement transfer as the ledger keeps it."""

    reference: str
    day: date
    region: str
    bank: str
    to_account: str
    amount: int


def arrival_entry(
    head: LedgerHead,
    transfer: Transfer,
    *,
    confirmed_at: datetime,
    posted_at: datetime,
    clearing_day: date,
    signer: Signer,
) -> tuple[JournalEntryPosted, Envelope]:
    """The bank confirmed ``transfer``: transit → the bureau's account."""
    transaction, event_id = settlement_ids("settlement_arrival", transfer.reference)
    entry = seal(
        JournalEntryPosted(
            seq=head.seq + 1,
            transaction_id=transaction,
            payment_id=transfer.reference,
            payer_id=transfer.region,
            kind="settlement_arrival",
            lines=arrival_lines(transfer.region, transfer.bank, transfer.amount),
            posted_at=posted_at.astimezone(UTC),
            receipt=None,
            prev_hash=head.hash,
            hash="",
            bank_reference=transfer.reference,
            bank_confirmed_at=confirmed_at,
            clearing_day=clearing_day.isoformat(),
        ),
        signer,
    )
    return entry, _entry_event(entry, event_id)


def transfers_of(closing: DayClosing, day: date) -> list[Transfer]:
    return [
        Transfer(
            reference=r.transfer_reference,
            day=day,
            region=r.region,
            bank=closing.closed.bank,
            to_account=bureau_account(r.region),
            amount=r.transfer_amount,
        )
        for r in closing.closed.regions
        if r.transfer_reference is not None
    ]
