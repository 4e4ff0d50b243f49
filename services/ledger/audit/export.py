"""Export files: the journal and payment events as signed, compressed JSON Lines.

``<file>`` is gzip; each line is ``{"topic", "partition", "offset", "key", "value"}``
with ``value`` the envelope's JSON object (a message that is not JSON keeps its bytes
as ``value_b64`` instead). ``<file>.manifest.json`` holds the counts per topic, the
offset range per partition, the SHA-256 of the data file, ``created_at``, the public
key and an Ed25519 signature over the canonical JSON of everything else in it.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from isal import igzip_threaded, isal_zlib

from services.ledger.audit.model import Discrepancy, Where
from services.ledger.domain.receipts import iso_utc
from services.ledger.signing import ALGORITHM, ReceiptSigner, key_id_of
from shared.canonical import canonical_bytes
from shared.topic_reader import RawRecord

FORMAT = "yibao-ledger-export/1"


def manifest_path(data: Path) -> Path:
    return data.with_name(data.name + ".manifest.json")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def record_line(r: RawRecord) -> dict[str, Any]:
    line: dict[str, Any] = {
        "topic": r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "key": r.key.decode("utf-8", "replace") if r.key else None,
    }
    try:
        line["value"] = json.loads(r.value) if r.value is not None else None
    except ValueError:
        line["value"] = None
        line["value_b64"] = base64.b64encode(r.value or b"").decode()
    return line


@dataclass
class _Range:
    first: int
    last: int
    count: int = 0


@dataclass
class Tally:
    """Counts per topic and offset ranges per partition, as the manifest states them."""

    topics: dict[str, dict[int, _Range]] = field(default_factory=dict)

    def add(self, topic: str, partition: int, offset: int) -> None:
        ranges = self.topics.setdefault(topic, {})
        r = ranges.setdefault(partition, _Range(offset, offset))
        r.first, r.last, r.count = min(r.first, offset), max(r.last, offset), r.count + 1

    def to_json(self) -> dict[str, Any]:
        return {
            topic: {
                "count": sum(r.count for r in parts.values()),
                "partitions": {
                    str(p): {"first_offset": r.first, "last_offset": r.last, "count": r.count}
                    for p, r in sorted(parts.items())
                },
            }
            for topic, parts in sorted(self.topics.items())
        }


class ExportWriter:
    """Writes the data file; ``seal`` writes the signed manifest beside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tally = Tally()
        self.receipt_key_ids: set[str] = set()
        self._raw: BinaryIO = path.open("wb")
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6, mtime=0)

    def add(self, r: RawRecord) -> None:
        line = record_line(r)
        value = line["value"]
        if isinstance(value, dict) and value.get("event_type") == "ReceiptIssued":
            self.receipt_key_ids.add(str((value.get("payload") or {}).get("key_id")))
        self._gz.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
        self.tally.add(r.topic, r.partition, r.offset)

    def seal(
        self,
        signer: ReceiptSigner,
        *,
        created_at: datetime,
        topic_prefix: str,
        receipt_public_key: bytes | None = None,
        receipt_candidates: Sequence[bytes] = (),
        public_keys: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Close the data file and write the manifest; the receipt key is stated when
        given, or when ``signer`` or one of ``receipt_candidates`` is the key every
        exported receipt names. ``public_keys`` (the ledger's key set, each key with its
        purpose) is stated when given: self-attested, like the receipt key."""
        self._gz.close()
        self._raw.close()
        for candidate in (signer.public_raw, *receipt_candidates):
            if receipt_public_key is None and self.receipt_key_ids <= {key_id_of(candidate)}:
                receipt_public_key = candidate  # the key every exported receipt names
        body: dict[str, Any] = {
            "format": FORMAT,
            "data_file": self.path.name,
            "sha256": file_sha256(self.path),
            "bytes": self.path.stat().st_size,
            "created_at": iso_utc(created_at),
            "topic_prefix": topic_prefix,
            "topics": self.tally.to_json(),
            "algorithm": ALGORITHM,
            "public_key": signer.public_key_b64,
            "key_id": signer.key_id,
            "receipt_key_ids": sorted(self.receipt_key_ids),
        }
        if receipt_public_key is not None:
            body["receipt_public_key"] = base64.b64encode(receipt_public_key).decode()
        if public_keys:
            body["public_keys"] = public_keys
        manifest = sign_manifest(body, signer)
        manifest_path(self.path).write_text(json.dumps(manifest, ensure_ascii=False, indent=2))
        return manifest


def sign_manifest(body: Mapping[str, Any], signer: ReceiptSigner) -> dict[str, Any]:
    unsigned = {k: v for k, v in body.items() if k != "signature"}
    signature = signer.sign(canonical_bytes(unsigned))
    return {**unsigned, "signature": base64.b64encode(signature).decode()}


def manifest_signature_ok(manifest: Mapping[str, Any]) -> bool:
    """The manifest's signature verifies under the public key it names."""
    unsigned = {k: v for k, v in manifest.items() if k != "signature"}
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(manifest["public_key"]))
        key.verify(base64.b64decode(manifest["signature"]), canonical_bytes(unsigned))
    except (InvalidSignature, KeyError, ValueError, TypeError):
        return False
    return True


