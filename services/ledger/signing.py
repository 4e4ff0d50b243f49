"""Ed25519 signatures: the ledger signs, anyone verifies with the published key.

A receipt signature is base64 (standard alphabet) of Ed25519 over the canonical JSON
of the receipt face (``shared.canonical``, RFC 8785). Journal entries (over the ASCII
of their hash), journal checkpoints (over the canonical JSON of ``{seq, hash, at}``),
settlement files (over their bytes) and export manifests are signed too. The key id is
the first 16 hex digits of sha256 of the raw 32-byte public key, so an auditor can
tell which key signed.

One key per purpose (issue 11, ``SigningPurpose``): each purpose signs with its own
Ed25519 seed, derived from YIBAO_RECEIPT_SIGNING_KEY by ``shared.crypto.derive_key``
(info ``yibao/signing/<purpose>``); the root seed itself signs nothing new. Before
issue 11 the root signed everything: its key is published with purpose ``all``
(``UNDIVIDED``) while what it signed is in force.

At the service level, beside ``store``: ``receipts/`` publishes and uses the key,
``audit/`` verifies with it and signs export manifests; neither imports the other.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from services.ledger.domain.settlement import checkpoint_message
from shared.canonical import canonical_bytes
from shared.crypto import derive_key
from shared.events import JournalCheckpoint, JournalEntryPosted

ALGORITHM = "Ed25519"


class SigningPurpose(StrEnum):
    """What a ledger key signs; each purpose has its own key."""

    RECEIPTS = "receipts"  # receipt faces
    JOURNAL = "journal"  # journal entries and journal checkpoints
    SETTLEMENT = "settlement"  # settlement files (对账单, X-Key-Id / X-Signature)
    MANIFESTS = "manifests"  # yibao-audit export manifests
    CERTIFICATES = "certificates"  # insurance certificates (reserved)


# The purpose of a key that signs every kind of artefact: the root key before issue 11
# (and a test's single signer). An auditor accepts it for any purpose.
UNDIVIDED = "all"


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


def signing_seed_for(root: bytes, purpose: SigningPurpose) -> bytes:
    """The Ed25519 seed that signs ``purpose``, derived from the root seed."""
    return derive_key(root, f"signing/{purpose}")


@dataclass(frozen=True)
class LedgerSigners:
    """The ledger's signing keys, one per purpose (``signer(purpose)``)."""

    by_purpose: Mapping[SigningPurpose, ReceiptSigner]

    @classmethod
    def derive(cls, root: bytes) -> LedgerSigners:
        """One key per purpose, each derived from the root seed."""
        return cls({p: ReceiptSigner(signing_seed_for(root, p)) for p in SigningPurpose})

    @classmethod
    def undivided(cls, signer: ReceiptSigner) -> LedgerSigners:
        """One key for every purpose: how the ledger signed before issue 11 (and tests)."""
        return cls(dict.fromkeys(SigningPurpose, signer))

    def signer(self, purpose: SigningPurpose) -> ReceiptSigner:
        return self.by_purpose[purpose]

    @property
    def receipts(self) -> ReceiptSigner:
        return self.by_purpose[SigningPurpose.RECEIPTS]

    @property
    def journal(self) -> ReceiptSigner:
        return self.by_purpose[SigningPurpose.JOURNAL]

    def published(self) -> list[tuple[str, ReceiptSigner]]:
        """Each distinct key with its purpose (``UNDIVIDED`` for a key that signs every
        purpose), in ``SigningPurpose`` order."""
        by_key: dict[str, list[SigningPurpose]] = {}
        signers: dict[str, ReceiptSigner] = {}
        for purpose, signer in self.by_purpose.items():
            by_key.setdefault(signer.key_id, []).append(purpose)
            signers[signer.key_id] = signer
        return [
            (UNDIVIDED if len(purposes) > 1 else purposes[0], signers[key_id])
            for key_id, purposes in by_key.items()
        ]


def may_sign(purposes: Mapping[str, str], key_id: str, purpose: SigningPurpose) -> bool:
    """Whether key ``key_id`` may sign ``purpose``: its purpose (``purposes``, by key id)
    is that one or ``UNDIVIDED``; a key without a stated purpose may sign anything."""
    return purposes.get(key_id, UNDIVIDED) in (UNDIVIDED, purpose)


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
