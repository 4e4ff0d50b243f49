"""The keys the resident's side uses, one purpose each (issue 11: one key per purpose).

The records-session key is the one payment issues ``shared.sessions`` tokens under
(``KeyPurpose.RECORDS_SESSION``, derived from the shared hash key on both sides);
certificates are signed by the ledger's certificates key and their check codes keyed
by the check-code key, as receipts' are.
"""

from __future__ import annotations

from services.ledger.config import LedgerSettings
from services.ledger.signing import ReceiptSigner, SigningPurpose
from shared.crypto import KeyPurpose


def records_session_key(settings: LedgerSettings) -> bytes:
    """The key of ``shared.sessions`` records-session tokens (payment issues them)."""
    return settings.hash_key_for(KeyPurpose.RECORDS_SESSION)


def certificate_signer(settings: LedgerSettings) -> ReceiptSigner:
    """The key that signs insurance certificates (电子参保凭证)."""
    return settings.signer(SigningPurpose.CERTIFICATES)


def certificate_check_key(settings: LedgerSettings) -> bytes:
    """The HMAC key of certificates' check codes (校验码)."""
    return settings.hash_key_for(KeyPurpose.CHECK_CODE)
