"""The audit's pipelines: replay (Kafka or file), the unchecked rebuild, export, rebuild
of the database projections. I/O lives here.

``services.ledger.audit`` parses the command line and calls these; the checking is
``services.ledger.audit_checks`` (pure).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

import httpx
from pydantic import ValidationError

from services.ledger import store
from services.ledger.audit.export import (
    READ_ERRORS,
    ExportWriter,
    FileRecord,
    Tally,
    count_faults,
    export_lines,
    manifest_faults,
    manifest_path,
    parse_line,
)
from services.ledger.audit.facts import PaymentFacts, event_of_value
from services.ledger.audit.live import compare_api, compare_database
from services.ledger.audit.model import Findings, Where
from services.ledger.audit.report import AuditReport
from services.ledger.audit.rules import Auditor
from services.ledger.audit.unchecked import Projection
from services.ledger.audit.verify import (
    Checked,
    FilePayment,
    Keys,
    Verifier,
    check_batch,
    check_export_lines,
    default_workers,
    payment_facts,
)
from services.ledger.signing import ReceiptSigner
from shared.db import connect
from shared.errors import UndecodableEvent
from shared.events import Event, JournalCheckpoint, decode
from shared.topic_reader import RawRecord, stream_topic, topic_partitions
from shared.topics import LEDGER, PAYMENTS, TopicNames

BASE_RULES = {
    "readable",
    "balanced",
    "non_negative",
    "chain",
    "signatures",
    "receipt_numbers",
    "receipts_match",
    "refunds",
    "entry_signatures",
    "checkpoints",
    "settlement",
    "reconciliations",
}


T = TypeVar("T")


class UsageError(Exception):
    """Bad arguments or unreachable inputs: exit 2, nothing was audited."""


@dataclass
class Progress:
    """Prints ``N events, R events/s`` to stderr every ``every`` events."""

    every: int = 100_000
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    count: int = 0
    started: float = field(default_factory=time.perf_counter)

    def tick(self, n: int = 1) -> None:
        before, self.count = self.count, self.count + n
        if self.every and before // self.every != self.count // self.every:
            elapsed = time.perf_counter() - self.started
            print(
                f"yibao-audit: {self.count:,} events, {self.count / elapsed:,.0f} events/s",
                file=self.stream,
                flush=True,
            )


@dataclass(frozen=True)
class Live:
    dsn: str | None = None
    url: str | None = None
    api_key: str | None = None


_event_of = event_of_value


def _feed(
    auditor: Auditor,
    topic: str,
    where: Where,
    event: Event | None,
    error: str | None,
    checked: Checked | None = None,
) -> None:
    if event is None:
        auditor.undecodable(where, error or "unreadable")
    elif topic.endswith(LEDGER):
        auditor.ledger(event, where, checked)
    elif topic.endswith(PAYMENTS):
        auditor.payment(event, where)


BATCH = 2000  # messages per batch handed to a verification worker


def _batches(items: Iterator[T], size: int = BATCH) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _keys(auditor: Auditor) -> Keys:
    return Keys(auditor.public_key, dict(auditor.trusted), dict(auditor.purposes))


def replay_file(
    auditor: Auditor,
    path: Path,
    progress: Progress,
    *,
    workers: int | None = None,
    batch: int = BATCH,
) -> Tally:
    """Fold an export file's records; returns what it held, for the manifest check.
    Hashes and signatures are checked by ``workers`` processes (default: one per core),
    ``batch`` lines at a time, while the fold goes on in this one; a file of fewer lines
    is checked in this process."""
    seen = Tally()
    reader = _LinesUpToDamage(path)
    number = 0
    numbered = enumerate(reader, start=1)
    with Verifier(_keys(auditor), workers or default_workers(), min_batch=batch) as pool:
        for lines, results in pool.map(_batches(numbered, batch), check_export_lines):
            for (number, raw), result in zip(lines, results, strict=True):
                if isinstance(result, FilePayment):
                    _fold_file_payment(auditor, result, seen)
                else:
                    _fold_record(auditor, parse_line(number, raw), seen, result)
                progress.tick()
    if reader.error is not None:
        auditor.undecodable(
            Where(line=number + 1),
            f"the data file is corrupt here and cannot be read on: {reader.error}",
        )
    return seen


@dataclass
class _LinesUpToDamage:
    """An export file's lines up to the first that cannot be read (gzip damage, a
    truncated file); ``error`` says why it stopped there. Every line read before it is
    still folded."""

    path: Path
    error: Exception | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from export_lines(self.path)
        except READ_ERRORS as exc:
            self.error = exc


def _fold_file_payment(auditor: Auditor, p: FilePayment, seen: Tally) -> None:
    """A payments.v1 line a worker read: ``_fold_record``'s steps, without the model."""
    w = p.where
    if w.topic is not None and w.partition is not None and w.offset is not None:
        seen.add(w.topic, w.partition, w.offset)
    if p.facts is None:
        auditor.undecodable(w, p.error or "unreadable")
    else:
        auditor.payment_facts(p.facts, w)


