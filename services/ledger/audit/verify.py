"""The replay's parallel half: hashes and Ed25519 signatures, checked from raw bytes.

Most of a replay's CPU goes to work that needs no fold state: recomputing each entry's
hash and whole-entry digest (canonical JSON and SHA-256) and verifying each entry's
and each receipt's Ed25519 signature. ``check_batch`` does that for a batch of raw
ledger.v1 messages in a worker process (``Verifier``: a process pool, one worker per
core, batches in and results out in order), so the fold in the main process only
compares. The answers are the ones the fold would compute itself, bit for bit:

- A message's payload is parsed with pydantic's own JSON parser (the one
  ``shared.events.decode`` uses), so duplicate keys and escapes read the same.
- An entry's hash and digest are computed from the raw payload only when it is in the
  exact form ``JournalEntryPosted.model_dump(mode="json")`` gives back for it
  (``entry_is_canonical``: every field present with its JSON type, times as pydantic
  writes UTC). Everything the ledger wrote is in that form; anything else (a time with
  an offset, ``1.0`` for ``1``, a missing default) gets ``None`` here and the fold
  computes it from the validated model, as before.
- Canonical JSON is written by orjson where its bytes are ``shared.canonical``'s
  (``canonical``: no floats; anything else takes ``canonical_bytes``).
- A signature is verified with libsodium (PyNaCl, about twice as fast as OpenSSL's
  Ed25519 here) and, when libsodium refuses, again with ``cryptography`` (OpenSSL), the
  verifier the rest of the ledger uses: libsodium accepts a subset of what OpenSSL
  accepts (it also refuses small-order points and non-canonical encodings), so the
  verdict is always OpenSSL's.

The fold still validates every message itself (the "readable" rule) and ignores these
answers for a message it cannot decode. Hashed and signed bytes are
``shared.canonical``'s, unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any, TypeVar

import nacl.bindings
import nacl.exceptions
import orjson
import pydantic_core

from services.ledger.audit.export import parse_line
from services.ledger.audit.facts import PaymentFacts, event_of_value, facts_of
from services.ledger.audit.model import Where
from services.ledger.signing import SigningPurpose, may_sign, verify_bytes, verify_face
from shared.canonical import canonical_bytes
from shared.errors import UndecodableEvent
from shared.events import JournalEntryPosted, decode
from shared.topics import LEDGER, PAYMENTS

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Checked:
    """What a worker found for one ledger.v1 message (``None`` fields: not computed
    here, the fold computes them). ``hash``: the entry's recomputed chain hash;
    ``whole``: SHA-256 of the canonical JSON of the whole entry; ``signed``: the
    entry's or the receipt's signature verifies with the key the rules pick;
    ``digest``: a receipt's row digest (``rules.receipt_digest``)."""

    hash: str | None = None
    whole: bytes | None = None
    signed: bool | None = None
    digest: bytes | None = None


@dataclass(frozen=True)
class Keys:
    """The trusted keys and their purposes, as ``rules.Auditor`` holds them."""

    public_key: bytes
    trusted: Mapping[str, bytes]
    purposes: Mapping[str, str] = field(default_factory=dict)

    def key_for(self, key_id: str, purpose: SigningPurpose) -> bytes | None:
        key = self.trusted.get(key_id)
        return key if key is not None and may_sign(self.purposes, key_id, purpose) else None


# -- canonical bytes, fast -----------------------------------------------------------


def _plain(value: object) -> bool:
    """Only the JSON types whose orjson form is ``shared.canonical``'s to the byte: strings,
    integers, booleans, null, arrays and objects (no floats, whose shortest forms the two
    may write differently)."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None:
            continue
        if kind is dict:
            for k, v in item.items():
                if type(k) is not str:
                    return False
                stack.append(v)
        elif kind is list:
            stack.extend(item)
        else:
            return False
    return True


def canonical(value: Any, *, plain: bool = False) -> bytes:
    """``shared.canonical.canonical_bytes(value)``, by orjson (sorted keys, no spaces,
    UTF-8, the same escapes) when ``value`` is ``_plain`` (``plain``: the caller checked);
    ``tests/unit/test_audit_verify.py`` holds the two equal. orjson refuses integers
    beyond 64 bits and lone surrogates: those take ``canonical_bytes``."""
    if plain or _plain(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            pass
    return canonical_bytes(value)


# -- signatures ---------------------------------------------------------------------


def _sodium_ok(signature: bytes, message: bytes, public_raw: bytes) -> bool:
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_raw)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


def signature_ok(message: bytes, signature_b64: str | None, public_raw: bytes) -> bool:
    """``signing.verify_bytes``'s verdict, reached through libsodium when it accepts."""
    if not signature_b64:
        return False
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (ValueError, binascii.Error):
        return False
    if (
        len(signature) == 64
        and len(public_raw) == 32
        and _sodium_ok(signature, message, public_raw)
    ):
        return True
    return verify_bytes(message, signature_b64, public_raw)


