"""Who may do what on the broker: SCRAM principals and ACLs (DESIGN.md "Contract
additions: trust").

The broker authenticates every client with SASL/SCRAM-SHA-512 and authorizes it with
the StandardAuthorizer (nothing is allowed without an ACL). The principals:

- ``yibao-admin``: a super user (``super.users``), for operators, topic creation,
  ``yibao-dlq replay`` and black-box tests; the broker's own inter-broker principal.
- ``yibao-reader``: read-only: reads every topic, describes every group, writes none
  (auditors, ``yibao-audit``, ``yibao-dlq list``).
- one per service (``yibao-payment``, ``yibao-risk``, ``yibao-ledger``,
  ``yibao-notify``): writes only its own topic and the dead-letter topics of what it
  consumes, reads what it consumes, uses its consumer groups (names starting with
  the service name) and describes every topic (a group leader assigns partitions of
  every member's topics). Nothing writes ``payments.v1`` but payment, ``ledger.v1``
  but the ledger. Payment also writes ``person-keys.v1`` (issue 11), which the
  ledger, risk and notify read (and the reader principal: the keys on it are sealed).

ACLs name topics literally (``<prefix><topic>``): a test namespace (``YIBAO_TOPIC_PREFIX``)
gets its own ACLs for its own principals, removed with it; a prefixed pattern would
reach topics of other namespaces. aiokafka 0.14 has no admin call for ACLs or SCRAM
credentials (only their wire structs for ACLs), so the requests are built here from
aiokafka's protocol types and sent through its admin client.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeAlias

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Array,
    CompactArray,
    CompactBytes,
    CompactString,
    Int8,
    Int16,
    Int32,
    Schema,
    String,
    TaggedFields,
)

from deploy.common import KAFKA_ADMIN_USERNAME, KAFKA_READER_USERNAME, kafka_username
from deploy.local_kafka import Credentials, kafka_metadata
from shared.topics import LEDGER, NOTIFY, PAYMENTS, PERSON_KEYS, RISK, dlq

ADMIN_USERNAME = KAFKA_ADMIN_USERNAME
READER_USERNAME = KAFKA_READER_USERNAME
SCRAM_ITERATIONS = 8192  # Kafka's minimum for SCRAM-SHA-512 is 4096


@dataclass(frozen=True)
class ServiceAccess:
    """What one service does on Kafka: the topic it writes and the topics it reads
    (and any further topic it writes: ``also_writes``)."""

    service: str
    writes: str
    reads: tuple[str, ...]
    also_writes: tuple[str, ...] = ()

    @property
    def username(self) -> str:
        return kafka_username(self.service)


# From each service's composition root (services/<name>/__main__.py): the consumer's
# topics and the outbox's topic.
SERVICE_ACCESS: tuple[ServiceAccess, ...] = (
    ServiceAccess("payment", PAYMENTS, (RISK, LEDGER), also_writes=(PERSON_KEYS,)),
    ServiceAccess("risk", RISK, (PAYMENTS, PERSON_KEYS)),
    ServiceAccess("ledger", LEDGER, (PAYMENTS, PERSON_KEYS)),
    ServiceAccess("notify", NOTIFY, (PAYMENTS, RISK, LEDGER, PERSON_KEYS)),
)
SERVICES: tuple[str, ...] = tuple(a.service for a in SERVICE_ACCESS)


def service_access(service: str) -> ServiceAccess:
    for access in SERVICE_ACCESS:
        if access.service == service:
            return access
    raise KeyError(f"no Kafka access defined for service {service!r}")


# ------------------------------------------------------------------ ACL model


class Resource(IntEnum):
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4


class Pattern(IntEnum):
    ANY = 1
    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):
    ANY = 1
    READ = 3
    WRITE = 4
    DESCRIBE = 8


ALLOW = 3
ANY_PERMISSION = 1
ANY_RESOURCE = 1


@dataclass(frozen=True)
class Acl:
    """An ALLOW rule: ``principal`` may ``operation`` on the resource, from any host."""

    principal: str  # "User:<name>"
    resource: Resource
    name: str
    operation: Operation
    pattern: Pattern = Pattern.LITERAL


def user(name: str) -> str:
    return f"User:{name}"


def service_acls(access: ServiceAccess, username: str, prefix: str = "") -> list[Acl]:
    """The service writes its topic and the DLQs of what it reads, reads what it
    consumes, and uses the consumer groups named after it."""
    who = user(username)
    acls = [
        Acl(who, Resource.TOPIC, prefix + topic, Operation.WRITE)
        for topic in (access.writes, *access.also_writes)
    ]
    for topic in access.reads:
        acls.append(Acl(who, Resource.TOPIC, prefix + topic, Operation.READ))
        acls.append(Acl(who, Resource.TOPIC, prefix + dlq(topic), Operation.WRITE))
    acls.append(
        Acl(who, Resource.GROUP, access.service, Operation.READ, Pattern.PREFIXED),
    )
    # Consumer groups are named after the service, whatever the topic namespace, so
    # on a shared broker one group holds members of several namespaces (the local
    # stack, e2e sessions). The group's leader assigns every member's partitions and
    # must see them: describing a topic shows its name and partitions, never its data.
    acls.append(Acl(who, Resource.TOPIC, "*", Operation.DESCRIBE))
    return acls


def reader_acls(username: str = READER_USERNAME) -> list[Acl]:
    """Read every topic, describe every group; no write anywhere."""
    who = user(username)
    return [
        Acl(who, Resource.TOPIC, "*", Operation.READ),
        Acl(who, Resource.GROUP, "*", Operation.DESCRIBE),
    ]


# ------------------------------------------------------------- wire structs


# The fields of one ACL binding, as CreateAcls, DeleteAcls and its answer carry them.
_ACL_BINDING = (
    ("resource_type", Int8),
    ("resource_name", String("utf-8")),
    ("pattern_type", Int8),
    ("principal", String("utf-8")),
    ("host", String("utf-8")),
    ("operation", Int8),
    ("permission_type", Int8),
)


class _CreateAclsResponse(Response):  # type: ignore[misc]
    API_KEY = 30
    API_VERSION = 1
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("results", Array(("error_code", Int16), ("error_message", String("utf-8")))),
    )


class _CreateAclsStruct(RequestStruct):  # type: ignore[misc]
    API_KEY = 30
    API_VERSION = 1
    RESPONSE_TYPE = _CreateAclsResponse
    SCHEMA = Schema(
        (
            "creations",
            Array(
                *_ACL_BINDING,
            ),
        ),
    )


class _CreateAcls(Request[_CreateAclsStruct]):  # type: ignore[misc]
    API_KEY = 30

    def __init__(self, acls: Sequence[Acl]) -> None:
        self._rows = [
            (a.resource, a.name, a.pattern, a.principal, "*", a.operation, ALLOW) for a in acls
        ]

    def build(self, request_struct_class: type[_CreateAclsStruct]) -> _CreateAclsStruct:
        return request_struct_class(self._rows)


class _DeleteAclsResponse(Response):  # type: ignore[misc]
    API_KEY = 31
    API_VERSION = 1
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "results",
            Array(
                ("error_code", Int16),
                ("error_message", String("utf-8")),
                (
                    "matching",
                    Array(
                        ("error_code", Int16),
                        ("error_message", String("utf-8")),
                        *_ACL_BINDING,
                    ),
                ),
            ),
        ),
    )


class _DeleteAclsStruct(RequestStruct):  # type: ignore[misc]
    API_KEY = 31
    API_VERSION = 1
    RESPONSE_TYPE = _DeleteAclsResponse
    SCHEMA = Schema(
        (
            "filters",
            Array(
                *_ACL_BINDING,
            ),
        ),
    )


class _DeleteAcls(Request[_DeleteAclsStruct]):  # type: ignore[misc]
    """Every ACL of the given principals, whatever the resource."""

    API_KEY = 31

    def __init__(self, principals: Sequence[str]) -> None:
        self._rows = [
            (ANY_RESOURCE, None, Pattern.ANY, p, None, Operation.ANY, ANY_PERMISSION)
            for p in principals
        ]

    def build(self, request_struct_class: type[_DeleteAclsStruct]) -> _DeleteAclsStruct:
        return request_struct_class(self._rows)


SCRAM_SHA_512 = 2  # ScramMechanism in the AlterUserScramCredentials API


class _AlterScramResponse(Response):  # type: ignore[misc]
    API_KEY = 51
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "results",
            CompactArray(
                ("user", CompactString("utf-8")),
                ("error_code", Int16),
                ("error_message", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _AlterScramStruct(RequestStruct):  # type: ignore[misc]
    API_KEY = 51
    API_VERSION = 0
    FLEXIBLE_VERSION = True
    RESPONSE_TYPE = _AlterScramResponse
    SCHEMA = Schema(
        (
            "deletions",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("mechanism", Int8),
                ("tags", TaggedFields),
            ),
        ),
        (
            "upsertions",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("mechanism", Int8),
                ("iterations", Int32),
                ("salt", CompactBytes),
                ("salted_password", CompactBytes),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


_Row: TypeAlias = tuple[Any, ...]


class _AlterScram(Request[_AlterScramStruct]):  # type: ignore[misc]
    API_KEY = 51

    def __init__(self, upsertions: Sequence[_Row], deletions: Sequence[_Row]) -> None:
        self._upsertions = list(upsertions)
        self._deletions = list(deletions)

    def build(self, request_struct_class: type[_AlterScramStruct]) -> _AlterScramStruct:
        return request_struct_class(self._deletions, self._upsertions, {})


def salted_password(password: str, salt: bytes, iterations: int = SCRAM_ITERATIONS) -> bytes:
    """SCRAM's SaltedPassword (RFC 5802): PBKDF2 with HMAC-SHA-512."""
    return hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)


