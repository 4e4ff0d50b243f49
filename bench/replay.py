"""Benchmark: audit replay throughput of a long journal, from Kafka and from an export file.

Generates a valid log with the ledger's own rules (``services.ledger.audit.synthetic``: signed
receipts, hash chain, and the payment service's outcomes on payments.v1), publishes it
to fresh prefixed topics on the real Kafka, exports it with ``yibao-audit export``'s
pipeline, then times ``replay`` from the file and from Kafka (every check on; hashes and
signatures in a process pool, one worker per core) and the rebuild without checks
(``replay --no-checks``: head, balances and receipts from ledger.v1 only) from each. Prints
events/s per stage, the CPU seconds of this process and of its workers, and the peak
memory of this process (a worker holds one batch: ~75 MB).
Every replay must come out clean, and the unchecked rebuild must reach the same head and
balances.

    .venv/bin/python -m bench.replay --events 1000000          # and 100k first
    .venv/bin/python -m bench.replay --events 100000 --sizes 100000
    .venv/bin/python -m bench.replay --existing .run/bench/journal-1000000.jsonl.gz

``--existing FILE`` times the replays only, of an export kept by an earlier run
(``--keep``): the topics its manifest names (``topic_prefix``) must still be on Kafka, and
the key that signed it (``receipt_public_key``) is the one trusted. Generating and
producing a million events takes longer than replaying them; this compares code
changes on the same journal, back to back.

Uses KAFKA_BOOTSTRAP when set, else the local stack (deploy/stack.py). The bench topics
are deleted at the end (``--keep`` keeps them and the files).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import resource
import secrets
import sys
import time
import zlib
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from deploy import stack
from deploy.common import kafka_admin_env, layout, read_env_file
from deploy.topics import create_topics
from services.ledger.audit.run import (
    Progress,
    load_manifest,
    run_export,
    run_replay,
    run_unchecked,
)
from services.ledger.audit.synthetic import SyntheticJournal
from services.ledger.domain.posting import PostingKeys
from services.ledger.signing import ReceiptSigner
from shared.events import encode
from shared.kafka import admin_options
from shared.outbox import make_producer
from shared.topics import ALL_TOPICS, TopicNames

IN_FLIGHT = 20_000  # sends awaited in groups: bounded memory while producing


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> tuple[float, float]:
    """CPU time of this process, and of its ended children (the replay's workers)."""
    t = os.times()
    return t.user + t.system, t.children_user + t.children_system


_cpu_mark = [cpu_seconds()]


def line(stage: str, count: int, seconds: float) -> str:
    """One stage's figures. CPU is this process's (main) and its workers' since the
    previous line (the stages run one after the other; Kafka's own CPU is not in it).
    On a shared machine a process gets what the others leave it, so the line also
    says what the CPU seconds allow on two idle cores: the main process and the
    workers run at once, so the stage takes at least the main process's CPU time and at
    least half of the total ("2-core bound")."""
    (main, children), (main0, children0) = cpu_seconds(), _cpu_mark[0]
    _cpu_mark[0] = (main, children)
    main, workers_cpu = main - main0, children - children0
    bound = max(main, (main + workers_cpu) / 2, 1e-9)
    return (
        f"  {stage:<28} {count:>10,} events  {seconds:8.1f} s  "
        f"{count / seconds:>9,.0f} events/s  CPU main {main:6.1f} s + workers "
        f"{workers_cpu:6.1f} s  (2-core bound {count / bound:>7,.0f} events/s)  "
        f"(peak RSS {peak_rss_mb():,.0f} MB)"
    )


async def publish(
    bootstrap: str,
    topics: TopicNames,
    signer: ReceiptSigner,
    ledger_events: int,
    payers: int,
    *,
    signed: bool = True,
) -> int:
    """Generate and produce the log; returns the number of messages produced. ``signed``:
    entries as the ledger writes them since settlement (clearing day, cash memo lines,
    Ed25519 signature each, verified by the replay)."""
    journal = SyntheticJournal(
        PostingKeys(check_key=b"b" * 32, signer=signer), payers=payers, seed=42, signed=signed
    )
    producer = make_producer(bootstrap, linger_ms=50, max_batch_size=1024 * 1024)
    await producer.start()
    sent = 0
    pending: list[asyncio.Future[object]] = []
    progress = Progress(every=200_000)
    try:
        for stream, env in journal.events(ledger_events):
            topic = topics.ledger if stream == "ledger" else topics.payments
            pending.append(await producer.send(topic, value=encode(env), key=env.key.encode()))
            sent += 1
            progress.tick()
            if len(pending) >= IN_FLIGHT:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


async def delete_topics(bootstrap: str, topics: TopicNames) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **admin_options())
    await admin.start()
    try:
        await admin.delete_topics([topics.prefix + t.name for t in ALL_TOPICS])
    finally:
        await admin.close()


