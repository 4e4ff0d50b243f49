"""Sealing, keyed hashes and key parsing.

Sealed fields (AES-256-GCM) carry a clear value that exactly one other service needs
(the resident's phone for notify, the SMS code for notify); the associated data binds
a sealed value to the record it belongs to, so it cannot be moved to another one.
Keyed hashes (HMAC-SHA256) let a service look a value up without storing it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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


class Sealer:
    """AES-256-GCM with a random 96-bit nonce; output is urlsafe base64 of nonce+ciphertext."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, *, aad: str) -> str:
        nonce = os.urandom(12)
        return "v1." + b64e(nonce + self._aead.encrypt(nonce, plaintext.encode(), aad.encode()))

    def open(self, token: str, *, aad: str) -> str:
        if not token.startswith("v1."):
            raise SealError("unknown sealed-value format")
        raw = b64d(token[3:])
        try:
            return self._aead.decrypt(raw[:12], raw[12:], aad.encode()).decode()
        except InvalidTag as exc:
            raise SealError("sealed value does not open with this key and binding") from exc


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """The one keyed-hash primitive: HMAC-SHA256, raw digest."""
    return hmac.new(key, message, hashlib.sha256).digest()


def keyed_hash(key: bytes, *parts: str) -> str:
    """HMAC-SHA256 over the parts, unambiguously joined (0x1f); hex. Used for look-ups
    (ID numbers), SMS-code hashes and request fingerprints."""
    return hmac_sha256(key, b"\x1f".join(p.encode() for p in parts)).hex()


# Associated data binding each sealed value to the one record it belongs to.
def phone_aad(payment_id: str) -> str:
    """A resident's phone, sealed for notify, belongs to one payment."""
    return f"phone:{payment_id}"


def code_aad(challenge_id: str) -> str:
    """An SMS code, sealed for notify, belongs to one step-up challenge."""
    return f"code:{challenge_id}"