def _fold_record(
    auditor: Auditor, record: FileRecord, seen: Tally, checked: Checked | None
) -> None:
    w = record.where
    if w.topic is not None and w.partition is not None and w.offset is not None:
        seen.add(w.topic, w.partition, w.offset)
    event, error = None, record.error
    if record.value is not None:
        try:
            event = _event_of(record.value)
        except UndecodableEvent as exc:
            error = str(exc)
    _feed(auditor, w.topic or "", w, event, error, checked)


async def _raw_batches(
    bootstrap: str, topic: str, size: int = BATCH
) -> AsyncIterator[list[RawRecord]]:
    batch: list[RawRecord] = []
    async for raw in stream_topic(bootstrap, topic):
        batch.append(raw)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _fold_raw(
    auditor: Auditor, topic: str, batch: list[RawRecord], results: list[Checked | None] | None
) -> None:
    for i, raw in enumerate(batch):
        where = Where(raw.topic, raw.partition, raw.offset)
        try:
            event, error = decode(raw.value), None
        except UndecodableEvent as exc:
            event, error = None, str(exc)
        _feed(auditor, topic, where, event, error, results[i] if results else None)


async def replay_kafka(
    auditor: Auditor,
    bootstrap: str,
    topics: TopicNames,
    progress: Progress,
    *,
    workers: int | None = None,
    batch: int = BATCH,
) -> None:
    """Fold ledger.v1, then payments.v1. The ledger's hashes and signatures are checked,
    and payments.v1 decoded, by ``workers`` processes (default: one per core), ``batch``
    messages at a time in order, while this process reads on and folds the batches
    already done; a topic of fewer messages is done in this process."""
    if not await topic_partitions(bootstrap, topics.ledger):
        raise UsageError(
            f"topic {topics.ledger} does not exist on {bootstrap}; "
            "check --bootstrap and --topic-prefix"
        )
    with Verifier(_keys(auditor), workers or default_workers(), min_batch=batch) as pool:
        pending: deque[tuple[list[RawRecord], asyncio.Future[list[Checked | None]]]] = deque()
        async for records in _raw_batches(bootstrap, topics.ledger, batch):
            values = [raw.value for raw in records]
            pending.append((records, asyncio.wrap_future(pool.submit(check_batch, values))))
            while len(pending) > pool.depth or (pending and pending[0][1].done()):
                done, future = pending.popleft()
                _fold_raw(auditor, topics.ledger, done, await future)
                progress.tick(len(done))
        while pending:
            done, future = pending.popleft()
            _fold_raw(auditor, topics.ledger, done, await future)
            progress.tick(len(done))
        if not await topic_partitions(bootstrap, topics.payments):
            return
        auditor.mark_payments_read()
        read: deque[tuple[list[RawRecord], asyncio.Future[list[PaymentFacts | str]]]] = deque()
        async for records in _raw_batches(bootstrap, topics.payments, batch):
            values = [raw.value for raw in records]
            read.append((records, asyncio.wrap_future(pool.submit(payment_facts, values))))
            while len(read) > pool.depth or (read and read[0][1].done()):
                done, decoded = read.popleft()
                _fold_payments(auditor, done, await decoded)
                progress.tick(len(done))
        while read:
            done, decoded = read.popleft()
            _fold_payments(auditor, done, await decoded)
            progress.tick(len(done))