# ------------------------------------------------------------- operations


class AccessError(RuntimeError):
    """The broker refused to create or remove a principal or an ACL."""


async def _send(admin: AIOKafkaAdminClient, request: Request[Any]) -> Any:
    # aiokafka's admin client has no public call for these APIs; its request plumbing
    # (version negotiation, SASL connection) is reused as is.
    return await admin._send_request(request)


async def upsert_users(admin: AIOKafkaAdminClient, users: Mapping[str, str]) -> None:
    """Create or update SCRAM-SHA-512 credentials: username → password."""
    if not users:
        return
    rows: list[_Row] = []
    for name, password in users.items():
        salt = secrets.token_bytes(24)
        rows.append(
            (
                name,
                SCRAM_SHA_512,
                SCRAM_ITERATIONS,
                salt,
                salted_password(password, salt),
                {},
            )
        )
    response = await _send(admin, _AlterScram(rows, []))
    _raise_failures("SCRAM credentials", [(r[0], r[1], r[2]) for r in response.results])


async def wait_for_logins(bootstrap: str, users: Mapping[str, str], within: float = 30.0) -> None:
    """Until each user can log in: new credentials reach the broker from the controller
    a moment after the request returns."""
    deadline = time.monotonic() + within
    for name, password in users.items():
        while True:
            try:
                await asyncio.to_thread(kafka_metadata, bootstrap, 5.0, Credentials(name, password))
                break
            except PermissionError:
                if time.monotonic() > deadline:
                    raise AccessError(f"{name} still cannot log in after {within:.0f} s") from None
                await asyncio.sleep(0.1)


