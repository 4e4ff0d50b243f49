"""Root fixtures: real Kafka and PostgreSQL for every test that needs them.

The ``infra`` fixture finds infrastructure in this order (DESIGN.md "Infrastructure"):

1. ``KAFKA_BOOTSTRAP`` and ``DATABASE_URL`` in the environment;
2. testcontainers, when a Docker engine answers and has the project's own images
   (``make images``; ``YIBAO_NO_DOCKER=1`` skips this): Kafka and PostgreSQL from
   ``yibao/kafka`` and ``yibao/postgres``, host networking, free ports, removed at the
   end of the session. Nothing is pulled (Ryuk, the reaper, is disabled): an engine
   without the images, such as one that cannot reach a registry, falls through to
3. the local bring-up, ``deploy.stack.ensure_infra()`` (started if needed, and left
   running after the session).

It never skips: when none works, the session fails and says what is missing.
Either way the contract's topics (unprefixed) and the four service databases exist.

Kafka credentials: the local broker authenticates (SASL/SCRAM, ACLs); its stack.env
names go into this process's environment and the tests act as its admin principal
(``tests.support.use_kafka_credentials``), so every client made here, in-process
services included, authenticates through ``shared.kafka``. With addresses from the
environment, ``KAFKA_ADMIN_USERNAME``/``KAFKA_ADMIN_PASSWORD`` (and
``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_MECHANISM``) given with them are used the same
way; the broker of the ``yibao/kafka`` container authenticates like the local one
(fresh passwords per session, the read-only principal and its ACLs).
Tests that want isolation use ``topic_prefix`` / ``kafka_topics`` and ``new_database``;
the prefixed topics and fresh databases are removed when the session ends (set
``YIBAO_KEEP_TEST_DATA=1`` to keep them for a look after a failure).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from deploy import common, local_kafka, stack
from shared.topics import TopicNames
from tests.support import (
    Infra,
    create_database,
    create_topics,
    docker_available,
    ensure_databases,
    postgres_answers,
    random_prefix,
    remove_what_was_made,
    run_sync,
    start_project_infra,
    use_kafka_credentials,
)

# Tests run the services as development unless a test says otherwise (the e2e system
# uses "test"); unset, a service assumes production and refuses development keys.
os.environ.setdefault("YIBAO_ENVIRONMENT", "development")
# The services' runtime database roles (shared/db.py) are cluster-wide: one password
# for every test database, for servers that check passwords (testcontainers' does).
os.environ.setdefault("YIBAO_DB_APP_PASSWORD", secrets.token_urlsafe(24))

# tests/containers starts containers of the project's images (docker kill, compose): it
# is collected only by `make test-containers` (YIBAO_CONTAINER_TESTS=1), which .ci/run
# runs after `make test`; left out here rather than reported as 34 skips.
if os.environ.get("YIBAO_CONTAINER_TESTS") != "1":
    collect_ignore = ["containers"]

# testcontainers' reaper is an image from a registry: never pulled here (the Docker
# path removes its containers itself; tests/support.py "Docker path").
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")


def _prepare(infra: Infra) -> Infra:
    """Contract topics and service databases on servers we did not bring up ourselves."""
    run_sync(create_topics(infra.kafka_bootstrap, ""))
    run_sync(ensure_databases(infra.database_url, common.DATABASES))
    return infra


def _from_env() -> Infra | None:
    kafka = os.environ.get("KAFKA_BOOTSTRAP", "").strip()
    dsn = os.environ.get("DATABASE_URL", "").strip()
    if not (kafka and dsn):
        return None
    use_kafka_credentials(os.environ)
    if not local_kafka.kafka_healthy(kafka, timeout=10):
        pytest.fail(
            f"KAFKA_BOOTSTRAP={kafka} (from the environment) does not answer a Kafka "
            "metadata request; start it or unset KAFKA_BOOTSTRAP and DATABASE_URL"
        )
    if not run_sync(postgres_answers(dsn)):
        pytest.fail(
            "DATABASE_URL (from the environment) does not answer a query; start it "
            "or unset KAFKA_BOOTSTRAP and DATABASE_URL"
        )
    return _prepare(Infra(kafka, dsn))


def _from_containers(stack_: ExitStack) -> Infra | None:
    """Containers of the project's images; None when they are not built."""
    try:
        found = start_project_infra(stack_)
    except common.StackError as exc:
        pytest.fail(f"the project's containers did not start:\n{exc}", pytrace=False)
    if found is None:
        print(
            "\nyibao: a Docker engine answers but the project's images are not built "
            "(make images): using the local bring-up"
        )
        return None
    return _prepare(found)


def _from_local_stack() -> Infra:
    try:
        info = stack.ensure_infra()
    except common.StackError as exc:
        pytest.fail(
            "no Kafka/PostgreSQL for the tests: KAFKA_BOOTSTRAP/DATABASE_URL are not both "
            "set, no Docker engine answers, and the local bring-up (deploy/stack.py "
            f"ensure-infra) failed:\n{exc}",
            pytrace=False,
        )
    use_kafka_credentials(common.read_env_file(common.layout().stack_env))
    return Infra(info.kafka_bootstrap, info.database_url)


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    """Real Kafka and PostgreSQL: ``Infra(kafka_bootstrap, database_url)``."""
    with ExitStack() as containers:
        found = _from_env()
        if found is None and docker_available():
            found = _from_containers(containers)
        if found is None:
            found = _from_local_stack()
        yield found
        if os.environ.get("YIBAO_KEEP_TEST_DATA") != "1":  # keep them to debug a failure
            for problem in run_sync(remove_what_was_made()):
                print(f"\nyibao: test clean-up left something behind: {problem}")


@pytest.fixture
def topic_prefix() -> str:
    """A fresh topic namespace for this test, such as ``t1a2b3c4d.``."""
    return random_prefix()


@pytest.fixture
async def kafka_topics(infra: Infra, topic_prefix: str) -> TopicNames:
    """The contract's topics created under ``topic_prefix``; their names."""
    await create_topics(infra.kafka_bootstrap, topic_prefix)
    return TopicNames(topic_prefix)


@pytest.fixture
def new_database(infra: Infra) -> Callable[..., Awaitable[str]]:
    """Async factory: ``dsn = await new_database()`` makes a fresh ``t_<hex>`` database."""

    async def make(name: str | None = None) -> str:
        return await create_database(infra.database_url, name)

    return make


def pytest_report_header(config: Any) -> str:
    return "yibao: infra from env > docker (testcontainers) > deploy/stack.py ensure-infra"
