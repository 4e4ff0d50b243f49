"""The keys the resident's side uses, each from ONE function so that switching to a
per-purpose key (issue 11: "one key per purpose") is a change here only.

For now: the records-session key is the shared hash key (payment issues the tokens
with the same), certificates are signed by the receipt signing key and their check
codes keyed by the hash key, as receipts' are.
"""

from __future__ import annotations

from services.ledger.config import LedgerSettings
from services.ledger.signing import ReceiptSigner


def records_session_key(settings: LedgerSettings) -> bytes:
    """The key of ``shared.sessions`` records-session tokens (payment issues them)."""
    return settings.hash_key_bytes()


def certificate_signer(settings: LedgerSettings) -> ReceiptSigner:
    """The key that signs insurance certificates (电子参保凭证)."""
    return settings.receipt_signer()


def certificate_check_key(settings: LedgerSettings) -> bytes:
    """The HMAC key of certificates' check codes (校验码)."""
    return settings.hash_key_bytes()