def face_signature_ok(
    face: Mapping[str, Any], signature_b64: str, public_raw: bytes, *, plain: bool = False
) -> bool:
    """``signing.verify_face``'s verdict, reached through libsodium when it accepts
    (``plain``: the face is known ``_plain``)."""
    if isinstance(signature_b64, str) and signature_ok(
        canonical(dict(face), plain=plain), signature_b64, public_raw
    ):
        return True
    return verify_face(face, signature_b64, public_raw)


# -- the exact form of an entry ------------------------------------------------------

_UTC_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{6})?Z")
_STR = ("transaction_id", "payment_id", "payer_id", "kind", "currency", "prev_hash", "hash")
_OPTIONAL_STR = ("refund_id", "bank_reference", "clearing_day", "key_id", "signature")
ENTRY_FIELDS = frozenset(
    {"seq", "lines", "receipt", "posted_at", "bank_confirmed_at", *_STR, *_OPTIONAL_STR}
)
_RECEIPT_REF = frozenset({"code", "number", "check_code"})
_LINE = frozenset({"account_id", "amount"})


def _utc_text(value: object) -> bool:
    """``value`` is a time exactly as pydantic writes a UTC datetime."""
    return (
        type(value) is str
        and _UTC_TEXT.fullmatch(value) is not None
        and not value.endswith(".000000Z")
    )


def entry_is_canonical(payload: Mapping[str, Any]) -> bool:
    """``payload`` is what ``JournalEntryPosted.model_dump(mode="json")`` returns for the
    entry it validates to (so its hashes are the model's), assuming it validates."""
    if payload.keys() != ENTRY_FIELDS or type(payload["seq"]) is not int:
        return False
    if any(type(payload[name]) is not str for name in _STR):
        return False
    if any(payload[name] is not None and type(payload[name]) is not str for name in _OPTIONAL_STR):
        return False
    if not _utc_text(payload["posted_at"]):
        return False
    confirmed = payload["bank_confirmed_at"]
    if confirmed is not None and not _utc_text(confirmed):
        return False
    receipt = payload["receipt"]
    if receipt is not None and not (
        type(receipt) is dict
        and receipt.keys() == _RECEIPT_REF
        and all(type(v) is str for v in receipt.values())
    ):
        return False
    lines = payload["lines"]
    return type(lines) is list and all(
        type(line) is dict
        and line.keys() == _LINE
        and type(line["account_id"]) is str
        and type(line["amount"]) is int
        for line in lines
    )


def entry_hashes(payload: Mapping[str, Any]) -> tuple[str, bytes]:
    """(chain hash, whole-entry digest) of a canonical entry payload: ``chain.hash_of``
    (``chain_hash``: sha256 of prev_hash + the canonical JSON of the body) and
    ``Auditor._whole``, without the model."""
    body = {k: v for k, v in payload.items() if k not in JournalEntryPosted.UNHASHED}
    for name in JournalEntryPosted.V1_ABSENT:
        if body.get(name) is None:
            body.pop(name, None)
    prev = payload["prev_hash"].encode()
    return (
        hashlib.sha256(prev + canonical(body, plain=True)).hexdigest(),
        hashlib.sha256(canonical(dict(payload), plain=True)).digest(),
    )


# -- one message, one batch -----------------------------------------------------------


def _entry(payload: dict[str, Any], keys: Keys) -> Checked:
    key_id, signature = payload.get("key_id"), payload.get("signature")
    if type(key_id) is not str and key_id is not None:
        return Checked()
    if type(signature) is not str and signature is not None:
        return Checked()
    key = keys.public_key if key_id is None else keys.key_for(key_id, SigningPurpose.JOURNAL)
    digest = payload.get("hash")
    signed = (
        key is not None and type(digest) is str and signature_ok(digest.encode(), signature, key)
    )
    if not entry_is_canonical(payload):
        return Checked(signed=signed)
    hash_, whole = entry_hashes(payload)
    return Checked(hash=hash_, whole=whole, signed=signed)


def _receipt(payload: dict[str, Any], keys: Keys) -> Checked:
    face, signature, key_id = (
        payload.get("receipt"),
        payload.get("signature"),
        payload.get("key_id"),
    )
    if type(face) is not dict or type(signature) is not str or type(key_id) is not str:
        return Checked()
    public = keys.key_for(key_id, SigningPurpose.RECEIPTS)
    plain = _plain(face)
    signed = public is not None and face_signature_ok(face, signature, public, plain=plain)
    digest = None
    pid, seq = payload.get("payment_id"), payload.get("journal_seq")
    if (
        type(pid) is str
        and type(seq) is int
        and all(k in face for k in ("code", "number", "check_code"))
    ):
        body = [
            str(face["code"]),
            str(face["number"]),
            pid,
            seq,
            str(face["check_code"]),
            face,
            signature,
            key_id,
        ]
        digest = hashlib.sha256(canonical(body, plain=plain)).digest()
    return Checked(signed=signed, digest=digest)


