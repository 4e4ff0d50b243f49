"""Ed25519 receipt signatures: the ledger signs, anyone verifies with the published key.

A signature is base64 (standard alphabet) of Ed25519 over the canonical JSON of the
receipt face (``shared.canonical``, RFC 8785). The key id is the first 16 hex digits of
sha256 of the raw 32-byte public key, so an auditor can tell which key signed.

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

from shared.canonical import canonical_bytes

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
