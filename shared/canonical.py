"""Canonical JSON (RFC 8785, the JSON Canonicalization Scheme): the one byte form that
journal hashes, receipt signatures, manifests and request fingerprints are computed over.

For the values Yibao hashes (objects, arrays, strings, integers, booleans and null, with
keys in the Basic Multilingual Plane) RFC 8785 is exactly ``json.dumps`` with sorted
keys, no whitespace and UTF-8 kept; ``tests/unit/test_shared_canonical.py`` proves it
against the reference ``rfc8785`` package. Floats never appear: money is integer fen.
Changing this function changes every hash and signature in the journal: don't.
"""

from __future__ import annotations

import json
from typing import Any


def canonical_json(value: Any) -> str:
    """The RFC 8785 text of ``value``."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_bytes(value: Any) -> bytes:
    """The RFC 8785 bytes of ``value`` (UTF-8): what is hashed and signed."""
    return canonical_json(value).encode()