_VERSIONS = {"JournalEntryPosted": (1, 2), "ReceiptIssued": (1,)}


def check_message(raw: bytes | None, keys: Keys) -> Checked | None:
    """What can be checked of one ledger.v1 message without the fold; ``None`` for a
    message that is neither an entry nor a receipt (or not one this code reads)."""
    if raw is None:
        return None
    try:
        envelope = pydantic_core.from_json(raw)
    except ValueError:
        return None
    return check_value(envelope, keys)


def check_value(envelope: object, keys: Keys) -> Checked | None:
    """``check_message`` for an envelope already parsed from JSON (an export line). A
    value canonical JSON cannot encode (a lone surrogate) is left to the fold."""
    try:
        return _check_value(envelope, keys)
    except (UnicodeEncodeError, RecursionError, TypeError, ValueError):
        return None


def _check_value(envelope: object, keys: Keys) -> Checked | None:
    if type(envelope) is not dict:
        return None
    kind, payload = envelope.get("event_type"), envelope.get("payload")
    if type(payload) is not dict or envelope.get("schema_version") not in _VERSIONS.get(
        str(kind), ()
    ):
        return None
    return _entry(payload, keys) if kind == "JournalEntryPosted" else _receipt(payload, keys)


def check_batch(keys: Keys, raws: Sequence[bytes | None]) -> list[Checked | None]:
    """``check_message`` for each of ``raws`` (Kafka message values)."""
    return [check_message(raw, keys) for raw in raws]


def payment_facts(_keys: Keys, raws: Sequence[bytes | None]) -> list[PaymentFacts | str]:
    """payments.v1 message values decoded as the fold decodes them (``shared.events.decode``,
    every model validated), each as its ``PaymentFacts`` or the error text."""
    out: list[PaymentFacts | str] = []
    for raw in raws:
        try:
            out.append(facts_of(decode(raw)))
        except UndecodableEvent as exc:
            out.append(str(exc))
    return out


@dataclass(frozen=True, slots=True)
class FilePayment:
    """An export line of payments.v1, read in a worker: where it is, and its facts or
    why it does not decode."""

    where: Where
    facts: PaymentFacts | None
    error: str | None = None


Numbered = tuple[int, bytes]  # an export line and its 1-based number


def check_export_lines(keys: Keys, lines: Sequence[Numbered]) -> list[Checked | FilePayment | None]:
    """Per export line: a payments.v1 line read whole (``FilePayment``, as
    ``export.parse_line`` and the fold would read it); a ledger.v1 line's ``check_value``
    (the fold reads the line itself); ``None`` for a line it leaves to the fold."""
    out: list[Checked | FilePayment | None] = []
    for number, line in lines:
        record = parse_line(number, line)
        topic = record.where.topic or ""
        if topic.endswith(PAYMENTS):
            out.append(_file_payment(record.where, record.value, record.error))
        elif topic.endswith(LEDGER):
            out.append(check_value(record.value, keys))
        else:
            out.append(None)
    return out


def _file_payment(where: Where, value: dict[str, Any] | None, error: str | None) -> FilePayment:
    if value is None:
        return FilePayment(where, None, error)
    try:
        return FilePayment(where, facts_of(event_of_value(value)))
    except UndecodableEvent as exc:
        return FilePayment(where, None, str(exc))


# -- the pool -------------------------------------------------------------------------


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


Work = Callable[[Keys, Sequence[T]], list[R]]


@dataclass
class Verifier:
    """A process pool that checks batches while the caller folds earlier ones.

    ``map(batches, work)`` yields ``(batch, results)`` in the batches' order, keeping at
    most ``depth`` batches in flight, so memory stays bounded and the report does not
    depend on which worker finished first. The workers start with the first batch of
    ``min_batch`` messages or more: a short journal is checked in this process.
    """

    keys: Keys
    workers: int = field(default_factory=default_workers)
    min_batch: int = 1000
    _pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def submit(self, work: Work[T, R], batch: Sequence[T]) -> Future[list[R]]:
        if self._pool is None and len(batch) < self.min_batch:
            done: Future[list[R]] = Future()
            done.set_result(work(self.keys, batch))
            return done
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=get_context("spawn")
            )
        return self._pool.submit(work, self.keys, batch)

    @property
    def depth(self) -> int:
        return 2 * self.workers

    def map(
        self, batches: Iterable[Sequence[T]], work: Work[T, R]
    ) -> Iterator[tuple[Sequence[T], list[R]]]:
        pending: deque[tuple[Sequence[T], Future[list[R]]]] = deque()
        for batch in batches:
            pending.append((batch, self.submit(work, batch)))
            if len(pending) > self.depth:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