async def replay_stages(
    bootstrap: str, topics: TopicNames, out: Path, public_key: bytes, key_note: str
) -> None:
    """The timed stages: the rebuild without checks from the file and from Kafka (first,
    so that their peak RSS is their own), then the replay with every check from each;
    all must agree."""
    unchecked = []
    for stage, kwargs in (
        ("rebuild, no checks, file", {"file": out}),
        ("rebuild, no checks, Kafka", {"bootstrap": bootstrap, "topics": topics}),
    ):
        projection, seconds = await run_unchecked(progress=Progress(every=0), **kwargs)
        assert projection.unreadable == 0
        print(line(stage, projection.events, seconds), flush=True)
        unchecked.append((projection.seq, projection.hash, projection.balances))
        del projection

    report = await run_replay(
        source=str(out),
        public_key=public_key,
        key_note=key_note,
        progress=Progress(every=250_000),
        file=out,
        manifest=load_manifest(out),
    )
    assert report.total == 0, report.findings[:5]
    print(line("replay from file", report.events(), report.elapsed_s), flush=True)
    del report  # the file replay's rebuilt state is not kept while Kafka is replayed

    report = await run_replay(
        source="kafka",
        public_key=public_key,
        key_note=key_note,
        progress=Progress(every=250_000),
        bootstrap=bootstrap,
        topics=topics,
    )
    assert report.total == 0, report.findings[:5]
    print(line("replay from Kafka", report.events(), report.elapsed_s), flush=True)
    auditor = report.auditor
    c = auditor.counts
    print(
        f"  clean: {c.entries:,} entries, {c.receipts:,} signed receipts, "
        f"{c.rejections:,} rejections, {c.successes:,} payments, "
        f"{len(auditor.balances):,} accounts",
        flush=True,
    )
    balances = {a: b.balance for a, b in auditor.balances.items()}
    for state in unchecked:
        assert state == (auditor.head.seq, auditor.head.hash, balances)


async def run_existing(bootstrap: str, out: Path) -> None:
    manifest = load_manifest(out)
    topics = TopicNames(str(manifest["topic_prefix"]))
    public_key = base64.b64decode(manifest["receipt_public_key"])
    c = {t: v["count"] for t, v in manifest["topics"].items()}
    print(f"\n{out} ({sum(c.values()):,} events on {', '.join(sorted(c))}):", flush=True)
    _cpu_mark[0] = cpu_seconds()
    await replay_stages(bootstrap, topics, out, public_key, "the export's receipt key")


async def run_size(
    bootstrap: str, size: int, payers: int, workdir: Path, keep: bool, *, signed: bool = True
) -> None:
    topics = TopicNames(f"bench{secrets.token_hex(3)}.")
    await create_topics(bootstrap, topics.prefix)
    signer = ReceiptSigner(secrets.token_bytes(32))
    key_note = "the bench's receipt key"
    print(f"\n{size:,} journal events (topics {topics.prefix}*):", flush=True)
    try:
        started = time.perf_counter()
        produced = await publish(bootstrap, topics, signer, size, payers, signed=signed)
        print(
            line("generate + produce to Kafka", produced, time.perf_counter() - started), flush=True
        )

        out = workdir / f"journal-{size}.jsonl.gz"
        started = time.perf_counter()
        manifest = await run_export(
            out=out,
            bootstrap=bootstrap,
            topics=topics,
            signer=signer,
            receipt_public_key=None,
            progress=Progress(every=0),
        )
        exported = sum(t["count"] for t in manifest["topics"].values())
        print(
            line("export Kafka -> file", exported, time.perf_counter() - started)
            + f"  {out.stat().st_size / 1e6:,.0f} MB",
            flush=True,
        )

        await replay_stages(bootstrap, topics, out, signer.public_raw, key_note)
        if not keep:
            out.unlink()
            out.with_name(out.name + ".manifest.json").unlink()
    finally:
        if not keep:
            await delete_topics(bootstrap, topics)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--events",
        type=int,
        default=1_000_000,
        help="ledger.v1 events in the largest run (default 1,000,000)",
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=None,
        help="run these sizes (default: 100000 and --events)",
    )
    parser.add_argument(
        "--payers", type=int, default=0, help="distinct payers (default: one per 20 events)"
    )
    parser.add_argument("--workdir", default=".run/bench", help="where export files go")
    parser.add_argument("--keep", action="store_true", help="keep the topics and files")
    parser.add_argument(
        "--existing",
        metavar="FILE",
        help="only replay this kept export and the topics its manifest names",
    )
    parser.add_argument(
        "--unsigned",
        action="store_true",
        help="entries as before settlement (no clearing day, no entry signatures)",
    )
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "").strip()
    if not bootstrap:
        bootstrap = stack.ensure_infra().kafka_bootstrap
        os.environ.update(kafka_admin_env(read_env_file(layout().stack_env)))  # Kafka admin
    workdir = Path(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    sizes = args.sizes or sorted({min(100_000, args.events), args.events})
    print(
        f"yibao replay benchmark: {platform.python_implementation()} "
        f"{platform.python_version()}, {os.cpu_count()} cores, Kafka {bootstrap}, "
        f"zlib {zlib.ZLIB_VERSION}"
    )
    if args.existing:
        await run_existing(bootstrap, Path(args.existing))
        return
    for size in sizes:
        payers = args.payers or max(10, size // 20)
        await run_size(bootstrap, size, payers, workdir, args.keep, signed=not args.unsigned)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