def manifest_faults(
    manifest: Mapping[str, Any], data: Path, pinned_key: bytes | None
) -> list[Discrepancy]:
    """Signature and SHA-256 of an export, checked before its events are replayed."""
    faults: list[Discrepancy] = []
    if not manifest_signature_ok(manifest):
        faults.append(
            Discrepancy(
                "manifest_signature",
                "the manifest's signature does not "
                "verify: the manifest was altered or signed by another key",
            )
        )
    named = str(manifest.get("public_key", ""))
    if pinned_key is not None and named != base64.b64encode(pinned_key).decode():
        faults.append(
            Discrepancy(
                "manifest_signature",
                f"the manifest is signed by key "
                f"{manifest.get('key_id')}, not by the pinned key "
                f"{key_id_of(pinned_key)}",
            )
        )
    actual = file_sha256(data)
    if actual != manifest.get("sha256"):
        faults.append(
            Discrepancy(
                "manifest_sha256",
                f"{data.name}: SHA-256 is {actual}, the "
                f"manifest says {manifest.get('sha256')}: the data file "
                "was changed after export",
            )
        )
    return faults


def count_faults(manifest: Mapping[str, Any], seen: Tally) -> list[Discrepancy]:
    """Records read versus the manifest's counts and offset ranges."""
    stated, found = manifest.get("topics", {}), seen.to_json()
    if stated == found:
        return []
    return [
        Discrepancy(
            "manifest_counts",
            f"{topic}: manifest says "
            f"{json.dumps(stated.get(topic))}, the file holds "
            f"{json.dumps(found.get(topic))}",
        )
        for topic in sorted(set(stated) | set(found))
        if stated.get(topic) != found.get(topic)
    ]


@dataclass(frozen=True)
class FileRecord:
    where: Where
    value: dict[str, Any] | None
    error: str | None = None


def read_export(path: Path) -> Iterator[FileRecord]:
    """The file's records in order; a line that does not parse comes with ``error``."""
    for number, raw in enumerate(export_lines(path), start=1):
        yield parse_line(number, raw)


# What reading a damaged or truncated data file raises (ISA-L's own error included).
_ISAL_ERROR = cast(type[Exception], isal_zlib.error)  # its stub calls it an instance
READ_ERRORS: tuple[type[Exception], ...] = (OSError, EOFError, zlib.error, _ISAL_ERROR)


def export_lines(path: Path) -> Iterator[bytes]:
    """The data file's raw lines, in order (``READ_ERRORS`` raise while iterating).

    Decompressed by ISA-L (the same gzip format, a little over twice zlib's speed) in a
    thread of its own, which releases the GIL: the caller splits and folds lines on one
    core while the other inflates the next megabyte."""
    reader = cast(BinaryIO, igzip_threaded.open(path, "rb", threads=1))  # type: ignore[no-untyped-call]
    with reader as f:
        yield from f


def parse_line(number: int, raw: bytes) -> FileRecord:
    """Line ``number`` (1-based) of a data file as a record, or its ``error``."""
    try:
        line = json.loads(raw)
        where = Where(str(line["topic"]), int(line["partition"]), int(line["offset"]), number)
    except (ValueError, KeyError, TypeError) as exc:
        return FileRecord(Where(line=number), None, f"line is not an export record: {exc}")
    value = line.get("value")
    if not isinstance(value, dict):
        return FileRecord(where, None, "message value is not a JSON object")
    return FileRecord(where, value)
