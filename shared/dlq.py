"""``yibao-dlq``: list the dead letters of a topic, and send them back once fixed.

    yibao-dlq list payments.v1                  # each dead letter: when, who, why, origin
    yibao-dlq replay payments.v1 --offset 3     # re-publish that one (repeat --offset)
    yibao-dlq replay payments.v1 --all          # every replayable one
    yibao-dlq --version

Topics: payments.v1, risk.v1, ledger.v1, notify.v1, person-keys.v1 (any other is a
usage error naming them). Options go before or after the command, in any order.

A dead letter (written by ``shared.consumer``) holds the error, the consumer, the
original topic, partition, offset and key, and the original message. ``replay``
publishes the original message, with its original key, to its original topic through
an idempotent producer. Every consumer group of that topic sees it again: groups that
applied it already drop it in their inbox (same ``event_id``); the group that
dead-lettered it applies it now, or dead-letters it again if the cause is still
there. A message that was not JSON (kept as base64) is not an event and cannot be
replayed; ``replay`` names it as skipped (and exits 1 if it was asked for by offset).

Kafka: ``--bootstrap`` (default ``$KAFKA_BOOTSTRAP``) and the credentials of
``shared.kafka`` from the environment (never on the command line; ``. .run/stack.env``
gives them locally). ``list`` reads as ``KAFKA_SASL_USERNAME``, the read-only
principal; ``replay`` writes to the original topic, which only that topic's producer
and the admin may do, so it runs as ``KAFKA_ADMIN_USERNAME`` (the operator's
principal) when that is set.

Kafka topics are append-only: nothing leaves the DLQ. The command's output, with the
DLQ offsets it sent, is the operator's record of what was replayed.

Exit codes: 0 done; 1 something asked for could not be replayed; 2 usage or Kafka
unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError

from shared.kafka import KafkaCredentialsError, admin_options
from shared.outbox import cloudevents_headers, make_producer
from shared.topic_reader import stream_topic
from shared.topics import MAIN_TOPICS, dlq


@dataclass(frozen=True)
class DeadLetter:
    """One message of ``<topic>.dlq``: the one format ``shared.consumer`` writes and
    this tool reads back."""

    failed_at: str
    consumer: str
    error: str
    topic: str
    partition: int
    offset: int
    key: str | None
    original: Any  # the envelope, or {"base64": ...} for bytes that were not JSON
    dlq_offset: int = -1  # where it sits in the DLQ, once read back

    @classmethod
    def of(
        cls, record: ConsumerRecord[bytes, bytes], error: BaseException, consumer: str
    ) -> DeadLetter:
        """The dead letter for ``record``, which ``consumer`` could not apply."""
        value = record.value or b""
        try:
            original: Any = json.loads(value)
        except ValueError:
            original = {"base64": base64.b64encode(value).decode()}
        return cls(
            failed_at=datetime.now(UTC).isoformat(),
            consumer=consumer,
            error=f"{type(error).__name__}: {error}",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key.decode(errors="replace") if record.key else None,
            original=original,
        )

    def encode(self) -> bytes:
        return json.dumps(
            {
                "error": self.error,
                "consumer": self.consumer,
                "topic": self.topic,
                "partition": self.partition,
                "offset": self.offset,
                "key": self.key,
                "failed_at": self.failed_at,
                "original": self.original,
            }
        ).encode()

    @classmethod
    def decode(cls, value: bytes | None, dlq_offset: int, topic: str) -> DeadLetter:
        body = json.loads(value or b"{}")
        return cls(
            failed_at=str(body.get("failed_at", "")),
            consumer=str(body.get("consumer", "")),
            error=str(body.get("error", "")),
            topic=str(body.get("topic", topic)),
            partition=int(body.get("partition", -1)),
            offset=int(body.get("offset", -1)),
            key=body.get("key"),
            original=body.get("original"),
            dlq_offset=dlq_offset,
        )

    @property
    def replayable(self) -> bool:
        """An event envelope was dead-lettered (not undecodable bytes kept as base64)."""
        return isinstance(self.original, dict) and "event_id" in self.original

    def describe(self) -> str:
        what = (
            f"{self.original.get('event_type')} {self.original.get('event_id')}"
            if self.replayable
            else "not an event (undecodable bytes): cannot be replayed"
        )
        return (
            f"dlq@{self.dlq_offset}  {self.failed_at}  consumer {self.consumer}\n"
            f"    from {self.topic}[{self.partition}]@{self.offset}  key {self.key}\n"
            f"    {what}\n"
            f"    error: {self.error}"
        )


async def read_dead_letters(bootstrap: str, topic: str) -> list[DeadLetter]:
    """Every dead letter of ``topic`` (the full name, prefix included), oldest first."""
    return [
        DeadLetter.decode(record.value, record.offset, topic)
        async for record in stream_topic(bootstrap, dlq(topic))
    ]


async def replay(bootstrap: str, letters: Sequence[DeadLetter]) -> None:
    """Publish each letter's original message to its original topic, in order, as the
    admin principal when the environment names one (a service principal may write only
    its own topic)."""
    producer = make_producer(bootstrap, **admin_options())
    await producer.start()
    try:
        for letter in letters:
            value = json.dumps(letter.original, ensure_ascii=False).encode()
            await producer.send_and_wait(
                letter.topic,
                value=value,
                key=letter.key.encode() if letter.key is not None else None,
                headers=cloudevents_headers(value),  # as the outbox relay sent it
            )
    finally:
        await producer.stop()


KNOWN_TOPICS: tuple[str, ...] = tuple(t.name for t in MAIN_TOPICS)


def package_version() -> str:
    """The installed ``yibao`` distribution's version (``--version``)."""
    try:
        return metadata.version("yibao")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _kafka_options(parser: argparse.ArgumentParser) -> None:
    """--bootstrap and --topic-prefix, accepted before or after the command: the
    defaults are filled in once parsed (``_defaults``), so a value given in either
    place is kept."""
    parser.add_argument(
        "--bootstrap",
        default=argparse.SUPPRESS,
        help="Kafka bootstrap host:port (default: $KAFKA_BOOTSTRAP)",
    )
    parser.add_argument(
        "--topic-prefix",
        default=argparse.SUPPRESS,
        help="namespace prefix of the topics (default: $YIBAO_TOPIC_PREFIX, usually empty)",
    )


