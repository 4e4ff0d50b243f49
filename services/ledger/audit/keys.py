"""The keys an audit trusts: one pinned key, several, or the ledger's key set.

A key set is the JSON of ``GET /v1/receipts/public-keys``: a list of
``{key_id, algorithm, public_key, current, purpose}``. Each receipt, entry and
checkpoint verifies with the key its ``key_id`` names among the trusted keys, and only
when that key's ``purpose`` is its kind (``receipts``; ``journal`` for entries and
checkpoints) or ``all`` (the undivided key of before issue 11). A key without a
purpose (pinned with --public-key, a key set of before issue 11) serves every kind.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from services.ledger.audit.run import UsageError
from services.ledger.signing import ALGORITHM, UNDIVIDED, ReceiptSigner, key_id_of

PUBLIC_KEYS_PATH = "/v1/receipts/public-keys"


def public_key_bytes(text: str, *, what: str = "--public-key") -> bytes:
    """A base64 Ed25519 public key (32 bytes), or UsageError naming ``what``."""
    stripped = text.strip()
    try:
        raw = base64.b64decode(stripped + "=" * (-len(stripped) % 4), validate=False)
    except (binascii.Error, ValueError) as exc:
        raise UsageError(f"{what} is not base64: {exc}") from exc
    if len(raw) != 32:
        raise UsageError(f"{what}: a public key is 32 bytes of Ed25519, got {len(raw)}")
    return raw


@dataclass(frozen=True)
class KeySet:
    """Trusted public keys, the current ones first, and what each may sign (by key id;
    a key not in ``purposes`` signs every kind)."""

    keys: tuple[bytes, ...]
    purposes: Mapping[str, str] = field(default_factory=dict)

    def __add__(self, other: KeySet) -> KeySet:
        """Both sets' keys, this one's first; a key keeps the purpose either set gives."""
        keys = tuple(dict.fromkeys([*self.keys, *other.keys]))
        return KeySet(keys, {**other.purposes, **self.purposes})


def key_set_of(signers: Iterable[tuple[str, ReceiptSigner]]) -> KeySet:
    """A key set from (purpose, signer) pairs (the ledger's own keys, derived from its
    seed)."""
    pairs = list(signers)
    return KeySet(
        tuple(dict.fromkeys(s.public_raw for _, s in pairs)),
        {s.key_id: purpose for purpose, s in pairs},
    )


def key_set_json(keys: KeySet) -> list[dict[str, Any]]:
    """A key set as the endpoint's JSON (``current`` omitted)."""
    return [
        {
            "key_id": key_id_of(raw),
            "algorithm": ALGORITHM,
            "public_key": base64.b64encode(raw).decode(),
            "purpose": keys.purposes.get(key_id_of(raw), UNDIVIDED),
        }
        for raw in keys.keys
    ]


def parse_key_set(body: Any, source: str) -> KeySet:
    """The keys of a key-set document, the current ones first (else in the given
    order), with their purposes.

    Refused (UsageError naming ``source``): not a non-empty list of objects, another
    algorithm than Ed25519, a key that does not parse, a ``key_id`` that is not its
    key's, a purpose that is not a string.
    """
    if not isinstance(body, list) or not body:
        raise UsageError(f"{source}: a key set is a non-empty JSON list of keys")
    current: list[bytes] = []
    others: list[bytes] = []
    purposes: dict[str, str] = {}
    for n, item in enumerate(body):
        where = f"{source}: key {n + 1}"
        if not isinstance(item, dict) or not isinstance(item.get("public_key"), str):
            raise UsageError(f"{where} is not {{key_id, algorithm, public_key, current}}")
        if item.get("algorithm", ALGORITHM) != ALGORITHM:
            raise UsageError(f"{where} is {item.get('algorithm')!r}, not {ALGORITHM}")
        raw = public_key_bytes(item["public_key"], what=where)
        if item.get("key_id") is not None and item["key_id"] != key_id_of(raw):
            raise UsageError(f"{where} says key_id {item['key_id']!r}, its key is {key_id_of(raw)}")
        purpose = item.get("purpose")
        if purpose is not None and not isinstance(purpose, str):
            raise UsageError(f"{where}: purpose {purpose!r} is not a string")
        if purpose is not None:
            purposes[key_id_of(raw)] = purpose
        (current if item.get("current") is True else others).append(raw)
    return KeySet(tuple(dict.fromkeys([*current, *others])), purposes)


def is_url(source: str) -> bool:
    return urlsplit(source).scheme in ("http", "https")


def key_set_url(source: str) -> str:
    """The key-set address: ``source`` itself when it names it, else the ledger's
    ``/v1/receipts/public-keys`` under ``source``."""
    base = source.rstrip("/")
    return base if base.endswith(PUBLIC_KEYS_PATH) else base + PUBLIC_KEYS_PATH


async def fetch_key_set(source: str) -> tuple[KeySet, str]:
    """The key set from a ledger URL, with where it came from."""
    url = key_set_url(source)
    async with httpx.AsyncClient(timeout=10.0) as http:
        r = await http.get(url)
        r.raise_for_status()
        return parse_key_set(r.json(), url), url


def read_key_set(path: Path) -> KeySet:
    """The key set from a file of the endpoint's JSON."""
    try:
        body = json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from exc
    return parse_key_set(body, str(path))
