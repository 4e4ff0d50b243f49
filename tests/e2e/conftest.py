"""A whole Yibao system for the e2e tests: every service a real process.

One system per session, isolated from anything else on the same servers: its own
databases, its own topic namespace (YIBAO_TOPIC_PREFIX), its own ports and fresh
secrets, and ``YIBAO_ENVIRONMENT=test`` so no development placeholder is accepted.
On a broker that authenticates, each service runs as its own Kafka principal, made for
this session with the ACLs of deploy/kafka_access.py on the session's topics.
Tests act only through HTTP (payment, ledger, risk's public read) and the SMS gateway.
"""

from __future__ import annotations

import base64
import os
import secrets
import socket
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from deploy import common, procs, stack
from tests.e2e.client import Yibao
from tests.support import (
    Infra,
    create_database,
    create_service_principals,
    create_topics,
    random_prefix,
    run_sync,
)

REPO = Path(__file__).resolve().parents[2]
# Short, so the tests of a bank that answers too late finish quickly.
BANK_DEADLINE_SECONDS = 8.0
WEBHOOK_TOLERANCE_SECONDS = 3.0
SERVICE_MODULES = {
    "sms-gateway": "services.notify.gateway",
    "bank": "services.devbank",
    "webhook-receiver": "services.devhooks",
    "payment": "services.payment",
    "ledger": "services.ledger",
    "risk": "services.risk",
    "notify": "services.notify",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


@dataclass(frozen=True)
class SystemKeys:
    """The API keys of a test system: two callers, a Beijing bureau, an operator."""

    api_key: str
    api_key_2: str
    bureau_key: str
    operator_key: str

    @classmethod
    def new(cls) -> SystemKeys:
        return cls(*("yb_test_" + secrets.token_urlsafe(24) for _ in range(4)))


@dataclass(frozen=True)
class Namespace:
    """A test system's own topics (a prefix), Kafka principals and databases."""

    prefix: str
    principals: dict[str, str]
    dsns: dict[str, str]

    @classmethod
    def new(cls, infra: Infra) -> Namespace:
        prefix = random_prefix()
        run_sync(create_topics(infra.kafka_bootstrap, prefix))
        # KAFKA_<SERVICE>_USERNAME/_PASSWORD: start_services gives each its own only.
        principals = run_sync(create_service_principals(infra.kafka_bootstrap, prefix))
        dsns = {
            svc: run_sync(create_database(infra.database_url))
            for svc in ("payment", "ledger", "risk", "notify")
        }
        return cls(prefix, principals, dsns)


def system_env(
    infra: Infra,
    space: Namespace,
    keys: SystemKeys,
    ports: Mapping[str, int],
    *,
    bank_store: str,
) -> dict[str, str]:
    """What every service of a test system gets, run as processes (here) or as
    containers (tests/containers): fresh keys, its own namespace and ports, and the
    rules the tests rely on."""
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    return {
        "YIBAO_ENVIRONMENT": "test",
        "YIBAO_LOG_JSON": "true",
        "KAFKA_BOOTSTRAP": infra.kafka_bootstrap,
        "DATABASE_URL": infra.database_url,
        "YIBAO_TOPIC_PREFIX": space.prefix,
        "YIBAO_SEAL_KEY": _key(),
        "YIBAO_HASH_KEY": _key(),
        "YIBAO_RECEIPT_SIGNING_KEY": _key(),
        "YIBAO_INTERNAL_TOKEN": secrets.token_urlsafe(32),
        "API_KEY": keys.api_key,
        "YIBAO_API_KEYS": f"{keys.api_key},{keys.api_key_2}",
        "YIBAO_BUREAU_API_KEYS": f"110000:{keys.bureau_key}",
        "YIBAO_OPERATOR_API_KEYS": keys.operator_key,
        "BANK_GATEWAY_PORT": str(ports["bank"]),
        "BANK_GATEWAY_URL": url["bank"],
        "BANK_GATEWAY_STORE": bank_store,
        "PAYMENT_BANK_DEADLINE_SECONDS": str(BANK_DEADLINE_SECONDS),
        # One test sends ten codes to one phone within a minute (the daily cap walk).
        "RISK_PHONE_CODES_PER_HOUR": "20",
        # The person-level rules, off by default until DESIGN.md's example agrees with
        # them (services/payment/config.py, services/risk/config.py): on here.
        "RISK_CAP_FOLLOWS_PERSON": "true",
        "PAYMENT_PREMIUM_SCHEDULE_ENFORCED": "true",
        "PAYMENT_PREMIUM_PAID_ONCE": "true",
        "PAYMENT_DSN": space.dsns["payment"],
        "LEDGER_DSN": space.dsns["ledger"],
        "RISK_DSN": space.dsns["risk"],
        "NOTIFY_DSN": space.dsns["notify"],
        "PAYMENT_PORT": str(ports["payment"]),
        "LEDGER_PORT": str(ports["ledger"]),
        "RISK_PORT": str(ports["risk"]),
        "NOTIFY_PORT": str(ports["notify"]),
        "SMS_GATEWAY_PORT": str(ports["sms-gateway"]),
        "SMS_GATEWAY_URL": url["sms-gateway"],
        "RISK_URL": url["risk"],
        "PAYMENT_RISK_URL": url["risk"],
        "PAYMENT_URL": url["payment"],
        "LEDGER_URL": url["ledger"],
        "NOTIFY_URL": url["notify"],
        **space.principals,
    }


@dataclass
class System:
    """``instances``: how many processes of each service (payment, risk, notify may run
    several, as ``make up`` with YIBAO_INSTANCES does); pid and log files name them
    ``payment``, ``payment-2`` ..."""

    env: dict[str, str]
    ports: dict[str, int]
    workdir: Path
    client: Yibao
    started: list[str] = field(default_factory=list)
    instances: dict[str, int] = field(default_factory=dict)

    def table(self, names: list[str] | None = None) -> list[tuple[str, str, int]]:
        return [
            (n, SERVICE_MODULES[n], self.ports[n])
            for n in SERVICE_MODULES
            if names is None or n in names
        ]

    def pidfile(self, name: str) -> Path:
        """The pid file of a service or of one instance (``payment-2``)."""
        return self.workdir / "pids" / f"{name}.pid"

    def instance_names(self, name: str) -> list[str]:
        """The instances of service ``name`` (``[name]`` with one)."""
        return [common.instance_name(name, i) for i in range(1, self.instances.get(name, 1) + 1)]

    def start(self, names: list[str] | None = None) -> None:
        stack.start_services(
            self.env,
            names,
            self.workdir / "logs",
            self.workdir / "pids",
            repo=REPO,
            services=self.table(names),
            instances=self.instances,
        )

    def kill(self, name: str) -> None:
        """kill -9 (of a service, or of one instance): no shutdown hooks, no offset
        commits, no goodbyes."""
        pid = procs.read_pid(self.pidfile(name))
        assert pid is not None, f"{name} is not running"
        os.kill(pid, 9)
        procs.stop_process(self.pidfile(name), expect=_module_of(name))

    def stop_all(self) -> None:
        for name, module in SERVICE_MODULES.items():
            for instance in common.instance_names(name, self.workdir / "pids"):
                procs.stop_process(self.pidfile(instance), expect=module)

    def log(self, name: str) -> str:
        path = self.workdir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _module_of(instance: str) -> str:
    """The module of a service or of one of its instances (``payment-2``)."""
    if instance in SERVICE_MODULES:
        return SERVICE_MODULES[instance]
    return SERVICE_MODULES[instance.rsplit("-", 1)[0]]


@pytest.fixture(scope="session")
def system(infra: Infra) -> Iterator[System]:
    with running_system(infra) as sys_:
        yield sys_


@contextmanager
def running_system(
    infra: Infra,
    extra_env: Mapping[str, str] | None = None,
    *,
    instances: Mapping[str, int] | None = None,
) -> Iterator[System]:
    """A whole system started, stopped on leaving; ``extra_env`` goes to every service
    (tests/e2e/test_tracing.py starts one of its own with tracing on); ``instances``
    runs that many processes of a service (tests/e2e/test_instances.py: payment, risk
    and notify twice)."""
    space = Namespace.new(infra)
    keys = SystemKeys.new()
    ports = {name: _free_port() for name in SERVICE_MODULES}
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    workdir = Path(tempfile.mkdtemp(prefix="yibao-e2e-"))
    env = {
        **os.environ,
        **system_env(infra, space, keys, ports, bank_store=str(workdir / "bank.sqlite3")),
        "WEBHOOK_RECEIVER_PORT": str(ports["webhook-receiver"]),
        "WEBHOOK_RECEIVER_URL": url["webhook-receiver"],
        # Replays are refused past this (the receiver's webhook-timestamp tolerance).
        "WEBHOOK_RECEIVER_TOLERANCE_SECONDS": str(WEBHOOK_TOLERANCE_SECONDS),
        # Retries within a test's patience: 0.5 s doubled, at most 2 s apart.
        "PAYMENT_WEBHOOK_RETRY_BASE_SECONDS": "0.5",
        "PAYMENT_WEBHOOK_RETRY_MAX_SECONDS": "2",
        "PAYMENT_WEBHOOK_POLL_INTERVAL_SECONDS": "0.2",
        # Load shedding (default 500 in flight): a lower bound, so that test_overload
        # reaches it with fewer payments; above what any other test keeps in flight.
        "PAYMENT_OVERLOAD_MAX_IN_FLIGHT": "150",
        **(extra_env or {}),
    }
    client = Yibao(
        url["payment"],
        url["ledger"],
        url["sms-gateway"],
        keys.api_key,
        risk_url=url["risk"],
        bank_url=url["bank"],
        bureau_key=keys.bureau_key,
        webhook_url=url["webhook-receiver"],
    )
    sys_ = System(env, ports, workdir, client, instances=dict(instances or {}))
    try:
        sys_.start()
    except common.StackError as exc:
        sys_.stop_all()
        pytest.fail(f"the e2e system did not start:\n{exc}", pytrace=False)
    try:
        yield sys_
    finally:
        sys_.stop_all()


@pytest.fixture
def yibao(system: System) -> Yibao:
    return system.client