def _fold_payments(
    auditor: Auditor, batch: list[RawRecord], decoded: list[PaymentFacts | str]
) -> None:
    for raw, facts in zip(batch, decoded, strict=True):
        where = Where(raw.topic, raw.partition, raw.offset)
        if isinstance(facts, str):
            auditor.undecodable(where, facts or "unreadable")
        else:
            auditor.payment_facts(facts, where)


async def load_checkpoint(source: str) -> tuple[JournalCheckpoint, str]:
    """A signed checkpoint from a file or a URL (e.g. ``$LEDGER_URL/v1/journal/checkpoint``),
    with the name the report gives it."""
    try:
        if source.startswith(("http://", "https://")):
            async with httpx.AsyncClient(timeout=10.0) as http:
                r = await http.get(source)
                r.raise_for_status()
                text = r.text
        else:
            text = await asyncio.to_thread(Path(source).read_text)
        return JournalCheckpoint.model_validate_json(text), f"checkpoint {source}"
    except (OSError, httpx.HTTPError) as exc:
        raise UsageError(f"--checkpoint {source}: cannot read it: {exc}") from exc
    except ValidationError as exc:
        raise UsageError(
            f"--checkpoint {source} is not a checkpoint "
            f'{{"seq", "hash", "at", "key_id", "signature"}}: {exc.errors()[:2]}'
        ) from exc


def load_manifest(path: Path) -> dict[str, Any]:
    mpath = manifest_path(path)
    if not path.is_file() or not mpath.is_file():
        raise UsageError(f"need both {path} and {mpath}")
    try:
        manifest: dict[str, Any] = json.loads(mpath.read_text())
    except ValueError as exc:
        raise UsageError(f"{mpath} is not JSON: {exc}") from exc
    return manifest


async def run_replay(
    *,
    source: str,
    public_key: bytes,
    key_note: str,
    progress: Progress,
    other_keys: tuple[bytes, ...] = (),
    purposes: Mapping[str, str] | None = None,
    file: Path | None = None,
    manifest: dict[str, Any] | None = None,
    manifest_key: bytes | None = None,
    bootstrap: str = "",
    topics: TopicNames | None = None,
    live: Live | None = None,
    max_per_kind: int = 1000,
    checkpoints: list[tuple[JournalCheckpoint, str]] | None = None,
) -> AuditReport:
    auditor = Auditor(
        public_key=public_key,
        other_keys=other_keys,
        purposes=dict(purposes or {}),
        findings=Findings(max_per_kind=max_per_kind),
    )
    auditor.settlement.given.extend(checkpoints or [])
    report = AuditReport(
        source=source, auditor=auditor, key_note=key_note, rules_run=set(BASE_RULES)
    )
    started = time.perf_counter()
    if file is not None and manifest is not None:
        report.rules_run.add("export")
        report.add(manifest_faults(manifest, file, manifest_key))
        signer_note = (
            "the pinned key"
            if manifest_key is not None
            else "a trusted key"
            if manifest.get("public_key")
            in {base64.b64encode(k).decode() for k in auditor.trusted.values()}
            else "its own key (self-attested; pin one with --manifest-key)"
        )
        report.notes.append(
            f"export manifest: created {manifest.get('created_at')}, "
            f"key {manifest.get('key_id')}, signed by {signer_note}"
        )
        if any(str(t).endswith(PAYMENTS) for t in manifest.get("topics", {})):
            auditor.mark_payments_read()
        seen = replay_file(auditor, file, progress)
        report.add(count_faults(manifest, seen))
    else:
        assert topics is not None
        await replay_kafka(auditor, bootstrap, topics, progress)
    auditor.finish()  # end-of-log checks: receipts, payments, settlement, checkpoints
    for checkpoint, label in checkpoints or []:
        report.notes.append(f"checkpoint {label}: entry {checkpoint.seq}, {checkpoint.at}")
    if auditor.payments_read:
        report.rules_run.update({"payments", "allocations"})
    if live and live.dsn:
        report.rules_run.add("live")
        report.add(await compare_database(auditor, live.dsn))
        report.notes.append("compared with the live database projection (--ledger-dsn)")
    if live and live.url and live.api_key:
        report.rules_run.add("live")
        report.add(await compare_api(auditor, live.url, live.api_key))
        report.notes.append(f"compared {len(auditor.balances):,} balances with {live.url}")
    report.elapsed_s = time.perf_counter() - started
    return report


