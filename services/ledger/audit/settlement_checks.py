"""The audit's settlement checks: closed days, transfers, reconciliations, checkpoints.

Pure, fed by ``rules.Auditor`` as it folds ledger.v1; ``finish`` runs at the end of
the log, when every entry a close or a reconciliation refers to has been seen:

- each ``ClearingDayClosed`` recomputes from the premium and refund entries that
  record its day (and the deficits carried from the regions' earlier closes); no entry
  of a closed day comes after its checkpoint; its checkpoint is signed by the trusted
  key and names a hash the journal has at that seq;
- each transfer a close names is exactly one ``settlement`` entry of its amount, and
  each ``settlement_arrival`` matches one settlement entry, once;
- each ``BankStatementReconciled`` carries a statement whose sha256 it states, and
  matching that statement with the journal as it stood at its ``journal_seq`` gives
  exactly its outcome;
- each checkpoint given on the command line is signed by the trusted key, and the
  journal reaches its seq with exactly its hash.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date

from services.ledger.audit.model import Discrepancy, Where
from services.ledger.domain.accounts import premium_region, transaction_amount
from services.ledger.domain.clearing import parse_cutoff
from services.ledger.domain.reconciliation import (
    LedgerRecord,
    earlier_unbooked_debits,
    ledger_record,
    parse_statement,
    reconcile,
    statement_sha256,
)
from services.ledger.signing import SigningPurpose, checkpoint_verifies, may_sign
from shared.errors import ValidationFailed
from shared.events import (
    BankStatementReconciled,
    ClearingDayClosed,
    JournalCheckpoint,
    JournalEntryPosted,
)

HashAt = Callable[[int], str | None]


@dataclass(frozen=True, slots=True)
class _Booked:
    seq: int
    amount: int
    day: str | None
    region: str
    event_id: str
    where: Where


@dataclass
class _Tally:
    count: int = 0
    paid: int = 0
    refunded: int = 0


@dataclass
class SettlementAudit:
    public_key: bytes
    add: Callable[[Discrepancy], None]
    trusted: Mapping[str, bytes] = field(default_factory=dict)  # key id → key; empty: public_key
    given: list[tuple[JournalCheckpoint, str]] = field(default_factory=list)
    purposes: Mapping[str, str] = field(default_factory=dict)  # key id → what it signs
    _tallies: dict[str, dict[str, _Tally]] = field(default_factory=dict)
    _last_seq: dict[str, tuple[int, str, Where]] = field(default_factory=dict)
    _settlements: dict[str, _Booked] = field(default_factory=dict)
    _arrivals: dict[str, _Booked] = field(default_factory=dict)
    _records: list[LedgerRecord] = field(default_factory=list)
    _closed: dict[str, tuple[ClearingDayClosed, str, Where]] = field(default_factory=dict)
    _reconciled: list[tuple[BankStatementReconciled, str, Where]] = field(default_factory=list)
    closed_days: int = 0
    reconciliations: int = 0
    duplicates: int = 0

    # -- feeding -------------------------------------------------------------

    def entry(self, entry: JournalEntryPosted, event_id: str, where: Where) -> None:
        """A new journal entry (seq above the head)."""
        record = ledger_record(entry)
        if record is not None:
            self._records.append(record)
        if entry.kind in ("settlement", "settlement_arrival"):
            self._transfer_entry(entry, event_id, where)
            return
        found = premium_region(entry)
        if found is None or entry.clearing_day is None:
            return  # only entries that record their day are settled
        region, amount = found
        day = entry.clearing_day
        t = self._tallies.setdefault(day, {}).setdefault(region, _Tally())
        t.count += 1
        if amount > 0:
            t.paid += amount
        else:
            t.refunded -= amount
        self._last_seq[day] = (entry.seq, event_id, where)

    def _transfer_entry(self, entry: JournalEntryPosted, event_id: str, where: Where) -> None:
        booked = self._settlements if entry.kind == "settlement" else self._arrivals
        ref = entry.payment_id
        if ref in booked:
            self._fault(
                "settlement_mismatch",
                f"{entry.kind} {ref} posted twice: entries {booked[ref].seq} and {entry.seq}",
                seq=entry.seq,
                event_id=event_id,
                payment_id=ref,
                where=where,
            )
            return
        booked[ref] = _Booked(
            entry.seq,
            transaction_amount(entry),
            entry.clearing_day,
            entry.payer_id,
            event_id,
            where,
        )

    def closed(self, closed: ClearingDayClosed, event_id: str, where: Where) -> None:
        earlier = self._closed.get(closed.day)
        if earlier is not None:
            if earlier[1] == event_id:
                self.duplicates += 1
            else:
                self._fault(
                    "clearing_day_mismatch",
                    f"clearing day {closed.day} closed twice (events {earlier[1]} and {event_id})",
                    event_id=event_id,
                    where=where,
                )
            return
        self.closed_days += 1
        self._closed[closed.day] = (closed, event_id, where)

    def reconciled(self, outcome: BankStatementReconciled, event_id: str, where: Where) -> None:
        if any(e == event_id for _o, e, _w in self._reconciled):
            self.duplicates += 1
            return
        self.reconciliations += 1
        self._reconciled.append((outcome, event_id, where))

    def _fault(self, kind: str, message: str, **ids: object) -> None:
        self.add(Discrepancy(kind, message, **ids))  # type: ignore[arg-type]

    # -- end of log ----------------------------------------------------------

    def finish(self, hash_at: HashAt, head_seq: int) -> None:
        self._check_days(hash_at, head_seq)
        self._check_transfers()
        self._check_reconciliations()
        for checkpoint, label in self.given:
            self._check_checkpoint(checkpoint, label, hash_at, head_seq, None, None)

    def _check_checkpoint(
        self,
        cp: JournalCheckpoint,
        label: str,
        hash_at: HashAt,
        head_seq: int,
        event_id: str | None,
        where: Where | None,
    ) -> None:
        ids = {"seq": cp.seq, "event_id": event_id, "where": where}
        key = self.trusted.get(cp.key_id) if self.trusted else self.public_key
        if not may_sign(self.purposes, cp.key_id, SigningPurpose.JOURNAL):
            key = None
        if key is None or not checkpoint_verifies(cp, key):
            self._fault(
                "checkpoint_signature",
                f"{label}: the signature over entry {cp.seq}'s hash does not verify with the "
                f"trusted key (it names key {cp.key_id})",
                **ids,
            )
        if cp.seq > head_seq:
            self._fault(
                "checkpoint_unreached",
                f"{label} says the journal reached entry {cp.seq} (hash {cp.hash[:16]}…) at "
                f"{cp.at}; the journal ends at entry {head_seq}: entries were cut off",
                **ids,
            )
        elif cp.seq and hash_at(cp.seq) != cp.hash:
            self._fault(
                "checkpoint_mismatch",
                f"{label} names hash {cp.hash[:16]}… for entry {cp.seq}; the journal has "
                f"{(hash_at(cp.seq) or '?')[:16]}…: the journal was rewritten",
                **ids,
            )

    def _check_days(self, hash_at: HashAt, head_seq: int) -> None:
        carried: dict[str, int] = {}
        for day in sorted(self._closed):
            closed, event_id, where = self._closed[day]
            label = f"clearing day {day}'s checkpoint"
            self._check_checkpoint(closed.checkpoint, label, hash_at, head_seq, event_id, where)
            last = self._last_seq.get(day)
            if last is not None and last[0] > closed.checkpoint.seq:
                self._fault(
                    "posting_after_close",
                    f"entry {last[0]} records clearing day {day}, closed at entry "
                    f"{closed.checkpoint.seq}",
                    seq=last[0],
                    event_id=last[1],
                    where=last[2],
                    related=(where,),
                )
            self._check_figures(closed, carried, event_id, where)
            for r in closed.regions:
                carried[r.region] = r.carried_out

    def _check_figures(
        self, closed: ClearingDayClosed, carried: dict[str, int], event_id: str, where: Where
    ) -> None:
        tallies = self._tallies.get(closed.day, {})
        want = {}
        for region, t in tallies.items():
            carried_in = min(carried.get(region, 0), 0)
            net = t.paid - t.refunded + carried_in
            want[region] = (t.count, t.paid, t.refunded, carried_in, net, max(net, 0))
        have = {
            r.region: (r.count, r.paid, r.refunded, r.carried_in, r.net, r.transfer_amount)
            for r in closed.regions
        }
        for region in sorted(set(want) | set(have)):
            if want.get(region) != have.get(region):
                self._fault(
                    "clearing_day_mismatch",
                    f"clearing day {closed.day}, region {region}: the close states (count, "
                    f"paid, refunded, carried_in, net, transfer) {have.get(region)}, its "
                    f"entries give {want.get(region)}",
                    event_id=event_id,
                    where=where,
                )
        for r in closed.regions:
            if r.transfer_amount and r.transfer_reference:
                self._check_settlement_entry(
                    closed.day, r.transfer_reference, r.transfer_amount, event_id, where
                )

    def _check_settlement_entry(
        self, day: str, reference: str, amount: int, event_id: str, where: Where
    ) -> None:
        entry = self._settlements.get(reference)
        if entry is None or entry.amount != amount or entry.day != day:
            found = f"entry {entry.seq} of {entry.amount} fen" if entry else "no entry"
            self._fault(
                "settlement_mismatch",
                f"clearing day {day} transfers {amount} fen as {reference}; the journal has "
                f"{found}",
                seq=entry.seq if entry else None,
                event_id=event_id,
                payment_id=reference,
                where=where,
            )

    def _check_transfers(self) -> None:
        named = {
            r.transfer_reference
            for closed, _e, _w in self._closed.values()
            for r in closed.regions
            if r.transfer_reference
        }
        for ref, s in self._settlements.items():
            if ref not in named:
                self._fault(
                    "settlement_mismatch",
                    f"settlement entry {s.seq} ({ref}, {s.amount} fen) is named by no "
                    "ClearingDayClosed",
                    seq=s.seq,
                    event_id=s.event_id,
                    payment_id=ref,
                    where=s.where,
                )
        for ref, a in self._arrivals.items():
            sent = self._settlements.get(ref)
            if sent is None or sent.amount != a.amount or sent.seq > a.seq:
                self._fault(
                    "settlement_mismatch",
                    f"arrival entry {a.seq} ({ref}, {a.amount} fen) matches no earlier "
                    "settlement entry of that amount",
                    seq=a.seq,
                    event_id=a.event_id,
                    payment_id=ref,
                    where=a.where,
                )

    def _check_reconciliations(self) -> None:
        for n, (outcome, event_id, where) in enumerate(self._reconciled):
            before = [
                (date.fromisoformat(o.day), o.discrepancies) for o, _e, _w in self._reconciled[:n]
            ]
            problem = self._reconciliation_problem(
                outcome, earlier_unbooked_debits(before, date.fromisoformat(outcome.day))
            )
            if problem:
                self._fault(
                    "reconciliation_mismatch",
                    f"reconciliation of {outcome.day} (statement {outcome.statement_sha256[:16]}…,"
                    f" journal at entry {outcome.journal_seq}): {problem}",
                    seq=outcome.journal_seq,
                    event_id=event_id,
                    where=where,
                )

    def _reconciliation_problem(
        self, outcome: BankStatementReconciled, earlier_unbooked: dict[str, int]
    ) -> str | None:
        if statement_sha256(outcome.statement) != outcome.statement_sha256:
            return "the statement it carries does not hash to the sha256 it states"
        try:
            lines = parse_statement(outcome.statement)
            cutoff = parse_cutoff(outcome.cutoff)
        except (ValidationFailed, ValueError) as exc:
            return f"its statement does not parse: {exc}"
        records = [r for r in self._records if r.journal_seq <= outcome.journal_seq]
        again = reconcile(
            date.fromisoformat(outcome.day),
            records,
            lines,
            cutoff=cutoff,
            earlier_unbooked=earlier_unbooked,
        )
        stated = (outcome.matched, outcome.reversed, outcome.discrepancies)
        if (again.matched, again.reversed, again.discrepancies) != stated:
            return (
                f"it states {outcome.matched} matched and {len(outcome.discrepancies)} "
                f"discrepancies; recomputed: {again.matched} matched and "
                f"{len(again.discrepancies)} discrepancies"
            )
        return None
