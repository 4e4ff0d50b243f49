"""Tests of the containerised stack (issue 15): deploy/compose.yaml run for real, and the
e2e suite against containers. They start containers of the project's images, so they
run only when asked: ``YIBAO_CONTAINER_TESTS=1`` (``make test-containers``,
``make compose-check``); otherwise they are skipped, and ``make test`` stays as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from deploy import common, stack
from tests.e2e.client import Yibao
from tests.e2e.conftest import Namespace, SystemKeys, system_env
from tests.support import (
    Infra,
    docker_available,
    free_port,
    project_container,
    project_image,
)

APP_IMAGES = ("kafka", "postgres", "app")


def containers_wanted() -> None:
    """Skip unless asked for; fail (not skip) when asked but impossible."""
    if os.environ.get("YIBAO_CONTAINER_TESTS") != "1":
        pytest.skip("container tests run with YIBAO_CONTAINER_TESTS=1 (make test-containers)")
    if not docker_available():
        pytest.fail("no Docker engine answers: python3 deploy/docker_engine.py ensure")
    missing = [name for name in APP_IMAGES if project_image(name) is None]
    if missing:
        pytest.fail(f"the project's images are not built for today's code: make images ({missing})")


def compose_command() -> list[str]:
    """``docker compose`` (v2 plugin) when there, else Debian's ``docker-compose``."""
    probe = subprocess.run(
        ["docker", "compose", "version"],  # noqa: S607
        capture_output=True,
        check=False,
    )
    if probe.returncode == 0:
        return ["docker", "compose"]
    found = shutil.which("docker-compose")
    if not found:
        pytest.fail("no compose tool: python3 deploy/docker_engine.py ensure --compose")
    return [found]


# ------------------------------------------------------------------ the e2e system
#
# The e2e suite (tests/e2e) again, with every service a container of yibao/app (host
# network, free ports) and Kafka and PostgreSQL containers of the root conftest's Docker
# path: tests/containers/test_e2e_*.py import the e2e modules' tests, which find the
# ``system`` and ``yibao`` fixtures here instead of tests/e2e/conftest.py's. The
# environment is the e2e system's (tests/e2e/conftest.py), given to each container
# without the test process's own environment, and each service only its own Kafka
# principal (deploy.common.process_env).

SERVICE_MODULES = {
    "sms-gateway": "services.notify.gateway",
    "bank": "services.devbank",
    "payment": "services.payment",
    "ledger": "services.ledger",
    "risk": "services.risk",
    "notify": "services.notify",
}
# Only these of the test process's environment reach a container (with the e2e names).
PASSED_THROUGH = ("YIBAO_DB_APP_PASSWORD", "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM")
BANK_STORE = "/var/lib/yibao-bank/bank.sqlite3"


@dataclass
class ContainerSystem:
    """tests/e2e/conftest.py's ``System``, with containers: ``env``, ``ports``,
    ``client``, ``start(names)``, ``kill(name)`` (docker kill: SIGKILL), ``log``."""

    env: dict[str, str]
    ports: dict[str, int]
    image: str
    client: Yibao
    containers: dict[str, Any] = field(default_factory=dict)

    def start(self, names: list[str] | None = None, timeout: float = 90.0) -> None:
        """Start (or restart, keeping its filesystem: the bank's books) each service."""
        wanted = [n for n in SERVICE_MODULES if names is None or n in names]
        for name in wanted:
            existing = self.containers.get(name)
            if existing is not None:
                existing.get_wrapped_container().start()
                continue
            service = "bank-gateway" if name == "bank" else name
            container = project_container(
                self.image,
                common.process_env(self.env, service),
                name,
                command=["python", "-m", SERVICE_MODULES[name]],
            )
            self.containers[name] = container.start()
        for name in wanted:
            self._wait_ready(name, timeout)

    def _wait_ready(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not stack.healthz(self.ports[name]):
            wrapped = self.containers[name].get_wrapped_container()
            wrapped.reload()
            if wrapped.status == "exited" or time.monotonic() > deadline:
                raise common.StackError(
                    f"{name} did not answer GET /healthz on {self.ports[name]} "
                    f"({wrapped.status}):\n{self.log(name)[-4000:]}"
                )
            time.sleep(0.3)

    def kill(self, name: str) -> None:
        """docker kill: SIGKILL, no shutdown hooks, no offset commits, no goodbyes."""
        wrapped = self.containers[name].get_wrapped_container()
        wrapped.kill()
        wrapped.wait(timeout=30)

    def stop_all(self) -> None:
        for container in self.containers.values():
            with contextlib.suppress(Exception):
                container.stop()
        self.containers.clear()

    def log(self, name: str) -> str:
        container = self.containers.get(name)
        if container is None:
            return ""
        return bytes(container.get_wrapped_container().logs()).decode(errors="replace")

    def tails(self, names: Iterable[str], lines: int = 40) -> str:
        """The last ``lines`` log lines of each service, for a failure's message."""
        return "\n".join(
            f"--- {name} (last {lines} lines)\n" + "\n".join(self.log(name).splitlines()[-lines:])
            for name in names
        )


@pytest.fixture(scope="session")
def system(infra: Infra) -> Iterator[ContainerSystem]:
    containers_wanted()
    image = project_image("app")
    assert image is not None
    space = Namespace.new(infra)
    keys = SystemKeys.new()
    ports = {name: free_port() for name in SERVICE_MODULES}
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    env = {
        **{k: os.environ[k] for k in PASSED_THROUGH if os.environ.get(k)},
        **system_env(infra, space, keys, ports, bank_store=BANK_STORE),
    }
    client = Yibao(
        url["payment"],
        url["ledger"],
        url["sms-gateway"],
        keys.api_key,
        risk_url=url["risk"],
        bank_url=url["bank"],
        bureau_key=keys.bureau_key,
    )
    sys_ = ContainerSystem(env, ports, image, client)
    try:
        sys_.start()
    except common.StackError as exc:
        sys_.stop_all()
        pytest.fail(f"the e2e system in containers did not start:\n{exc}", pytrace=False)
    try:
        yield sys_
    finally:
        sys_.stop_all()


@pytest.fixture
def yibao(system: ContainerSystem) -> Yibao:
    return system.client
