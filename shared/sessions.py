"""Records sessions: a short-lived proof that the resident just typed an SMS code.

The seeds' access levels: a payer's record list is basic, but the detailed records
(消费明细) need a fresh SMS code to the enrolled phone. The payment service sends and
checks the code (it owns payers and their phones) and hands the caller a session
token; the ledger, which holds the records, accepts the token without calling back.

A token is ``rs1.<expires epoch seconds>.<nonce>.<mac>``: HMAC-SHA256, under the key
both services derive for this one purpose, over the caller, the payer and the two
fields. It names no person: the payer id and caller are bound by the MAC, not carried.
It cannot be moved to another payer or caller, nor stretched past its expiry.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import datetime

from shared.crypto import b64e, hmac_sha256

SESSION_VERSION = "rs1"


def _mac(key: bytes, *, caller: str, payer_id: str, expires: int, nonce: str) -> str:
    message = "\x1f".join((SESSION_VERSION, caller, payer_id, str(expires), nonce))
    return b64e(hmac_sha256(key, message.encode()))


def issue_records_session(key: bytes, *, caller: str, payer_id: str, expires_at: datetime) -> str:
    """A token for ``caller`` to read ``payer_id``'s detailed records until ``expires_at``."""
    expires = int(expires_at.timestamp())
    nonce = b64e(secrets.token_bytes(9))
    mac = _mac(key, caller=caller, payer_id=payer_id, expires=expires, nonce=nonce)
    return f"{SESSION_VERSION}.{expires}.{nonce}.{mac}"


def records_session_valid(
    key: bytes, token: str, *, caller: str, payer_id: str, now: datetime
) -> bool:
    """True when ``token`` was issued for this caller and payer and has not expired."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != SESSION_VERSION or not parts[1].isascii():
        return False
    _, expires_text, nonce, mac = parts
    if not expires_text.isdigit():
        return False
    expires = int(expires_text)
    expected = _mac(key, caller=caller, payer_id=payer_id, expires=expires, nonce=nonce)
    return hmac.compare_digest(expected, mac) and now.timestamp() < expires
