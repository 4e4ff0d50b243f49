"""Ed25519 signatures: the ledger signs, anyone verifies with the published key.

A receipt signature is base64 (standard alphabet) of Ed25519 over the canonical JSON
of the receipt face (``shared.canonical``, RFC 8785). Journal entries (over the ASCII
of their hash), journal checkpoints (over the canonical JSON of ``{seq, hash, at}``)
and settlement files (over their bytes) are signed with the same key. The key id is
the first 16 hex digits of sha256 of the raw 32-byte public key, so an auditor can
tell which key signed.

At the service level, beside ``store``: ``receipts/`` publishes and uses the key,
``audit/`` verifies with it and signs export manifests; neither imports the other.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from services.ledger.domain.settlement import checkpoint_message
from shared.canonical import canonical_bytes
from shared.events import JournalCheckpoint, JournalEntryPosted

ALGORITHM = "Ed25519"


def key_id_of(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


class ReceiptSigner:
    """Holds the private key; exposes the public half for publication."""

    def __init__(self, seed: bytes) -> None:
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_raw = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._key_id = key_id_of(self.public_raw)

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def public_key_b64(self) -> str:
        return base64.b64encode(self.public_raw).decode()

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)


def verify_face(face: Mapping[str, Any], signature_b64: str, public_raw: bytes) -> bool:
    """True when ``signature_b64`` is the signature of ``face`` under ``public_raw``."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        key = Ed25519PublicKey.from_public_bytes(public_raw)
        key.verify(signature, canonical_bytes(dict(face)))
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


def verify_bytes(message: bytes, signature_b64: str | None, public_raw: bytes) -> bool:
    """True when ``signature_b64`` is the Ed25519 signature of ``message``."""
    if not signature_b64:
        return False
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, message)
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


def checkpoint_verifies(checkpoint: JournalCheckpoint, public_raw: bytes) -> bool:
    """A journal checkpoint is signed by ``public_raw`` over its ``{seq, hash, at}``."""
    message = checkpoint_message(checkpoint.seq, checkpoint.hash, checkpoint.at)
    return verify_bytes(message, checkpoint.signature, public_raw)


def entry_signature_verifies(entry: JournalEntryPosted, public_raw: bytes) -> bool:
    """A journal entry is signed by ``public_raw`` over the ASCII of its hash."""
    return verify_bytes(entry.hash.encode(), entry.signature, public_raw)
