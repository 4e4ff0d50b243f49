"""Create the Kafka topics of the event contract, explicitly and idempotently.

The broker runs with ``auto.create.topics.enable=false``: every topic the services
use is created here, from ``shared.topics.ALL_TOPICS`` (replication factor 1 on the
single-node local stack), with its topic configs (retention). The configs are also
set on topics that exist already, so a stack created before a retention change gets
it. Tests create prefixed copies (``t1a2b.payments.v1``) so that each test owns its
topics.

    python -m deploy.topics --bootstrap 127.0.0.1:59092 [--prefix t1a2b.] [--grant-access]

It connects as the admin principal of the environment (``shared.kafka.admin_options``:
``KAFKA_ADMIN_USERNAME``/``KAFKA_ADMIN_PASSWORD``, SASL/SCRAM-SHA-512), or without
credentials when none is set. ``--grant-access`` also (re)sets the read-only principal
and each service's principal and their ACLs (deploy/kafka_access.py) from the
passwords in the environment: ``KAFKA_SASL_USERNAME``/``KAFKA_SASL_PASSWORD`` and
``KAFKA_<SERVICE>_USERNAME``/``KAFKA_<SERVICE>_PASSWORD``, as ``.run/secrets.env`` and
the one-shot init container of deploy/compose.yaml give them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Iterable, Mapping

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from deploy import kafka_access
from shared.kafka import admin_options
from shared.topics import ALL_TOPICS, TopicSpec

# Kafka protocol error codes that mean "the topic is there already".
_TOPIC_ALREADY_EXISTS = 36


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: set[str], deadline: float) -> None:
    """Wait until every partition of ``names`` has a leader (producers can write)."""
    missing: set[str] = set(names)
    while True:
        described = await admin.describe_topics(sorted(names))
        missing = set()
        for topic in described:
            partitions = topic.get("partitions") or []
            leaderless = any(p.get("leader", -1) < 0 for p in partitions)
            if topic.get("error_code", 0) != 0 or not partitions or leaderless:
                missing.add(topic["topic"])
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics have no leader yet: {sorted(missing)}")
        await asyncio.sleep(0.2)


async def _set_configs(admin: AIOKafkaAdminClient, specs: list[TopicSpec], prefix: str) -> None:
    """Give existing topics their configs (AlterConfigs sets the whole topic-level set)."""
    if not specs:
        return
    responses = await admin.alter_configs(
        [
            ConfigResource(ConfigResourceType.TOPIC, prefix + t.name, configs=dict(t.config))
            for t in specs
        ]
    )
    failures = [
        f"{resource[3]}: error {resource[0]} {resource[1] or ''}".strip()
        for response in responses
        for resource in response.resources
        if resource[0] != 0
    ]
    if failures:
        raise RuntimeError("could not set topic configs: " + "; ".join(failures))


async def create_topics(
    bootstrap: str,
    prefix: str = "",
    topics: Iterable[TopicSpec] = ALL_TOPICS,
    *,
    replication_factor: int = 1,
    wait: float = 60.0,
) -> list[str]:
    """Create ``prefix + name`` for every topic spec; an existing topic is fine.

    Returns the full topic names. Waits until every partition has a leader, so a
    producer can write as soon as this returns.
    """
    specs = list(topics)
    names = [prefix + t.name for t in specs]
    deadline = time.monotonic() + wait
    admin = admin_client(bootstrap, int(wait * 1000))
    await admin.start()
    try:
        response = await admin.create_topics(
            [
                NewTopic(
                    name=prefix + t.name,
                    num_partitions=t.partitions,
                    replication_factor=replication_factor,
                    topic_configs=dict(t.config),
                )
                for t in specs
            ],
            timeout_ms=int(wait * 1000),
        )
        failures = []
        existed = set()
        for error in response.topic_errors:
            topic, code = error[0], error[1]
            message = error[2] if len(error) > 2 else None
            if code == _TOPIC_ALREADY_EXISTS:
                existed.add(topic)
            elif code != 0:
                failures.append(f"{topic}: error {code} {message or ''}".strip())
        if failures:
            raise RuntimeError("could not create topics: " + "; ".join(failures))
        await _set_configs(admin, [t for t in specs if prefix + t.name in existed], prefix)
        await _wait_for_leaders(admin, set(names), deadline)
    finally:
        await admin.close()
    return names


def admin_client(bootstrap: str, request_timeout_ms: int = 30000) -> AIOKafkaAdminClient:
    """An admin client as the environment's admin principal (``shared.kafka``)."""
    return AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="yibao-topics",
        request_timeout_ms=request_timeout_ms,
        **admin_options(),
    )


def access_passwords(environ: Mapping[str, str]) -> dict[str, str]:
    """Username → password of the reader and each service, from the environment."""
    pairs = [("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD")] + [
        (f"KAFKA_{s.upper()}_USERNAME", f"KAFKA_{s.upper()}_PASSWORD")
        for s in kafka_access.SERVICES
    ]
    return {
        environ[user]: environ[password]
        for user, password in pairs
        if environ.get(user) and environ.get(password)
    }


async def grant_access(bootstrap: str, prefix: str = "") -> None:
    """The reader's and the services' principals and ACLs (on ``prefix`` topics)."""
    admin = admin_client(bootstrap)
    await admin.start()
    try:
        await kafka_access.grant_standard_access(
            admin, bootstrap, access_passwords(os.environ), prefix
        )
    finally:
        await admin.close()


async def add_admin(bootstrap: str) -> None:
    """The admin's SCRAM credential on a broker still open (``KAFKA_ADMIN_PASSWORD_NEW``):
    the one step of turning a storage formatted before authentication into a secured one."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="yibao-topics")
    await admin.start()
    try:
        password = os.environ["KAFKA_ADMIN_PASSWORD_NEW"]
        await kafka_access.upsert_users(admin, {kafka_access.ADMIN_USERNAME: password})
    finally:
        await admin.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap host:port")
    parser.add_argument("--prefix", default="", help="prefix for every topic name")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument(
        "--grant-access",
        action="store_true",
        help="also set the reader's and the services' principals and ACLs",
    )
    parser.add_argument("--add-admin-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.add_admin_only:
            asyncio.run(add_admin(args.bootstrap))
            print(f"admin principal added on {args.bootstrap}")
            return 0
        names = asyncio.run(create_topics(args.bootstrap, args.prefix, wait=args.timeout))
        if args.grant_access:
            asyncio.run(grant_access(args.bootstrap, args.prefix))
    except Exception as exc:
        print(f"topic creation on {args.bootstrap} failed: {exc!r}", file=sys.stderr)
        return 1
    granted = " (principals and ACLs set)" if args.grant_access else ""
    print(f"topics ready on {args.bootstrap}{granted}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
