"""The rebuild without checks: ledger.v1 folded into head, balances and receipts, fast.

``yibao-audit replay --no-checks`` answers "what does the journal say the balances
are" in seconds where the full audit takes minutes: it trusts the log. Each message is
decoded only as far as the fold needs (msgspec, into the few fields below; the rest of
the message is skipped unparsed), no model is validated, no hash recomputed, no
signature verified. The fold is the projector's (``domain.projector``): an entry at or
below the head is a redelivery and changes nothing; each entry's lines move balances;
a receipt is remembered by code and number. ``tests/unit/test_audit_unchecked.py``
proves the state equals the checked replay's on a clean journal.

A message it cannot read is counted (``unreadable``) and skipped: the checked replay
is where such things are reported.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec

from services.ledger.domain.chain import GENESIS_HASH
from shared.topics import LEDGER


# gc=False: these hold only strings, ints and each other, never a cycle, so the
# collector need not track the millions a rebuild makes.
class _Line(msgspec.Struct, gc=False):
    account_id: str
    amount: int


class _Ref(msgspec.Struct, gc=False):
    code: str
    number: str


class _Payload(msgspec.Struct, gc=False):
    seq: int = 0
    hash: str = ""
    lines: list[_Line] = []
    receipt: _Ref | None = None  # an entry's reference, or a receipt's face (its code, number)


class _Envelope(msgspec.Struct, gc=False):
    event_type: str
    payload: msgspec.Raw  # decoded only for the two types the fold reads


class _ExportLine(msgspec.Struct, gc=False):
    topic: str
    value: msgspec.Raw = msgspec.Raw(b"null")  # decoded only on a ledger.v1 line


class _ExportMessage(msgspec.Struct, gc=False):
    """An export line whose value is an envelope: both read in one pass."""

    topic: str
    value: _Envelope


_MESSAGE = msgspec.json.Decoder(_Envelope)
_PAYLOAD = msgspec.json.Decoder(_Payload)
_EXPORT_LINE = msgspec.json.Decoder(_ExportLine)
_EXPORT_MESSAGE = msgspec.json.Decoder(_ExportMessage)


@dataclass
class Projection:
    """The journal's state as the ledger's projector would rebuild it, unchecked."""

    seq: int = 0
    hash: str = GENESIS_HASH
    balances: dict[str, int] = field(default_factory=dict)
    receipts: set[tuple[str, str]] = field(default_factory=set)
    next_receipt_numbers: dict[str, int] = field(default_factory=dict)
    events: int = 0
    entries: int = 0
    redelivered: int = 0
    unreadable: int = 0

    def message(self, raw: bytes | msgspec.Raw | None) -> None:
        """Fold one ledger.v1 message value."""
        self.events += 1
        try:
            envelope = _MESSAGE.decode(raw or b"")
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.unreadable += 1
            return
        self._fold(envelope)

    def export_line(self, raw: bytes) -> None:
        """Fold one line of an export data file (lines of other topics are skipped)."""
        try:  # the usual line in one pass; anything else as two, counted as before
            message = _EXPORT_MESSAGE.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
        else:
            if message.topic.endswith(LEDGER):
                self.events += 1
                self._fold(message.value)
            return
        try:
            line = _EXPORT_LINE.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.events += 1
            self.unreadable += 1
            return
        if not line.topic.endswith(LEDGER):
            return
        self.message(line.value)

    def _fold(self, envelope: _Envelope) -> None:
        kind = envelope.event_type
        if kind not in ("JournalEntryPosted", "ReceiptIssued"):
            return
        try:
            payload = _PAYLOAD.decode(envelope.payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.unreadable += 1
            return
        if kind == "JournalEntryPosted":
            self._entry(payload)
        else:
            self._receipt(payload)

    def _entry(self, entry: _Payload) -> None:
        if entry.seq <= self.seq:
            self.redelivered += 1
            return
        self.entries += 1
        balances = self.balances
        for line in entry.lines:
            balances[line.account_id] = balances.get(line.account_id, 0) + line.amount
        ref = entry.receipt
        if ref is not None and ref.number.isdigit():
            counters = self.next_receipt_numbers
            counters[ref.code] = max(counters.get(ref.code, 1), int(ref.number) + 1)
        self.seq, self.hash = entry.seq, entry.hash

    def _receipt(self, issued: _Payload) -> None:
        ref = issued.receipt
        if ref is not None:
            self.receipts.add((ref.code, ref.number))

    def fold(self, raws: Iterable[bytes | None]) -> Projection:
        for raw in raws:
            self.message(raw)
        return self
