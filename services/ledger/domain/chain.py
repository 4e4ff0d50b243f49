"""The hash chain, the journal head and the ledger's deterministic ids.

Each entry is hashed over its JSON form without ``hash`` and ``signature``
(``entry_body``): fields that v1 entries did not have (``JournalEntryPosted.V1_ABSENT``)
are left out while null, so every v1 entry hashes byte-identically.
``hash = sha256(prev_hash + canonical JSON)``. Since settlement, each entry is also
signed (``signature``: Ed25519 by the ledger's key over the ASCII of ``hash``), so a
forger who recomputes the chain without the key is caught.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.canonical import canonical_bytes
from shared.events import EventFactory, JournalEntryPosted

GENESIS_HASH = "0" * 64
LEDGER_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://yibao.example/ledger")

EVENTS = EventFactory("ledger")


def entry_body(entry: JournalEntryPosted) -> dict[str, Any]:
    """The entry as hashed: its JSON form without ``hash`` and ``signature`` and
    without the fields v1 did not have while they are null."""
    body = entry.model_dump(mode="json", exclude=set(JournalEntryPosted.UNHASHED))
    for name in JournalEntryPosted.V1_ABSENT:
        if body.get(name) is None:
            body.pop(name, None)
    return body


def chain_hash(prev_hash: str, body: Mapping[str, Any]) -> str:
    """sha256(prev_hash + canonical_json(entry without hash)), hex."""
    return hashlib.sha256(prev_hash.encode() + canonical_bytes(body)).hexdigest()


def hash_of(entry: JournalEntryPosted) -> str:
    return chain_hash(entry.prev_hash, entry_body(entry))


def transaction_id(payment_id: str, refund_id: str | None = None) -> str:
    """One payment (or allocation), one transaction; one refund, one more: derived, never
    drawn."""
    name = f"refund:{refund_id}" if refund_id else f"payment:{payment_id}"
    return str(uuid.uuid5(LEDGER_NAMESPACE, name))


def event_id_for(payment_id: str, event_type: str, refund_id: str | None = None) -> uuid.UUID:
    """Deterministic ids for the ledger's own events (a re-decision cannot fork them);
    a refund's events are told apart from its payment's by ``refund_id``."""
    name = f"{event_type}:{payment_id}"
    return uuid.uuid5(LEDGER_NAMESPACE, f"{name}:{refund_id}" if refund_id else name)


@dataclass(frozen=True)
class LedgerHead:
    """The end of the journal: last seq and hash, next receipt number per code."""

    seq: int = 0
    hash: str = GENESIS_HASH
    next_receipt_numbers: Mapping[str, int] = field(default_factory=dict)

    def next_receipt_number(self, code: str) -> int:
        return self.next_receipt_numbers.get(code, 1)
