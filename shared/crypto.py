"""Sealing, keyed hashes and key parsing.

Sealed fields (AES-256-GCM) carry a clear value that exactly one other service needs
(the resident's phone for notify, the SMS code for notify); the associated data binds
a sealed value to the record it belongs to, so it cannot be moved to another one.
Keyed hashes (HMAC-SHA256) let a service look a value up without storing it.

One key per purpose (issue 11): ``derive_key`` turns a root secret (YIBAO_HASH_KEY,
YIBAO_RECEIPT_SIGNING_KEY) into one 32-byte key per ``KeyPurpose`` with HKDF-SHA256
(RFC 5869), salt ``KDF_SALT``, info ``b"yibao/" + purpose``. A key learnt for one
purpose (say, the fingerprint key) says nothing about another (the ID-number key),
and the root itself keys nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Iterable
from enum import StrEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.errors import YibaoError


class SealError(YibaoError):
    """A sealed value was tampered with, moved, or sealed under another key."""


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse_key(text: str, *, size: int = 32) -> bytes:
    """A key from settings: urlsafe base64 (padding optional) of exactly ``size`` bytes."""
    try:
        raw = b64d(text.strip())
    except ValueError as exc:
        raise ValueError(f"key is not base64: {exc}") from exc
    if len(raw) != size:
        raise ValueError(f"key must be {size} bytes, got {len(raw)}")
    return raw


def seal_key_id(key: bytes) -> str:
    """A seal key's id: the first 8 hex digits of its SHA-256 (names the key, reveals
    nothing usable about it)."""
    return hashlib.sha256(key).hexdigest()[:8]


class Sealer:
    """AES-256-GCM with a random 96-bit nonce, over a key ring: the current key seals,
    the current and the old keys open.

    A sealed value is ``v2.<kid>.<b64(nonce+ciphertext)>``, ``kid`` being the sealing
    key's ``seal_key_id``; a ``v2`` value opens with the key its id names. Values sealed
    before keys had ids (``v1.<b64>``, kept forever on some topics) are tried with the
    current key, then the old ones.
    """

    def __init__(self, key: bytes, *, old_keys: Iterable[bytes] = ()) -> None:
        self._kid = seal_key_id(key)
        self._current = AESGCM(key)
        self._ring: dict[str, AESGCM] = {self._kid: self._current}
        for old in old_keys:
            self._ring.setdefault(seal_key_id(old), AESGCM(old))

    @property
    def key_id(self) -> str:
        """The id of the key new values are sealed under."""
        return self._kid

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id this sealer opens, the current one first."""
        return tuple(self._ring)

    def seal(self, plaintext: str, *, aad: str) -> str:
        nonce = os.urandom(12)
        sealed = nonce + self._current.encrypt(nonce, plaintext.encode(), aad.encode())
        return f"v2.{self._kid}.{b64e(sealed)}"

    def open(self, token: str, *, aad: str) -> str:
        version, _, rest = token.partition(".")
        if version == "v2":
            kid, _, body = rest.partition(".")
            aead = self._ring.get(kid)
            if aead is None:
                raise SealError(
                    f"sealed value names key {kid!r}, which is neither the current seal key"
                    " nor one of the old ones (YIBAO_SEAL_KEYS_OLD)"
                )
            return _open_with((aead,), body, aad)
        if version == "v1":
            return _open_with(self._ring.values(), rest, aad)
        raise SealError("unknown sealed-value format")


def _open_with(keys: Iterable[AESGCM], body: str, aad: str) -> str:
    try:
        raw = b64d(body)
    except ValueError as exc:
        raise SealError("sealed value is not base64") from exc
    if len(raw) < 12 + 16:
        raise SealError("sealed value is too short")
    for aead in keys:
        try:
            return aead.decrypt(raw[:12], raw[12:], aad.encode()).decode()
        except InvalidTag:
            continue
    raise SealError("sealed value does not open with these keys and this binding")


# Fixed and public: HKDF's salt only needs to be the same everywhere (RFC 5869 3.1); the
# secret is the root key. Changing it changes every derived key.
KDF_SALT = b"yibao key derivation v1"


class KeyPurpose(StrEnum):
    """What a keyed hash (HMAC) is for; each purpose has its own key (``derive_key``)."""

    ID_HASH = "id_hash"  # payment: ID-number look-ups (payers, intake)
    PHONE_HASH = "phone_hash"  # risk: phone look-ups (velocity per phone)
    CODE_HASH = "code_hash"  # risk: SMS-code hashes
    CHECK_CODE = "check_code"  # ledger: receipt check codes (校验码)
    FINGERPRINT = "fingerprint"  # payment: request fingerprints (idempotency)
    RECORDS_SESSION = "records_session"  # payment and ledger: records-session tokens


def derive_key(root: bytes, purpose: str, *, length: int = 32) -> bytes:
    """The key for ``purpose`` under ``root``: HKDF-SHA256, salt ``KDF_SALT``, info
    ``b"yibao/" + purpose``. Stable: the same root and purpose give the same key."""
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=length, salt=KDF_SALT, info=b"yibao/" + purpose.encode()
    )
    return hkdf.derive(root)


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """The one keyed-hash primitive: HMAC-SHA256, raw digest."""
    return hmac.new(key, message, hashlib.sha256).digest()


def keyed_hash(key: bytes, *parts: str) -> str:
    """HMAC-SHA256 over the parts, unambiguously joined (0x1f); hex. Used for look-ups
    (ID numbers, phones), SMS-code hashes and request fingerprints, each under its own
    purpose's key (``derive_key``)."""
    return hmac_sha256(key, b"\x1f".join(p.encode() for p in parts)).hex()


# Associated data binding each sealed value to the one record it belongs to.
def phone_aad(payment_id: str) -> str:
    """A resident's phone, sealed for notify, belongs to one payment."""
    return f"phone:{payment_id}"


def code_aad(challenge_id: str) -> str:
    """An SMS code, sealed for notify, belongs to one step-up challenge."""
    return f"code:{challenge_id}"
