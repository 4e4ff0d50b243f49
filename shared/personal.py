"""Personal display fields sealed per person, for erasure by crypto-shredding (issue 11).

A person (the keyed hash of their ID number) has one random 32-byte data key, owned
by the payment service. The fields that name a person on the kept-forever topics
(``payments.v1``, ``ledger.v1``: name, masked ID number) travel as one sealed blob
under that key: ``p1.<key id>.<b64(nonce + AES-256-GCM ciphertext)>``, the associated
data binding it to the one payment it belongs to (``personal_aad``). Erasure destroys
the key everywhere it is kept (payment's table, the compacted ``person-keys.v1`` topic,
the ledger's copy); the blob stays on the log, signed and hashed as it was, and opens
for nobody. Readers show ``ERASED`` in place of each field.

The resident's phone on events (``payer_phone_sealed``, ``phone_sealed``, …) travels the
same way since issue 11 (erasure of the phone): ``seal_phone`` seals the phone and its
masked form under the PAYER's person key (the keyed hash of the payer's ID number; a
payer enrolled without one has a key of its own, person ``payer:<payer id>``), bound to
its record by ``phone_aad``; ``open_phone`` opens it, and still opens the phones sealed
before under the system seal key (``v1.``/``v2.``). Risk and notify keep copies of the
person keys (``shared.person_keys``) and remember erased key ids, so a phone whose key
was erased is told apart from one whose key is still on its way.

The key itself crosses services only sealed under the system seal key
(``person_key_aad``), on ``person-keys.v1``, a compacted topic where erasure writes the
key id's last record (``PersonKeyErased``), so compaction drops the key.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from typing import TypeGuard

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.crypto import Sealer, SealError, b64d, b64e
from shared.masking import mask_phone

ERASED = "已删除"  # shown in place of an erased personal field
PREFIX = "p1"
KEY_SIZE = 32


def new_person_key() -> tuple[str, bytes]:
    """A fresh person key: (its id ``pk_`` + 96 random bits in hex, 32 random bytes)."""
    return "pk_" + secrets.token_hex(12), os.urandom(KEY_SIZE)


def personal_aad(record_id: str) -> str:
    """A person's sealed fields belong to one payment (or allocation)."""
    return f"personal:{record_id}"


def person_key_aad(key_id: str) -> str:
    """A person key, sealed under the system seal key, belongs to its key id."""
    return f"person-key:{key_id}"


def is_sealed(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and value.startswith(PREFIX + ".")


def key_id_of(blob: str) -> str:
    """The person key id a sealed blob names."""
    version, kid, _ = blob.split(".", 2) if blob.count(".") >= 2 else ("", "", "")
    if version != PREFIX or not kid:
        raise SealError("not a sealed personal blob (p1.<key id>.<b64>)")
    return kid


def seal_personal(key_id: str, key: bytes, fields: Mapping[str, str], *, aad: str) -> str:
    """``fields`` as one blob under the person's key."""
    nonce = os.urandom(12)
    plain = json.dumps(dict(fields), ensure_ascii=False, sort_keys=True).encode()
    sealed = nonce + AESGCM(key).encrypt(nonce, plain, aad.encode())
    return f"{PREFIX}.{key_id}.{b64e(sealed)}"


def open_personal(blob: str, key: bytes, *, aad: str) -> dict[str, str]:
    """The fields of ``blob``; ``SealError`` when tampered with, moved or another key."""
    key_id_of(blob)
    raw = b64d(blob.split(".", 2)[2])
    if len(raw) < 12 + 16:
        raise SealError("sealed personal blob is too short")
    try:
        plain = AESGCM(key).decrypt(raw[:12], raw[12:], aad.encode())
    except InvalidTag as exc:
        raise SealError("sealed personal blob does not open with this key and binding") from exc
    data = json.loads(plain)
    return {str(k): str(v) for k, v in data.items()}


def reveal(
    blob: str, keys: Mapping[str, bytes], *, aad: str, names: tuple[str, ...]
) -> dict[str, str]:
    """The fields ``names`` of ``blob`` with the person key from ``keys``; each one
    ``ERASED`` when the key is gone (erased) or the blob does not open."""
    key = keys.get(key_id_of(blob))
    if key is not None:
        try:
            opened = open_personal(blob, key, aad=aad)
        except SealError:
            opened = {}
        if opened:
            return {n: opened.get(n, "") for n in names}
    return dict.fromkeys(names, ERASED)


# ------------------------------------------------------------------ the phone


class PhoneErased(SealError):
    """The phone's person key was destroyed (erasure): it opens for nobody."""


class PersonKeyPending(TimeoutError):
    """The phone's person key has not reached this service's copy yet (it is on
    ``person-keys.v1``, consumed apart): like a timeout, retried, never dead-lettered."""


PHONE = "phone"
PHONE_MASKED = "phone_masked"


def person_of_payer(payer_id_hash: str | None, payer_id: str) -> str:
    """Whose person key seals a payer's phone: the keyed hash of the payer's ID number,
    else (enrolled without one) the payer's own person ``payer:<payer id>``."""
    return payer_id_hash or f"payer:{payer_id}"


def seal_phone(key_id: str, key: bytes, phone: str, *, aad: str) -> str:
    """A clear phone (and its masked form) for an event, under the payer's person key;
    ``aad`` is ``phone_aad(<record id>)``."""
    return seal_personal(key_id, key, {PHONE: phone, PHONE_MASKED: mask_phone(phone)}, aad=aad)


def phone_key_id(sealed: str) -> str | None:
    """The person key a sealed phone needs, or None when sealed under the system key."""
    return key_id_of(sealed) if is_sealed(sealed) else None


def open_phone(
    sealed: str, *, aad: str, sealer: Sealer, person_keys: Mapping[str, bytes | None]
) -> str:
    """The clear phone of an event's sealed phone. A ``p1.`` one opens with its person
    key from ``person_keys`` (None: erased → ``PhoneErased``; absent: not copied yet →
    ``PersonKeyPending``); one from before issue 11 with the system ``sealer``.
    ``SealError`` when it does not open (tampered with, moved to another record)."""
    kid = phone_key_id(sealed)
    if kid is None:
        return sealer.open(sealed, aad=aad)
    if kid not in person_keys:
        raise PersonKeyPending(f"person key {kid} is not copied here yet")
    key = person_keys[kid]
    if key is None:
        raise PhoneErased(f"person key {kid} was erased")
    return open_personal(sealed, key, aad=aad)[PHONE]
