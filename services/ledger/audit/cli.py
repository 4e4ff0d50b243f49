"""``yibao-audit``: replay the ledger's journal and check it; export it for offline audit.

Thin: argument parsing, key selection and exit codes. The pipelines are in
``services.ledger.audit_run``, the checks in ``services.ledger.audit_checks``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
from aiokafka.errors import KafkaError

from services.ledger.audit.keys import (
    KeySet,
    fetch_key_set,
    is_url,
    key_set_json,
    key_set_of,
    parse_key_set,
    public_key_bytes,
    read_key_set,
)
from services.ledger.audit.report import render_text
from services.ledger.audit.run import (
    Live,
    Progress,
    UsageError,
    load_checkpoint,
    load_manifest,
    run_export,
    run_rebuild,
    run_replay,
    run_unchecked,
)
from services.ledger.audit.unchecked import Projection
from services.ledger.config import DEV_RECEIPT_SIGNING_KEY
from services.ledger.signing import (
    UNDIVIDED,
    LedgerSigners,
    ReceiptSigner,
    SigningPurpose,
    key_id_of,
)
from shared.crypto import parse_key
from shared.dlq import package_version
from shared.errors import YibaoError
from shared.topics import TopicNames

EXIT_CLEAN, EXIT_DISCREPANCIES, EXIT_ERROR = 0, 1, 2

DESCRIPTION = """\
Audit the Yibao ledger from its event log. The journal (topic ledger.v1) is the
ledger's record of truth; balances, receipts and statements are projections of it.

  replay   read ledger.v1 (and payments.v1) from offset 0, from Kafka or from an export
           file, rebuild balances and receipts with the ledger's own projector, and check:
           every transaction balances to zero; no wallet or personal medical account goes
           negative; the hash chain is intact (seq gapless, prev_hash links, each hash
           recomputes); every receipt signature verifies; receipt numbers are gapless per
           code; each receipt matches its entry; every PaymentSucceeded on payments.v1 has
           exactly one journal transaction of the same amount and every transaction has
           one; every entry since signing began is signed by the trusted key; a
           redelivered entry is the same, whole; every closed clearing day recomputes
           from its entries, its transfers and arrivals match, its checkpoint holds;
           every bank reconciliation recomputes from the statement it carries; with
           --checkpoint, the journal reaches that seq with exactly that hash. With
           --ledger-dsn (or --ledger-url and $API_KEY) it also compares the rebuilt
           state with the live projection. Hashes and signatures are checked by one
           worker process per core. --no-checks only rebuilds head, balances and
           receipts from ledger.v1, fast, verifying nothing.
  export   write ledger.v1 and payments.v1 to a gzip JSON Lines file plus a signed
           manifest (<file>.manifest.json) for replay --from on a machine with no Kafka.
  rebuild  (operators) empty the ledger database's projection tables and fold ledger.v1
           back into them, in one transaction; then run replay with --ledger-dsn.
