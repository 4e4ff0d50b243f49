"""The receipt keys an audit trusts: one pinned key, several, or the ledger's key set.

A key set is the JSON of ``GET /v1/receipts/public-keys``: a list of
``{key_id, algorithm, public_key, current}``. Each receipt, entry and checkpoint
verifies with the key its ``key_id`` names among the trusted keys.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from services.ledger.audit.run import UsageError
from services.ledger.signing import ALGORITHM, key_id_of

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


def parse_key_set(body: Any, source: str) -> tuple[bytes, ...]:
    """The keys of a key-set document, the current one first (else in the given order).

    Refused (UsageError naming ``source``): not a non-empty list of objects, another
    algorithm than Ed25519, a key that does not parse, a ``key_id`` that is not its key's.
    """
    if not isinstance(body, list) or not body:
        raise UsageError(f"{source}: a key set is a non-empty JSON list of keys")
    current: list[bytes] = []
    others: list[bytes] = []
    for n, item in enumerate(body):
        where = f"{source}: key {n + 1}"
        if not isinstance(item, dict) or not isinstance(item.get("public_key"), str):
            raise UsageError(f"{where} is not {{key_id, algorithm, public_key, current}}")
        if item.get("algorithm", ALGORITHM) != ALGORITHM:
            raise UsageError(f"{where} is {item.get('algorithm')!r}, not {ALGORITHM}")
        raw = public_key_bytes(item["public_key"], what=where)
        if item.get("key_id") is not None and item["key_id"] != key_id_of(raw):
            raise UsageError(f"{where} says key_id {item['key_id']!r}, its key is {key_id_of(raw)}")
        (current if item.get("current") is True else others).append(raw)
    return tuple(dict.fromkeys([*current, *others]))


def is_url(source: str) -> bool:
    return urlsplit(source).scheme in ("http", "https")


def key_set_url(source: str) -> str:
    """The key-set address: ``source`` itself when it names it, else the ledger's
    ``/v1/receipts/public-keys`` under ``source``."""
    base = source.rstrip("/")
    return base if base.endswith(PUBLIC_KEYS_PATH) else base + PUBLIC_KEYS_PATH


async def fetch_key_set(source: str) -> tuple[tuple[bytes, ...], str]:
    """The key set from a ledger URL, with where it came from."""
    url = key_set_url(source)
    async with httpx.AsyncClient(timeout=10.0) as http:
        r = await http.get(url)
        r.raise_for_status()
        return parse_key_set(r.json(), url), url


def read_key_set(path: Path) -> tuple[bytes, ...]:
    """The key set from a file of the endpoint's JSON."""
    try:
        body = json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from exc
    return parse_key_set(body, str(path))