async def delete_users(admin: AIOKafkaAdminClient, names: Iterable[str]) -> None:
    """Remove the SCRAM-SHA-512 credentials of ``names`` (unknown names are fine)."""
    rows: list[_Row] = [(name, SCRAM_SHA_512, {}) for name in names]
    if not rows:
        return
    response = await _send(admin, _AlterScram([], rows))
    resource_not_found = 91
    _raise_failures(
        "SCRAM deletions",
        [(r[0], r[1], r[2]) for r in response.results if r[1] != resource_not_found],
    )


async def create_acls(admin: AIOKafkaAdminClient, acls: Sequence[Acl]) -> None:
    """Add ALLOW rules (adding one that exists is a no-op on the broker)."""
    if not acls:
        return
    response = await _send(admin, _CreateAcls(acls))
    _raise_failures(
        "ACLs",
        [
            (f"{a.principal} {a.operation.name} {a.name}", *r)
            for a, r in zip(acls, response.results, strict=True)
        ],
    )


async def delete_acls(admin: AIOKafkaAdminClient, principals: Sequence[str]) -> int:
    """Remove every ACL of ``principals``; returns how many went."""
    if not principals:
        return 0
    response = await _send(admin, _DeleteAcls(principals))
    _raise_failures(
        "ACL deletions",
        [(p, r[0], r[1]) for p, r in zip(principals, response.results, strict=True)],
    )
    return sum(len(r[2]) for r in response.results)


def _raise_failures(what: str, results: Iterable[tuple[str, int, str | None]]) -> None:
    failures = [
        f"{name}: error {code} {message or ''}".strip() for name, code, message in results if code
    ]
    if failures:
        raise AccessError(f"{what} refused: " + "; ".join(failures))


async def grant_standard_access(
    admin: AIOKafkaAdminClient,
    bootstrap: str,
    passwords: Mapping[str, str],
    prefix: str = "",
) -> None:
    """Principals and ACLs of a stack: ``passwords`` maps the reader's and each
    service's username to its password (the admin exists already: it is how we are
    connected). Idempotent: passwords are (re)set, existing ACLs stay. Returns once
    every principal can log in."""
    await upsert_users(admin, passwords)
    await wait_for_logins(bootstrap, passwords)
    acls = reader_acls() if READER_USERNAME in passwords else []
    for access in SERVICE_ACCESS:
        if access.username in passwords:
            acls += service_acls(access, access.username, prefix)
    await create_acls(admin, acls)