"""

EPILOG = """\
which public keys are trusted for signatures (first that applies); a receipt, entry or
checkpoint verifies with the key its key_id names among them, if that key's purpose is
its kind (receipts; journal for entries and checkpoints) or all (the undivided key of
before issue 11); a key with no stated purpose (--public-key) signs every kind:
  --public-key B64   keys you pinned (e.g. published by the bureau; repeatable, one per
                     key the ledger signed with): strongest
  --public-keys FILE a key set you saved: the JSON of GET /v1/receipts/public-keys
  --public-keys URL  that key set fetched from URL (a ledger, or the endpoint itself):
                     trusts that server
  --ledger-url URL   the key set fetched from URL/v1/receipts/public-keys (every
                     purpose's keys): trusts that server
  the export manifest's public_keys or receipt_public_key (replay --from):
                     self-attested, it proves the file is consistent, not who made
                     it; pin it with --public-key
  YIBAO_RECEIPT_SIGNING_KEY / --signing-key-file: the public halves of the keys the ledger
  derives from it, one per purpose, and of the root key itself (purpose all)
  (in development only, the ledger's built-in development key)

exit codes: 0 clean, 1 discrepancies found (each named with its seq, event_id,
payment_id and topic/partition/offset or file line), 2 usage or I/O error.

environment: KAFKA_BOOTSTRAP (default --bootstrap), YIBAO_TOPIC_PREFIX (default
--topic-prefix), YIBAO_RECEIPT_SIGNING_KEY (or --signing-key-file), OPERATOR_API_KEY
or API_KEY (or --api-key-file: comparing every balance takes an operator key),
PGPASSWORD (the password of --ledger-dsn), YIBAO_ENVIRONMENT (development allows the
development signing key). No secret is taken on the command
line: --api-key VALUE and --signing-key VALUE are refused, and so is a DSN with a
password. Options go before or after the command, in any order; rebuild asks for
confirmation (type 'rebuild') unless --yes.
"""


def _env(*names: str, default: str = "") -> str:
    for name in names:
        if os.environ.get(name, "").strip():
            return os.environ[name].strip()
    return default


def _own_root(flag: str | None) -> tuple[bytes, str] | None:
    """The ledger's root signing seed: --signing-key-file, YIBAO_RECEIPT_SIGNING_KEY, dev
    fallback. Its purposes' keys derive from it (``_own_keys``)."""
    text, note = flag, "--signing-key-file"
    if not text:
        text, note = _env("YIBAO_RECEIPT_SIGNING_KEY"), "YIBAO_RECEIPT_SIGNING_KEY"
    if not text and _env("YIBAO_ENVIRONMENT", default="development") == "development":
        text, note = DEV_RECEIPT_SIGNING_KEY, "the development signing key"
    if not text:
        return None
    try:
        return parse_key(text), note
    except ValueError as exc:
        raise UsageError(f"{note}: {exc}") from exc


def _own_keys(root: bytes) -> dict[str, ReceiptSigner]:
    """The ledger's keys as it derives them from its root seed, by purpose, and the root
    key itself (``UNDIVIDED``: it signed every kind before issue 11)."""
    keys: dict[str, ReceiptSigner] = {
        str(purpose): signer for purpose, signer in LedgerSigners.derive(root).by_purpose.items()
    }
    return {**keys, UNDIVIDED: ReceiptSigner(root)}


async def _receipt_keys(
    args: argparse.Namespace, manifest: dict[str, Any] | None
) -> tuple[KeySet, str]:
    """The trusted keys (the current ones first, with their purposes) and where they
    came from."""
    if args.public_key or args.public_keys:
        pinned = KeySet(tuple(public_key_bytes(text) for text in args.public_key or []))
        notes = ["pinned with --public-key"] if pinned.keys else []
        if args.public_keys:
            if is_url(args.public_keys):
                listed, url = await fetch_key_set(args.public_keys)
                notes.append(f"fetched from {url} (trusts that server)")
            else:
                listed = read_key_set(Path(args.public_keys))
                notes.append(f"the key set in {args.public_keys}")
            pinned = pinned + listed
        return pinned, "; ".join(notes)
    if args.ledger_url:
        keys, url = await fetch_key_set(args.ledger_url)
        return keys, f"fetched from {url} (trusts that server)"
    attested = "from the export manifest: self-attested; pin it with --public-key"
    if manifest is not None and manifest.get("public_keys"):
        return parse_key_set(manifest["public_keys"], "the manifest's public_keys"), attested
    if manifest is not None and manifest.get("receipt_public_key"):
        what = "the manifest's receipt_public_key"
        return KeySet((public_key_bytes(manifest["receipt_public_key"], what=what),)), attested
    own = _own_root(args.signing_key)
    if own is None:
        raise UsageError(
            "no public key to verify receipts: pass --public-key, --public-keys or --ledger-url"
        )
    return key_set_of(_own_keys(own[0]).items()), f"derived from {own[1]}"


async def _unchecked(args: argparse.Namespace) -> int:
    """``replay --no-checks``: the state the journal states, nothing verified."""
    progress = Progress(every=args.progress_every)
    if args.from_file:
        source = f"export file {args.from_file}"
        projection, seconds = await run_unchecked(progress=progress, file=Path(args.from_file))
    else:
        topics = TopicNames(args.topic_prefix)
        source = f"Kafka {args.bootstrap} {topics.ledger}"
        projection, seconds = await run_unchecked(
            progress=progress, bootstrap=args.bootstrap, topics=topics
        )
    summary = unchecked_summary(projection, source, seconds)
    print(json.dumps(summary, ensure_ascii=False, indent=2) if args.json else _text(summary))
    return EXIT_CLEAN


def unchecked_summary(projection: Projection, source: str, seconds: float) -> dict[str, Any]:
    p = projection
    return {
        "source": source,
        "checked": False,
        "head": {"seq": p.seq, "hash": p.hash},
        "events": p.events,
        "entries": p.entries,
        "redelivered": p.redelivered,
        "unreadable": p.unreadable,
        "receipts": len(p.receipts),
        "accounts": len(p.balances),
        "balances_sum": sum(p.balances.values()),
        "balances": dict(sorted(p.balances.items())),
        "elapsed_s": round(seconds, 3),
    }


def _text(summary: dict[str, Any]) -> str:
    head = summary["head"]
    return "\n".join(
        [
            f"yibao-audit replay --no-checks: {summary['source']}",
            "NOT CHECKED: hashes, signatures, the manifest and payments.v1 were not verified;"
            " run replay without --no-checks to audit",
            f"head: entry {head['seq']}, hash {head['hash']}",
            f"{summary['events']:,} ledger events, {summary['entries']:,} entries "
            f"({summary['redelivered']:,} redelivered, {summary['unreadable']:,} unreadable), "
            f"{summary['receipts']:,} receipts, {summary['accounts']:,} accounts "
            f"(balances sum to {summary['balances_sum']} fen) in {summary['elapsed_s']:.1f} s",
            "use --json for every balance",
        ]
    )


async def _replay(args: argparse.Namespace) -> int:
    if args.no_checks:
        return await _unchecked(args)
    progress = Progress(every=args.progress_every)
    checkpoints = [await load_checkpoint(source) for source in args.checkpoint or []]
    live = Live(dsn=args.ledger_dsn, url=args.ledger_url, api_key=args.api_key or None)
    if args.from_file:
        path = Path(args.from_file)
        manifest = load_manifest(path)
        keys, note = await _receipt_keys(args, manifest)
        pinned = (
            public_key_bytes(args.manifest_key, what="--manifest-key")
            if args.manifest_key
            else None
        )
        report = await run_replay(
            source=f"export file {path}",
            public_key=keys.keys[0],
            other_keys=keys.keys[1:],
            purposes=keys.purposes,
            key_note=note,
            progress=progress,
            file=path,
            manifest=manifest,
            manifest_key=pinned,
            live=live,
            max_per_kind=args.max_per_kind,
            checkpoints=checkpoints,
        )
    else:
        keys, note = await _receipt_keys(args, None)
        topics = TopicNames(args.topic_prefix)
        report = await run_replay(
            source=f"Kafka {args.bootstrap} {topics.ledger}",
            public_key=keys.keys[0],
            other_keys=keys.keys[1:],
            purposes=keys.purposes,
            key_note=note,
            progress=progress,
            bootstrap=args.bootstrap,
            topics=topics,
            live=live,
            max_per_kind=args.max_per_kind,
            checkpoints=checkpoints,
        )
    print(
        json.dumps(report.to_json(), ensure_ascii=False, indent=2)
        if args.json
        else render_text(report)
    )
    return EXIT_DISCREPANCIES if report.total else EXIT_CLEAN


async def _export(args: argparse.Namespace) -> int:
    own = _own_root(args.signing_key)
    if own is None:
        raise UsageError(
            "no key to sign the manifest: set YIBAO_RECEIPT_SIGNING_KEY or pass --signing-key-file"
        )
    root, note = own
    keys = _own_keys(root)
    signer = keys[SigningPurpose.MANIFESTS]
    receipt_key = (
        public_key_bytes(args.receipt_public_key, what="--receipt-public-key")
        if args.receipt_public_key
        else None
    )
    out = Path(args.out)
    manifest = await run_export(
        out=out,
        bootstrap=args.bootstrap,
        topics=TopicNames(args.topic_prefix),
        signer=signer,
        receipt_public_key=receipt_key,
        progress=Progress(every=args.progress_every),
        receipt_candidates=(keys[SigningPurpose.RECEIPTS].public_raw, keys[UNDIVIDED].public_raw),
        public_keys=key_set_json(key_set_of(keys.items())),
    )
    counts = ", ".join(f"{t}: {v['count']:,}" for t, v in manifest["topics"].items())
    stated = manifest.get("receipt_public_key")
    print(
        f"wrote {out} ({manifest['bytes']:,} bytes; {counts or 'no events'})\n"
        f"manifest {out}.manifest.json signed by the manifests key derived from {note},"
        f" key {signer.key_id}\n"
        f"receipt key: {key_id_of(public_key_bytes(stated)) if stated else 'not stated'}; "
        f"receipts name {', '.join(manifest['receipt_key_ids']) or 'no key'}"
    )
    return EXIT_CLEAN


def _confirm_rebuild(args: argparse.Namespace) -> None:
    """``--yes``, or the operator types ``rebuild`` at a terminal; else a usage error."""
    if args.yes:
        return
    where = _dsn_shown(args.ledger_dsn)
    if not sys.stdin.isatty():
        raise UsageError(
            f"rebuild empties the projection tables of {where}: pass --yes to confirm"
            " (no terminal to ask on)"
        )
    print(
        f"rebuild empties the projection tables (balances, receipts, statement lines) of"
        f" {where} and folds ledger.v1 back into them, in one transaction.",
        file=sys.stderr,
    )
    answer = input("type 'rebuild' to go on: ")
    if answer.strip() != "rebuild":
        raise UsageError("not confirmed: nothing changed")


async def _rebuild(args: argparse.Namespace) -> int:
    _confirm_rebuild(args)
    seq, head_hash = await run_rebuild(
        dsn=args.ledger_dsn,
        bootstrap=args.bootstrap,
        topics=TopicNames(args.topic_prefix),
        progress=Progress(every=args.progress_every),
    )
    print(f"rebuilt the projections up to entry {seq} (hash {head_hash})")
    return EXIT_CLEAN


def _kafka_options(p: argparse.ArgumentParser) -> None:
    """--bootstrap, --topic-prefix and --progress-every, shared by every command and
    accepted before or after it: their defaults are filled in once parsed
    (``_defaults``), so a value given in either place is kept."""
    p.add_argument(
        "--bootstrap",
        default=argparse.SUPPRESS,
        help="Kafka bootstrap servers (default $KAFKA_BOOTSTRAP)",
    )
    p.add_argument(
        "--topic-prefix",
        default=argparse.SUPPRESS,
        help="topic namespace, e.g. 't1a2b.' (default $YIBAO_TOPIC_PREFIX)",
    )
    p.add_argument(
        "--progress-every",
        type=int,
        default=argparse.SUPPRESS,
        metavar="N",
        help="print progress to stderr every N events (0: never; default 100000)",
    )


class _SecretRefused(argparse.Action):
    """A secret given as a value on the command line (where ``ps`` and the shell's
    history show it) is refused, naming where to put it instead."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        self.instead: str = kwargs.pop("instead")
        super().__init__(option_strings, dest, nargs="?", default=None, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"{option_string} takes no secret on the command line (ps and shell history"
            f" show it): {self.instead}"
        )


def _secret_options(p: argparse.ArgumentParser, name: str, env: str, what: str) -> None:
    """``--NAME-file FILE`` (the secret read from a file), and ``--NAME`` refused."""
    p.add_argument(
        f"--{name}-file",
        metavar="FILE",
        help=f"read {what} from FILE (default ${env})",
    )
    p.add_argument(
        f"--{name}",
        action=_SecretRefused,
        instead=f"set {env} or pass --{name}-file FILE",
        help=f"not accepted: set ${env} or pass --{name}-file",
    )


def _dsn_option(p: argparse.ArgumentParser, *, required: bool, help_text: str) -> None:
    p.add_argument("--ledger-dsn", type=_dsn_without_password, required=required, help=help_text)


def _dsn_without_password(text: str) -> str:
    """A DSN with no password in it (else a usage error saying where it goes)."""
    parsed = urlsplit(text) if "://" in text else None
    has_password = (
        bool(parsed.password) if parsed is not None else "password=" in text.lower()
    ) or "password=" in (parsed.query.lower() if parsed is not None else "")
    if has_password:
        raise argparse.ArgumentTypeError(
            "a DSN with a password is a secret on the command line: leave the password out"
            " and set PGPASSWORD (or a ~/.pgpass passfile)"
        )
    return text


def _dsn_shown(dsn: str) -> str:
    parsed = urlsplit(dsn) if "://" in dsn else None
    if parsed is None:
        return "the ledger database"
    return f"the ledger database {parsed.hostname or ''}:{parsed.port or ''}{parsed.path}"


def _read_secret(path: str | None, env: str) -> str:
    """The secret in the file at ``path`` (stripped), else the environment's ``env``."""
    if path:
        return Path(path).read_text(encoding="utf-8").strip()
    return _env(env) if env else ""


def _defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Defaults of the options accepted anywhere, and secrets read from their files or
    the environment (``args.api_key``, ``args.signing_key``)."""
    if getattr(args, "bootstrap", None) is None:
        args.bootstrap = _env("KAFKA_BOOTSTRAP", "YIBAO_KAFKA_BOOTSTRAP", default="127.0.0.1:59092")
    if getattr(args, "topic_prefix", None) is None:
        args.topic_prefix = _env("YIBAO_TOPIC_PREFIX")
    if getattr(args, "progress_every", None) is None:
        args.progress_every = 100_000
    if hasattr(args, "api_key_file"):
        # Comparing every account's balance takes an operator key (a caller reads only
        # its own payers' accounts): OPERATOR_API_KEY first, then API_KEY.
        args.api_key = _read_secret(args.api_key_file, "") or _env("OPERATOR_API_KEY", "API_KEY")
    if hasattr(args, "signing_key_file"):  # else _own_root reads the environment
        args.signing_key = _read_secret(args.signing_key_file, "") or None
    return args


def _replay_options(sub: Any) -> None:
    replay = sub.add_parser(
        "replay",
        help="rebuild and check (exit 0 clean, 1 discrepancies)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _kafka_options(replay)
    replay.add_argument(
        "--from",
        dest="from_file",
        metavar="FILE",
        help="replay an export file instead of Kafka (no Kafka or database "
        "needed); its manifest signature and SHA-256 are checked first",
    )
    replay.add_argument(
        "--public-key",
        action="append",
        metavar="B64",
        help="base64 Ed25519 public key trusted for every kind (receipts, entries,"
        " checkpoints); repeatable (one per key)",
    )
    replay.add_argument(
        "--public-keys",
        metavar="URL|FILE",
        help="trusted keys, each for its purpose: the JSON list of GET"
        " /v1/receipts/public-keys, from a ledger URL (or the endpoint's) or a file of it",
    )
    replay.add_argument(
        "--manifest-key",
        help="base64 public key the manifest must be signed with (else the manifest's own)",
    )
    replay.add_argument(
        "--ledger-url",
        help="live ledger: its public keys, and with an operator key ($OPERATOR_API_KEY,"
        " $API_KEY or --api-key-file) its balances, are compared",
    )
    _secret_options(
        replay, "api-key", "OPERATOR_API_KEY", "the operator key for --ledger-url account reads"
    )
    _dsn_option(
        replay,
        required=False,
        help_text="live ledger database DSN, no password in it (PGPASSWORD): compare head,"
        " balances, receipts and statements",
    )
    _secret_options(
        replay,
        "signing-key",
        "YIBAO_RECEIPT_SIGNING_KEY",
        "the urlsafe base64 Ed25519 seed whose public halves verify when no key is given",
    )
    replay.add_argument(
        "--checkpoint",
        action="append",
        metavar="FILE|URL",
        help="a signed journal checkpoint (JSON {seq, hash, at, key_id, signature}, e.g. "
        "saved from $LEDGER_URL/v1/journal/checkpoint or a settlement file's "
        "X-Journal-Checkpoint): fail unless the journal reaches its seq with exactly its "
        "hash and the trusted key signed it; repeatable",
    )
    replay.add_argument("--json", action="store_true", help="print the report as JSON")
    replay.add_argument(
        "--no-checks",
        action="store_true",
        help="rebuild only: fold ledger.v1 into head, balances and receipts and print them,"
        " trusting the log (no hash, signature, manifest or cross check; exit 0)",
    )
    replay.add_argument(
        "--max-per-kind",
        type=int,
        default=1000,
        metavar="N",
        help="keep at most N discrepancies of one kind (all are counted)",
    )


def _export_and_rebuild_options(sub: Any) -> None:
    export = sub.add_parser("export", help="write ledger.v1 + payments.v1 to a signed file")
    _kafka_options(export)
    export.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="data file to write (gzip JSON Lines); the manifest goes "
        "beside it as FILE.manifest.json",
    )
    _secret_options(
        export,
        "signing-key",
        "YIBAO_RECEIPT_SIGNING_KEY",
        "the urlsafe base64 Ed25519 seed the manifests key derives from",
    )
    export.add_argument(
        "--receipt-public-key",
        help="base64 receipt public key to state in "
        "the manifest when --signing-key-file is "
        "a dedicated key",
    )

    rebuild = sub.add_parser("rebuild", help="(operators) rebuild the projection tables")
    _kafka_options(rebuild)
    _dsn_option(
        rebuild, required=True, help_text="the ledger database DSN, no password in it (PGPASSWORD)"
    )
    rebuild.add_argument("--yes", action="store_true", help="do not ask for confirmation (scripts)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yibao-audit",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    _kafka_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _replay_options(sub)
    _export_and_rebuild_options(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _defaults(args)
    except OSError as exc:
        print(f"yibao-audit: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    command = {"replay": _replay, "export": _export, "rebuild": _rebuild}[args.command]
    try:
        code = asyncio.run(command(args))
    except YibaoError as exc:  # a rebuild refused: the log does not chain or stops short
        print(f"yibao-audit: refused: {exc}", file=sys.stderr)
        return EXIT_DISCREPANCIES
    except (
        UsageError,
        OSError,
        KafkaError,
        TimeoutError,
        asyncpg.PostgresError,
        httpx.HTTPError,
        ValueError,
        KeyError,
    ) as exc:
        print(f"yibao-audit: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return code


if __name__ == "__main__":
    sys.exit(main())