async def run_unchecked(
    *,
    progress: Progress,
    file: Path | None = None,
    bootstrap: str = "",
    topics: TopicNames | None = None,
) -> tuple[Projection, float]:
    """The rebuild without checks (``unchecked.Projection``) of an export file or of
    ledger.v1 on Kafka, and the seconds it took. Nothing is verified: see the module."""
    started = time.perf_counter()
    projection = Projection()
    if file is not None:
        try:
            for raw in export_lines(file):
                projection.export_line(raw)
        except READ_ERRORS as exc:
            raise UsageError(
                f"{file}: the data file is corrupt and cannot be read on: {exc}"
            ) from exc
        progress.tick(projection.events)
    else:
        assert topics is not None
        if not await topic_partitions(bootstrap, topics.ledger):
            raise UsageError(
                f"topic {topics.ledger} does not exist on {bootstrap}; "
                "check --bootstrap and --topic-prefix"
            )
        async for records in _raw_batches(bootstrap, topics.ledger, size=10_000):
            for record in records:
                projection.message(record.value)
            progress.tick(len(records))
    return projection, time.perf_counter() - started


async def _all_records(bootstrap: str, names: Iterable[str]) -> AsyncIterator[RawRecord]:
    for topic in names:
        async for raw in stream_topic(bootstrap, topic):
            yield raw


async def run_export(
    *,
    out: Path,
    bootstrap: str,
    topics: TopicNames,
    signer: ReceiptSigner,
    receipt_public_key: bytes | None,
    progress: Progress,
    receipt_candidates: tuple[bytes, ...] = (),
    public_keys: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    if not await topic_partitions(bootstrap, topics.ledger):
        raise UsageError(
            f"topic {topics.ledger} does not exist on {bootstrap}; "
            "check --bootstrap and --topic-prefix"
        )
    writer = ExportWriter(out)
    async for raw in _all_records(bootstrap, (topics.ledger, topics.payments)):
        writer.add(raw)
        progress.tick()
    return writer.seal(
        signer,
        created_at=datetime.now(UTC),
        topic_prefix=topics.prefix,
        receipt_public_key=receipt_public_key,
        receipt_candidates=receipt_candidates,
        public_keys=public_keys,
    )


async def run_rebuild(
    *, dsn: str, bootstrap: str, topics: TopicNames, progress: Progress
) -> tuple[int, str]:
    """Empty the live projections and fold ledger.v1 back in (one transaction)."""
    if not await topic_partitions(bootstrap, topics.ledger):
        raise UsageError(f"topic {topics.ledger} does not exist on {bootstrap}")
    events: list[Event] = []
    async for raw in stream_topic(bootstrap, topics.ledger):
        events.append(decode(raw.value))
        progress.tick()
    conn = await connect(dsn)
    try:
        head = await store.rebuild_projections(conn, events)
    finally:
        await conn.close()
    return head.seq, head.hash