def _topic(text: str) -> str:
    if text not in KNOWN_TOPICS:
        raise argparse.ArgumentTypeError(
            f"unknown topic {text!r}; the topics are {', '.join(KNOWN_TOPICS)}"
            " (without a prefix: give that with --topic-prefix)"
        )
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yibao-dlq",
        description="List a topic's dead letters, and replay them to the topic once fixed."
        f" Topics: {', '.join(KNOWN_TOPICS)}.",
        epilog="Kafka credentials come from the environment (shared.kafka), never from the"
        " command line. Exit codes: 0 done; 1 something asked for could not be replayed;"
        " 2 usage or Kafka unreachable.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    _kafka_options(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="print every dead letter of TOPIC")
    listing.add_argument("topic", type=_topic, help="the topic whose .dlq to read: payments.v1")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    _kafka_options(listing)
    again = commands.add_parser("replay", help="re-publish dead letters to their topic")
    again.add_argument("topic", type=_topic, help="the topic whose .dlq to read: payments.v1")
    chosen = again.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--offset", type=int, action="append", help="a DLQ offset (repeatable)")
    chosen.add_argument("--all", action="store_true", help="every replayable dead letter")
    _kafka_options(again)
    return parser


def _defaults(args: argparse.Namespace) -> argparse.Namespace:
    if getattr(args, "bootstrap", None) is None:
        args.bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    if getattr(args, "topic_prefix", None) is None:
        args.topic_prefix = os.environ.get("YIBAO_TOPIC_PREFIX", "")
    return args


async def _run(args: argparse.Namespace) -> int:
    topic = args.topic_prefix + args.topic
    letters = await read_dead_letters(args.bootstrap, topic)
    if args.command == "list":
        for letter in letters:
            if args.json:
                print(json.dumps(asdict(letter), ensure_ascii=False, default=str))
            else:
                print(letter.describe())
        if not args.json:
            print(f"{len(letters)} dead letter(s) in {dlq(topic)}")
        return 0
    if args.all:
        picked = letters
    else:
        by_offset = {letter.dlq_offset: letter for letter in letters}
        unknown = [o for o in args.offset if o not in by_offset]
        if unknown:
            print(f"no dead letter at offset(s) {unknown} of {dlq(topic)}", file=sys.stderr)
            return 1
        picked = [by_offset[o] for o in dict.fromkeys(args.offset)]
    wanted = [letter for letter in picked if letter.replayable]
    await replay(args.bootstrap, wanted)
    for letter in picked:
        if letter.replayable:
            print(
                f"replayed dlq@{letter.dlq_offset} -> {letter.topic} "
                f"({letter.original.get('event_type')} {letter.original.get('event_id')})"
            )
        else:
            print(f"skipped dlq@{letter.dlq_offset}: not an event (undecodable bytes)")
    # --all asks for every replayable letter; named offsets ask for exactly those.
    return 0 if args.all or len(wanted) == len(picked) else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _defaults(_parser().parse_args(argv))
    if not args.bootstrap:
        print("yibao-dlq: give --bootstrap or set KAFKA_BOOTSTRAP", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args))
    except (KafkaError, OSError, TimeoutError, KafkaCredentialsError) as exc:
        print(f"yibao-dlq: Kafka at {args.bootstrap}: {exc!r}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
