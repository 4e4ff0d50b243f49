"""The audit fold: replay ledger.v1 (and payments.v1) through the projector and check it.

Pure: events in, findings out. ``Auditor.ledger`` folds each journal event with the
very functions live posting uses (``projector.chain_faults`` / ``fold_entry`` /
``apply_balances`` / ``receipt_row`` / ``statement_lines``), so the state it rebuilds
is the live projection's; unlike the live path it does not stop at the first fault:
it records a ``Discrepancy`` and goes on, so one report names every problem.
Memory stays proportional to accounts and payments, not to the log's bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from services.ledger.audit.facts import PaymentFacts, Says, facts_of, receipt_ref_text
from services.ledger.audit.model import Discrepancy, Findings, Where
from services.ledger.audit.settlement_checks import SettlementAudit
from services.ledger.audit.verify import Checked
from services.ledger.domain.accounts import must_stay_non_negative, transaction_amount
from services.ledger.domain.chain import LedgerHead, hash_of
from services.ledger.domain.projector import (
    Balance,
    ReceiptRow,
    apply_balances,
    chain_faults,
    fold_entry,
    receipt_row,
    statement_lines,
)
from services.ledger.domain.receipts import is_red, iso_utc, personal_key_id, relates_to
from services.ledger.domain.settlement import SETTLEMENT_KINDS
from services.ledger.signing import (
    SigningPurpose,
    entry_signature_verifies,
    key_id_of,
    may_sign,
    verify_face,
)
from shared.canonical import canonical_bytes
from shared.digits import ascii_digits
from shared.events import (
    BankStatementReconciled,
    ClearingDayClosed,
    Event,
    JournalEntryPosted,
    ReceiptIssued,
)


def receipt_digest(row: ReceiptRow) -> bytes:
    """A fingerprint of a receipts row, the same from an event or from the table."""
    body = [
        row.code,
        row.number,
        row.payment_id,
        row.journal_seq,
        row.check_code,
        dict(row.face),
        row.signature,
        row.key_id,
    ]
    return hashlib.sha256(canonical_bytes(body)).digest()


def statement_record(
    account_id: str, seq: int, payment_id: str, amount: int, balance_after: int, posted_at: str
) -> bytes:
    """One statement line as fed to the statement digest (seq, then account order)."""
    return f"{account_id}|{seq}|{payment_id}|{amount}|{balance_after}|{posted_at}\n".encode()


_NOTHING_CHECKED = Checked()  # the fold computes every hash and signature itself


_ref = receipt_ref_text


@dataclass(frozen=True, slots=True)
class _Posted:
    seq: int
    amount: int
    receipt: str | None  # code/number/check code
    event_id: str
    where: Where


@dataclass(frozen=True, slots=True)
class _Success:
    amount: int
    journal_seq: int
    receipt: str | None
    event_id: str
    where: Where


@dataclass(frozen=True, slots=True)
class _Refunded:
    """A refund entry (or a RefundSucceeded): whose payment, how much, which seq."""

    payment_id: str
    amount: int
    journal_seq: int
    event_id: str
    where: Where


@dataclass
class Counts:
    ledger_events: int = 0
    entries: int = 0
    receipts: int = 0
    rejections: int = 0
    duplicates: int = 0
    payment_events: int = 0
    successes: int = 0
    undecodable: int = 0
    refunds: int = 0
    allocations: int = 0
    erasures: int = 0  # PersonalDataErased on payments.v1 (issue 11)


@dataclass
class Auditor:
    """Fold events; ``finish()`` adds the end-of-log checks. See the module docstring.

    ``public_key`` is the trusted key (the current one); ``other_keys`` are further
    trusted keys (e.g. the ledger's earlier ones): a signature verifies with the key its
    ``key_id`` names among them, and a ``key_id`` outside them does not verify.
    ``purposes`` (key id → purpose, ``GET /v1/receipts/public-keys``) limits what each
    key may sign: a receipt verifies only with a receipts key, an entry or checkpoint
    with a journal key (or, for both, the undivided key ``all``; a key with no stated
    purpose signs every kind).
    """

    public_key: bytes
    other_keys: tuple[bytes, ...] = ()
    purposes: Mapping[str, str] = field(default_factory=dict)
    findings: Findings = field(default_factory=Findings)
    head: LedgerHead = field(default_factory=LedgerHead)
    balances: dict[str, Balance] = field(default_factory=dict)
    receipts: dict[tuple[str, str], bytes] = field(default_factory=dict)
    counts: Counts = field(default_factory=Counts)
    payments_read: bool = False
    _hashes: bytearray = field(default_factory=bytearray)  # 32 bytes per seq
    _posted: dict[str, _Posted] = field(default_factory=dict)
    _successes: dict[str, _Success] = field(default_factory=dict)
    _awaiting_receipt: dict[int, tuple[JournalEntryPosted, str, Where]] = field(
        default_factory=dict
    )
    _refunds: dict[str, _Refunded] = field(default_factory=dict)  # refund_id → its entry
    _refunded: dict[str, int] = field(default_factory=dict)  # payment_id → refunds summed
    _refund_successes: dict[str, _Refunded] = field(default_factory=dict)
    _allocations: dict[str, _Posted] = field(default_factory=dict)  # allocation id → entry
    _allocation_events: dict[str, _Success] = field(default_factory=dict)
    _red: set[tuple[str, str]] = field(default_factory=set)  # red receipts seen
    _next_number: dict[str, int] = field(default_factory=dict)
    _statement: hashlib._Hash = field(default_factory=hashlib.sha256)
    _finished: bool = False
    _digests: bytearray = field(default_factory=bytearray)  # 32 bytes per seq: whole entry
    _signing_began: int | None = None  # the first signed entry's seq
    # Issue 11: receipts whose names are sealed per person, by person key id; the keys
    # erasures destroyed. An erased receipt still verifies (its signature covers the
    # sealed blob): it is counted, not a discrepancy.
    _sealed_receipts: dict[str, int] = field(default_factory=dict)
    _erased_keys: set[str] = field(default_factory=set)
    settlement: SettlementAudit = field(init=False)
    trusted: dict[str, bytes] = field(init=False)  # key id → public key, the current first

    def __post_init__(self) -> None:
        self.trusted = {key_id_of(k): k for k in (self.public_key, *self.other_keys)}
        self.settlement = SettlementAudit(
            self.public_key, self.findings.add, self.trusted, purposes=self.purposes
        )

    @property
    def sealed_receipts(self) -> int:
        """Receipts whose names and masked ID numbers are sealed per person."""
        return sum(self._sealed_receipts.values())

    @property
    def erased_receipts(self) -> int:
        """Of those, the receipts whose person key an erasure destroyed."""
        return sum(n for k, n in self._sealed_receipts.items() if k in self._erased_keys)

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_key)

    def key_for(self, key_id: str, purpose: SigningPurpose) -> bytes | None:
        """The trusted key ``key_id`` names, if it may sign ``purpose``."""
        key = self.trusted.get(key_id)
        return key if key is not None and may_sign(self.purposes, key_id, purpose) else None

    def misnamed(self, key_id: str | None, purpose: SigningPurpose) -> str:
        """Why ``key_id`` gave no key for ``purpose``, for messages ("" when trusted)."""
        if key_id is None:
            return ""
        if key_id not in self.trusted:
            return f" (it names key {key_id})"
        if not may_sign(self.purposes, key_id, purpose):
            return f" (it names key {key_id}, a {self.purposes[key_id]} key, not a {purpose} key)"
        return ""

    def trusted_text(self) -> str:
        """ "key <id>" or "keys <id>, <id>": the trusted keys, for messages."""
        ids = list(self.trusted)
        return f"key {ids[0]}" if len(ids) == 1 else f"keys {', '.join(ids)}"

    def statement_digest(self) -> str:
        return self._statement.hexdigest()

    def _add(
        self,
        kind: str,
        message: str,
        *,
        seq: int | None = None,
        event: Event | None = None,
        payment_id: str | None = None,
        where: Where | None = None,
        related: tuple[Where, ...] = (),
    ) -> None:
        self.findings.add(
            Discrepancy(
                kind,
                message,
                seq=seq,
                event_id=str(event.event_id) if event else None,
                payment_id=payment_id,
                where=where,
                related=related,
            )
        )

    def undecodable(self, where: Where, error: str) -> None:
        self.counts.undecodable += 1
        self._add("undecodable", f"message does not decode: {error}", where=where)

    # -- ledger.v1 -----------------------------------------------------------

    def ledger(self, event: Event, where: Where, checked: Checked | None = None) -> None:
        """Fold one ledger.v1 event. ``checked``: its hashes and signatures, computed
        from the same message by ``verify`` (in a worker); what it lacks is computed
        here."""
        self.counts.ledger_events += 1
        payload = event.payload
        done = checked or _NOTHING_CHECKED
        if isinstance(payload, JournalEntryPosted):
            self._entry(event, payload, where, done)
        elif isinstance(payload, ReceiptIssued):
            self._receipt(event, payload, where, done)
        elif isinstance(payload, ClearingDayClosed):
            self.settlement.closed(payload, str(event.event_id), where)
        elif isinstance(payload, BankStatementReconciled):
            self.settlement.reconciled(payload, str(event.event_id), where)
        elif event.event_type == "PostingRejected":
            self.counts.rejections += 1

    def _hash_at(self, seq: int) -> bytes:
        return bytes(self._hashes[32 * (seq - 1) : 32 * seq])

    def hash_hex_at(self, seq: int) -> str | None:
        """The hash the journal has at ``seq`` (None beyond the head)."""
        raw = self._hash_at(seq) if 1 <= seq <= self.head.seq else b""
        return raw.hex() if len(raw) == 32 else None

    @staticmethod
    def _whole(entry: JournalEntryPosted) -> bytes:
        return hashlib.sha256(canonical_bytes(entry.model_dump(mode="json"))).digest()

    def _duplicate(
        self, event: Event, entry: JournalEntryPosted, where: Where, checked: Checked
    ) -> None:
        """An entry at or below the head: a redelivery only if it is the same, whole."""
        pid = entry.payment_id
        kw = {"seq": entry.seq, "event": event, "payment_id": pid, "where": where}
        if self._hash_at(entry.seq) != self._raw_hash(entry.hash):
            self._add(
                "seq_fork",
                f"entry {entry.seq} appears again with other content (hash {entry.hash[:16]}…)",
                **kw,  # type: ignore[arg-type]
            )
        elif self._digests[32 * (entry.seq - 1) : 32 * entry.seq] != (
            checked.whole or self._whole(entry)
        ):
            altered = (
                "its hash does not recompute" if hash_of(entry) != entry.hash else "its content"
            )
            self._add(
                "duplicate_mismatch",
                f"entry {entry.seq} appears again with the same hash but other content "
                f"({altered}): an altered copy, not a redelivery",
                **kw,  # type: ignore[arg-type]
            )
        else:
            self.counts.duplicates += 1

    def _signature_faults(
        self, event: Event, entry: JournalEntryPosted, where: Where, checked: Checked
    ) -> None:
        """Since the first signed entry (and on any entry of the settlement era), every
        entry must carry the trusted key's signature over its hash."""
        journal = SigningPurpose.JOURNAL
        key = self.public_key if entry.key_id is None else self.key_for(entry.key_id, journal)
        signed = (
            checked.signed
            if checked.signed is not None
            else key is not None and entry_signature_verifies(entry, key)
        )
        if signed and self._signing_began is None:
            self._signing_began = entry.seq
        must = self._signing_began is not None or entry.signature or entry.clearing_day
        if must and not signed:
            why = "is not signed" if not entry.signature else "has a signature that does not verify"
            since = (
                f" (entries are signed since entry {self._signing_began})"
                if self._signing_began
                else ""
            )
            named = self.misnamed(entry.key_id, journal) if entry.signature else ""
            self._add(
                "entry_signature",
                f"entry {entry.seq} {why} with the trusted {self.trusted_text()}{named}{since}: it"
                " was not written by the ledger",
                seq=entry.seq,
                event=event,
                payment_id=entry.payment_id,
                where=where,
            )

    @staticmethod
    def _raw_hash(text: str) -> bytes:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            return bytes(32)
        return raw if len(raw) == 32 else bytes(32)

    def _entry(
        self, event: Event, entry: JournalEntryPosted, where: Where, checked: Checked
    ) -> None:
        pid = entry.payment_id
        if entry.seq <= self.head.seq:
            self._duplicate(event, entry, where, checked)
            return
        self.counts.entries += 1
        for fault in chain_faults(self.head, entry, recomputed=checked.hash):
            self._add(
                fault.kind, fault.message, seq=entry.seq, event=event, payment_id=pid, where=where
            )
        self._signature_faults(event, entry, where, checked)
        self.settlement.entry(entry, str(event.event_id), where)
        self._book(event, entry, where)
        changes = fold_entry(self.head, entry)
        apply_balances(self.balances, changes)
        self.head = changes.head
        after = {a: self.balances[a].balance for a, _ in changes.deltas}
        for account_id, balance in sorted(after.items()):
            if must_stay_non_negative(account_id) and balance < 0:
                self._add(
                    "negative_balance",
                    f"{account_id} goes to {balance} fen at entry {entry.seq}",
                    seq=entry.seq,
                    event=event,
                    payment_id=pid,
                    where=where,
                )
        for line in sorted(statement_lines(changes, after), key=lambda x: x.account_id):
            self._statement.update(
                statement_record(
                    line.account_id,
                    line.seq,
                    line.payment_id,
                    line.amount,
                    line.balance_after,
                    iso_utc(line.posted_at),
                )
            )
        gap = bytes(32 * max(0, entry.seq - 1 - len(self._hashes) // 32))
        self._hashes.extend(gap)
        self._hashes.extend(self._raw_hash(entry.hash))
        self._digests.extend(gap)
        self._digests.extend(checked.whole or self._whole(entry))
        if entry.receipt is not None:
            self._awaiting_receipt[entry.seq] = (entry, str(event.event_id), where)

    def _book(self, event: Event, entry: JournalEntryPosted, where: Where) -> None:
        """Remember what the entry books, by kind, for the cross-checks."""
        pid = entry.payment_id
        if entry.kind in SETTLEMENT_KINDS:
            return  # the settlement audit's (``self.settlement``)
        if entry.kind == "refund":
            self._book_refund(event, entry, where)
            return
        booked = self._allocations if entry.kind == "allocation" else self._posted
        if entry.kind == "allocation":
            self.counts.allocations += 1
        if pid in booked:
            first = booked[pid]
            self._add(
                "double_posting",
                f"{'allocation' if entry.kind == 'allocation' else 'payment'} {pid} posted "
                f"twice: entries {first.seq} and {entry.seq}",
                seq=entry.seq,
                event=event,
                payment_id=pid,
                where=where,
                related=(first.where,),
            )
            return
        booked[pid] = _Posted(
            entry.seq, transaction_amount(entry), _ref(entry.receipt), str(event.event_id), where
        )

    def _book_refund(self, event: Event, entry: JournalEntryPosted, where: Where) -> None:
        pid, rid, amount = entry.payment_id, entry.refund_id or "", transaction_amount(entry)
        self.counts.refunds += 1
        kw = {"seq": entry.seq, "event": event, "payment_id": pid, "where": where}
        if rid in self._refunds:
            first = self._refunds[rid]
            self._add(
                "double_posting",
                f"refund {rid} posted twice: entries {first.journal_seq} and {entry.seq}",
                related=(first.where,),
                **kw,  # type: ignore[arg-type]
            )
            return
        self._refunds[rid] = _Refunded(pid, amount, entry.seq, str(event.event_id), where)
        paid = self._posted.get(pid)
        refunded = self._refunded[pid] = self._refunded.get(pid, 0) + amount
        if paid is None:
            self._add(
                "refund_without_payment",
                f"refund {rid} (entry {entry.seq}) refunds payment {pid}, which the journal "
                "never posted",
                **kw,  # type: ignore[arg-type]
            )
        elif refunded > paid.amount:
            self._add(
                "refund_exceeds_payment",
                f"refund {rid} (entry {entry.seq}) brings the refunds of payment {pid} to "
                f"{refunded} fen, more than the {paid.amount} fen paid",
                related=(paid.where,),
                **kw,  # type: ignore[arg-type]
            )

    def _red_receipt_faults(self, row: ReceiptRow, label: str, event: Event, where: Where) -> None:
        """A red receipt must reverse an original already issued (never another red one)."""
        original = relates_to(row.face)
        known = self.receipts.get(original) if original else None
        if original is None or known is None or original in self._red:
            named = f"{original[0]}/{original[1]}" if original else "nothing"
            self._add(
                "red_receipt_orphan",
                f"red {label} names original {named}, which is not an issued original receipt",
                seq=row.journal_seq,
                event=event,
                payment_id=row.payment_id,
                where=where,
            )

    def _receipt(self, event: Event, issued: ReceiptIssued, where: Where, checked: Checked) -> None:
        pid, seq = issued.payment_id, issued.journal_seq
        try:
            row = receipt_row(issued)
        except (KeyError, ValueError) as exc:
            self._add(
                "receipt_mismatch",
                f"receipt face is incomplete: {exc}",
                seq=seq,
                event=event,
                payment_id=pid,
                where=where,
            )
            return
        key, digest = (row.code, row.number), checked.digest or receipt_digest(row)
        label = f"receipt {row.code}/{row.number}"
        if key in self.receipts:
            if self.receipts[key] == digest:
                self.counts.duplicates += 1
            else:
                self._add(
                    "receipt_conflict",
                    f"{label} issued twice with other content",
                    seq=seq,
                    event=event,
                    payment_id=pid,
                    where=where,
                )
            return
        self.counts.receipts += 1
        self.receipts[key] = digest
        person_key = personal_key_id(row.face)
        if person_key is not None:
            self._sealed_receipts[person_key] = self._sealed_receipts.get(person_key, 0) + 1
        red = is_red(row.face)
        if red:
            self._red_receipt_faults(row, label, event, where)
            self._red.add(key)
        public = self.key_for(issued.key_id, SigningPurpose.RECEIPTS)
        signed = (
            checked.signed
            if checked.signed is not None
            else public is not None and verify_face(issued.receipt, issued.signature, public)
        )
        if not signed:
            signer = self.misnamed(issued.key_id, SigningPurpose.RECEIPTS)
            with_key = f"key {issued.key_id}" if public is not None else self.trusted_text()
            self._add(
                "receipt_signature",
                f"{label}: signature does not verify with {with_key}{signer}",
                seq=seq,
                event=event,
                payment_id=pid,
                where=where,
            )
        self._number_faults(row, label, event, where)
        self._entry_faults(row, issued, label, red, event, where)

    def _number_faults(self, row: ReceiptRow, label: str, event: Event, where: Where) -> None:
        """Receipt numbers are gapless per code (red receipts share the numbering)."""
        seq, pid = row.journal_seq, row.payment_id
        number = int(row.number) if ascii_digits(row.number) else -1
        expected = self._next_number.get(row.code, 1)
        if number != expected:
            what = (
                f"numbers {expected:010d}..{number - 1:010d} are missing"
                if number > expected
                else f"expected {expected:010d}"
            )
            self._add(
                "receipt_number_gap",
                f"{label}: {what}",
                seq=seq,
                event=event,
                payment_id=pid,
                where=where,
            )
        self._next_number[row.code] = max(expected, number + 1)

    def _entry_faults(
        self,
        row: ReceiptRow,
        issued: ReceiptIssued,
        label: str,
        red: bool,
        event: Event,
        where: Where,
    ) -> None:
        """The receipt matches the entry naming it (code, number, check code, payment,
        total: negative on a red receipt, refund)."""
        seq, pid, key = row.journal_seq, row.payment_id, (row.code, row.number)
        waiting = self._awaiting_receipt.pop(seq, None)
        if waiting is None:
            self._add(
                "receipt_without_entry",
                f"{label} points at entry {seq}, which has no receipt reference or was not seen",
                seq=seq,
                event=event,
                payment_id=pid,
                where=where,
            )
            return
        entry, _entry_event, entry_where = waiting
        ref = entry.receipt
        wrong = [
            name
            for name, ok in (
                ("code/number", ref is not None and (ref.code, ref.number) == key),
                ("check code", ref is not None and ref.check_code == row.check_code),
                ("payment", entry.payment_id == pid),
                ("total", row.face.get("total") == (-1 if red else 1) * transaction_amount(entry)),
                ("refund", issued.refund_id == entry.refund_id and red == (entry.kind == "refund")),
            )
            if not ok
        ]
        if wrong:
            self._add(
                "receipt_mismatch",
                f"{label} differs from entry {seq} in {', '.join(wrong)}",
                seq=seq,
                event=event,
                payment_id=pid,
                where=where,
                related=(entry_where,),
            )

    # -- payments.v1 ---------------------------------------------------------

    def payment(self, event: Event, where: Where) -> None:
        self.payment_facts(facts_of(event), where)

    def payment_facts(self, f: PaymentFacts, where: Where) -> None:
        """Fold one payments.v1 event, as ``facts.facts_of`` read it (a replay reads
        them in its workers)."""
        self.payments_read = True
        self.counts.payment_events += 1
        if f.says is Says.REFUND:
            self._refund_succeeded(f, where)
            return
        if f.says is Says.ALLOCATION:
            self._allocated(f, where)
            return
        if f.says is Says.ERASURE:
            self.counts.erasures += 1
            self._erased_keys.update(f.key_ids)
            return
        if f.says is not Says.PAYMENT:
            return
        earlier = self._successes.get(f.payment_id)
        if earlier is not None:
            self._succeeded_again(f"payment {f.payment_id}", earlier, f, f.payment_id, where)
            return
        self.counts.successes += 1
        self._successes[f.payment_id] = _Success(
            f.amount, f.journal_seq, f.receipt, f.event_id, where
        )

    def _succeeded_again(
        self,
        what: str,
        earlier: _Success | _Refunded,
        f: PaymentFacts,
        payment_id: str,
        where: Where,
    ) -> None:
        """A second success of the same payment or refund: a redelivered copy (the same
        event id) is counted; another event is a ``duplicate_success``."""
        if earlier.event_id == f.event_id:
            self.counts.duplicates += 1
            return
        self.findings.add(
            Discrepancy(
                "duplicate_success",
                f"{what} succeeded twice (events {earlier.event_id} and {f.event_id})",
                event_id=f.event_id,
                payment_id=payment_id,
                where=where,
                related=(earlier.where,),
            )
        )

    def _refund_succeeded(self, f: PaymentFacts, where: Where) -> None:
        earlier = self._refund_successes.get(f.refund_id)
        if earlier is not None:
            self._succeeded_again(f"refund {f.refund_id}", earlier, f, f.payment_id, where)
            return
        self._refund_successes[f.refund_id] = _Refunded(
            f.payment_id, f.amount, f.journal_seq, f.event_id, where
        )

    def _allocated(self, f: PaymentFacts, where: Where) -> None:
        if f.allocation_id in self._allocation_events:
            self.counts.duplicates += 1  # the bureau's file again: the ledger books it once
            return
        self._allocation_events[f.allocation_id] = _Success(f.amount, 0, None, f.event_id, where)

    def mark_payments_read(self) -> None:
        """The payments topic was read (even if empty): cross-check it at the end."""
        self.payments_read = True

    # -- end of log ----------------------------------------------------------

    def finish(self) -> Findings:
        if self._finished:
            return self.findings
        self._finished = True
        self.settlement.finish(self.hash_hex_at, self.head.seq)
        for seq, (entry, event_id, where) in sorted(self._awaiting_receipt.items()):
            ref = entry.receipt
            label = f"{ref.code}/{ref.number}" if ref else "?"
            self.findings.add(
                Discrepancy(
                    "receipt_missing",
                    f"entry {seq} names receipt {label}, never issued",
                    seq=seq,
                    event_id=event_id,
                    payment_id=entry.payment_id,
                    where=where,
                )
            )
        if self.payments_read:
            self._cross_check_payments_topic()
        return self.findings

    def _cross_check_payments_topic(self) -> None:
        """payments.v1 against the journal: payments, refunds and allocations."""
        _cross_check(
            self.findings.add,
            self._successes,
            self._posted,
            missing=_payment_not_posted,
            differs=_payment_mismatch,
            unclaimed=_posting_without_payment,
        )
        _cross_check(
            self.findings.add,
            self._refund_successes,
            self._refunds,
            missing=_refund_not_posted,
            differs=_refund_mismatch,
            unclaimed=_refund_not_succeeded,
        )
        _cross_check(
            self.findings.add,
            self._allocation_events,
            self._allocations,
            missing=_allocation_not_posted,
            differs=_allocation_mismatch,
            unclaimed=_allocation_without_event,
        )


# -- payments.v1 against the journal ----------------------------------------------

Claim = TypeVar("Claim")
Entry = TypeVar("Entry")


def _cross_check(
    add: Callable[[Discrepancy], None],
    claims: Mapping[str, Claim],
    entries: Mapping[str, Entry],
    *,
    missing: Callable[[str, Claim], Discrepancy],
    differs: Callable[[str, Claim, Entry], Discrepancy | None],
    unclaimed: Callable[[str, Entry], Discrepancy],
) -> None:
    """What payments.v1 says happened (``claims``) against the journal's entries, by id:
    a claim with no entry, a claim its entry contradicts, an entry no claim names."""
    for key, claim in claims.items():
        entry = entries.get(key)
        found = missing(key, claim) if entry is None else differs(key, claim, entry)
        if found is not None:
            add(found)
    for key, entry in entries.items():
        if key not in claims:
            add(unclaimed(key, entry))


def _at_entry(
    kind: str, message: str, posted: _Posted, key: str, related: tuple[Where, ...] = ()
) -> Discrepancy:
    """A discrepancy found at a journal entry (a payment's or an allocation's)."""
    return Discrepancy(
        kind,
        message,
        seq=posted.seq,
        event_id=posted.event_id,
        payment_id=key,
        where=posted.where,
        related=related,
    )


def _payment_not_posted(pid: str, s: _Success) -> Discrepancy:
    return Discrepancy(
        "payment_not_posted",
        f"PaymentSucceeded for {pid} ({s.amount} fen, "
        f"journal seq {s.journal_seq}) has no journal transaction",
        seq=s.journal_seq,
        event_id=s.event_id,
        payment_id=pid,
        where=s.where,
    )


def _payment_mismatch(pid: str, s: _Success, posted: _Posted) -> Discrepancy | None:
    wrong = []
    if posted.amount != s.amount:
        wrong.append(f"amount {s.amount} fen vs {posted.amount} fen in the journal")
    if posted.seq != s.journal_seq:
        wrong.append(f"journal seq {s.journal_seq} vs {posted.seq}")
    if posted.receipt != s.receipt:
        wrong.append(f"receipt {s.receipt} vs {posted.receipt} in the journal")
    if not wrong:
        return None
    return _at_entry(
        "payment_mismatch",
        f"payment {pid}: {'; '.join(wrong)}",
        posted,
        pid,
        related=(s.where,),
    )


def _posting_without_payment(pid: str, posted: _Posted) -> Discrepancy:
    return _at_entry(
        "posting_without_payment",
        f"journal entry {posted.seq} posts {pid} "
        f"({posted.amount} fen) but payments.v1 has no PaymentSucceeded for it "
        "(or the payment service has not published it yet)",
        posted,
        pid,
    )


def _refund_not_posted(rid: str, r: _Refunded) -> Discrepancy:
    return Discrepancy(
        "refund_not_posted",
        f"RefundSucceeded for {rid} ({r.amount} fen, journal seq "
        f"{r.journal_seq}) has no refund entry in the journal",
        seq=r.journal_seq,
        event_id=r.event_id,
        payment_id=r.payment_id,
        where=r.where,
    )


def _refund_mismatch(rid: str, r: _Refunded, posted: _Refunded) -> Discrepancy | None:
    if (posted.amount, posted.journal_seq) == (r.amount, r.journal_seq):
        return None
    return Discrepancy(
        "refund_mismatch",
        f"refund {rid}: RefundSucceeded says {r.amount} fen at entry "
        f"{r.journal_seq}, the journal {posted.amount} fen at entry "
        f"{posted.journal_seq}",
        seq=posted.journal_seq,
        event_id=posted.event_id,
        payment_id=posted.payment_id,
        where=posted.where,
        related=(r.where,),
    )


def _refund_not_succeeded(rid: str, posted: _Refunded) -> Discrepancy:
    return Discrepancy(
        "refund_not_succeeded",
        f"journal entry {posted.journal_seq} refunds {posted.amount} fen "
        f"({rid}) but payments.v1 has no RefundSucceeded for it "
        "(or the payment service has not published it yet)",
        seq=posted.journal_seq,
        event_id=posted.event_id,
        payment_id=posted.payment_id,
        where=posted.where,
    )


def _allocation_not_posted(aid: str, a: _Success) -> Discrepancy:
    return Discrepancy(
        "allocation_not_posted",
        f"MedicalAccountAllocated {aid} ({a.amount} fen) has no journal entry",
        event_id=a.event_id,
        payment_id=aid,
        where=a.where,
    )


def _allocation_mismatch(aid: str, a: _Success, posted: _Posted) -> Discrepancy | None:
    if posted.amount == a.amount:
        return None
    return _at_entry(
        "allocation_mismatch",
        f"allocation {aid}: {a.amount} fen allocated, {posted.amount} fen in the journal",
        posted,
        aid,
        related=(a.where,),
    )


def _allocation_without_event(aid: str, posted: _Posted) -> Discrepancy:
    return _at_entry(
        "allocation_without_event",
        f"journal entry {posted.seq} allocates {posted.amount} fen ({aid}) "
        "but payments.v1 has no MedicalAccountAllocated for it",
        posted,
        aid,
    )
