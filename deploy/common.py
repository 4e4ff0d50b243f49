"""What every part of the local bring-up shares: where things live, the env files.

Standard library only (see deploy/stack.py).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import shlex
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# pom.xml and log4j2.xml: always this code's own copies, whichever checkout is managed.
KAFKA_CONFIG_DIR = REPO / "deploy" / "kafka"

KAFKA_VERSION = os.environ.get("YIBAO_KAFKA_VERSION", "4.1.1")
KAFKA_HOST = "127.0.0.1"
KAFKA_PORT = 59092
KAFKA_CONTROLLER_PORT = 59093
PG_HOST = "127.0.0.1"
PG_PORT = 55432
PG_SUPERUSER = "postgres"

DEFAULT_KAFKA_BOOTSTRAP = f"{KAFKA_HOST}:{KAFKA_PORT}"

# Kafka principals (SASL/SCRAM-SHA-512; deploy/kafka_access.py grants their rights).
# Usernames are fixed; passwords are generated per checkout into secrets.env.
KAFKA_SECURITY_PROTOCOL = "SASL_PLAINTEXT"  # loopback only: no TLS locally
KAFKA_SASL_MECHANISM = "SCRAM-SHA-512"
KAFKA_ADMIN_USERNAME = "yibao-admin"  # super user: operators, topic creation, tests
KAFKA_READER_USERNAME = "yibao-reader"  # reads every topic, writes none: auditors
KAFKA_CONTROLLER_USERNAME = "yibao-controller"  # the broker to its controller (PLAIN)
KAFKA_SERVICES = ("payment", "risk", "ledger", "notify")  # one principal each
DEFAULT_DATABASE_URL = f"postgresql://{PG_SUPERUSER}@{PG_HOST}:{PG_PORT}/postgres"

DATABASES = ("yibao_payment", "yibao_ledger", "yibao_risk", "yibao_notify")

# (name, python module, port). The development gateways come first: notify needs the
# SMS gateway, payment and the ledger the bank.
SERVICES: list[tuple[str, str, int]] = [
    ("sms-gateway", "services.notify.gateway", 8009),
    ("bank-gateway", "services.devbank", 8010),
    ("webhook-receiver", "services.devhooks", 8011),
    ("payment", "services.payment", 8001),
    ("ledger", "services.ledger", 8002),
    ("risk", "services.risk", 8003),
    ("notify", "services.notify", 8004),
]

# The services that may run as several instances (YIBAO_<NAME>_INSTANCES, or
# YIBAO_INSTANCES for all of them): each consumes in its one consumer group, so the
# partitions split between the instances, and they share the service's port
# (SO_REUSEPORT, shared/runtime.py). The ledger is not among them: it is the journal's
# single writer (one partition of ledger.v1, one hash chain), always one instance.
SCALABLE_SERVICES = ("payment", "risk", "notify")
MAX_INSTANCES = 16  # the partitions of the smallest topic they share are fewer anyway

# stack.env keys for the service addresses.
SERVICE_URL_KEYS = {
    "payment": "PAYMENT_URL",
    "ledger": "LEDGER_URL",
    "risk": "RISK_URL",
    "notify": "NOTIFY_URL",
    "sms-gateway": "SMS_GATEWAY_URL",
    "bank-gateway": "BANK_GATEWAY_URL",
    "webhook-receiver": "WEBHOOK_RECEIVER_URL",
}

# The local bureau key is Beijing's bureau (YIBAO_BUREAU_API_KEYS is region:key,...).
LOCAL_BUREAU_REGION = "110000"

KAFKA_READY_TIMEOUT = 120.0
PG_READY_TIMEOUT = 60.0
SERVICE_READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


class StackError(RuntimeError):
    """A failure with a message meant for the person at the terminal."""


def log(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ instances


def instance_counts(env: Mapping[str, str]) -> dict[str, int]:
    """How many instances of each scalable service ``env`` asks for: its own
    ``YIBAO_<NAME>_INSTANCES``, else ``YIBAO_INSTANCES``, else 1. Any other service
    (the ledger, the gateways) runs once: ``YIBAO_LEDGER_INSTANCES`` above 1 is
    refused, as is a count that is not a whole number from 1 to MAX_INSTANCES."""
    ledger = env.get("YIBAO_LEDGER_INSTANCES", "").strip()
    if ledger not in ("", "1"):
        raise StackError(
            f"YIBAO_LEDGER_INSTANCES={ledger}: the ledger is the journal's single writer"
            " and runs as one instance; unset it (YIBAO_INSTANCES scales payment, risk"
            " and notify only)"
        )
    every = _count(env, "YIBAO_INSTANCES", 1)
    return {
        name: _count(env, f"YIBAO_{name.upper()}_INSTANCES", every) for name in SCALABLE_SERVICES
    }


def _count(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_INSTANCES:
        raise StackError(f"{key}={raw}: give a whole number of instances from 1 to {MAX_INSTANCES}")
    return int(raw)


def instance_name(name: str, index: int) -> str:
    """The name of a service's ``index``-th instance (from 1) in pid and log files:
    ``payment`` for the first (as with one instance), then ``payment-2`` ..."""
    return name if index == 1 else f"{name}-{index}"


def instance_names(name: str, pid_dir: Path) -> list[str]:
    """Every instance of ``name`` with a pid file in ``pid_dir``, the first first."""
    pattern = re.compile(rf"{re.escape(name)}-(\d+)\.pid")
    extra = sorted(
        (int(m.group(1)), path.stem)
        for path in (pid_dir.glob(f"{name}-*.pid") if pid_dir.is_dir() else ())
        if (m := pattern.fullmatch(path.name)) and int(m.group(1)) > 1
    )
    return [name, *(stem for _, stem in extra)]


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    """Where things live for one checkout."""

    repo: Path

    @property
    def run(self) -> Path:
        return self.repo / ".run"

    @property
    def kafka(self) -> Path:
        return self.run / "kafka"

    @property
    def pg_link(self) -> Path:
        return self.run / "pg"

    @property
    def logs(self) -> Path:
        return self.run / "logs"

    @property
    def pids(self) -> Path:
        return self.run / "pids"

    @property
    def stack_env(self) -> Path:
        return self.run / "stack.env"

    @property
    def secrets_env(self) -> Path:
        return self.run / "secrets.env"

    @property
    def kafka_pidfile(self) -> Path:
        return self.pids / "kafka.pid"

    @property
    def venv_python(self) -> Path:
        return self.repo / ".venv" / "bin" / "python"

    @property
    def fallback_root(self) -> Path:
        """Run dir outside the checkout, for when postgres cannot traverse the repo."""
        digest = hashlib.sha256(str(self.repo).encode()).hexdigest()[:12]
        return Path("/var/tmp") / f"yibao-{digest}"  # noqa: S108 - fixed, per-repo name


def layout(repo: Path | str | None = None) -> Layout:
    return Layout(Path(repo).resolve() if repo else REPO)


@contextlib.contextmanager
def stack_lock(lay: Layout) -> Iterator[None]:
    """Serialise bring-up/teardown of one checkout (make up vs. a test session)."""
    lay.run.mkdir(parents=True, exist_ok=True)
    with open(lay.run / "stack.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ------------------------------------------------------------------- env files


def render_env(values: Mapping[str, str]) -> str:
    """``KEY=value`` lines in shell syntax; values are quoted when they need it."""
    lines = []
    for key, value in values.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"not a valid environment variable name: {key!r}")
        lines.append(f"{key}={shlex.quote(str(value))}")
    return "\n".join(lines) + "\n"


def parse_env(text: str) -> dict[str, str]:
    """Read what ``render_env`` writes (and simple hand-written ``KEY=value`` files)."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        parts = shlex.split(line, comments=True)
        if not parts:
            continue
        key, sep, value = parts[0].partition("=")
        if sep:
            values[key] = value
    return values


def read_env_file(path: Path) -> dict[str, str]:
    try:
        return parse_env(path.read_text())
    except FileNotFoundError:
        return {}


def write_private(path: Path, text: str, mode: int = 0o644) -> None:
    """Write atomically with the given mode (the file never exists with wider rights)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def generate_secrets() -> dict[str, str]:
    def b64url(n: int) -> str:
        return base64.urlsafe_b64encode(secrets.token_bytes(n)).decode()

    return {
        "YIBAO_SEAL_KEY": b64url(32),  # AES-256-GCM key for sealed fields
        "YIBAO_INTERNAL_TOKEN": secrets.token_urlsafe(32),  # service-to-service calls
        "YIBAO_RECEIPT_SIGNING_KEY": b64url(32),  # Ed25519 seed for receipt signatures
        "YIBAO_HASH_KEY": b64url(32),  # key of the keyed hashes (HMAC) for look-ups
        "API_KEY": "yb_dev_" + secrets.token_urlsafe(24),  # caller key for the local API
        "API_KEY_2": "yb_dev_" + secrets.token_urlsafe(24),  # a second, unrelated caller
        "BUREAU_API_KEY": "yb_bureau_" + secrets.token_urlsafe(24),  # Beijing's bureau role
        "OPERATOR_API_KEY": "yb_operator_" + secrets.token_urlsafe(24),  # operator role
        # Kafka passwords: the admin, the read-only reader, the controller listener and
        # one per service (usernames: the KAFKA_*_USERNAME constants above).
        "KAFKA_ADMIN_PASSWORD": secrets.token_urlsafe(24),
        "KAFKA_SASL_PASSWORD": secrets.token_urlsafe(24),
        "KAFKA_CONTROLLER_PASSWORD": secrets.token_urlsafe(24),
        **{kafka_password_key(s): secrets.token_urlsafe(24) for s in KAFKA_SERVICES},
    }


# Keys of secrets.env that stack.env repeats (for callers: curl, tests, demos).
CALLER_KEYS = ("API_KEY", "API_KEY_2", "BUREAU_API_KEY", "OPERATOR_API_KEY")


def kafka_username(service: str) -> str:
    """The Kafka principal of a service (deploy/kafka_access.py gives its rights)."""
    return f"yibao-{service}"


def kafka_password_key(service: str) -> str:
    """The secrets.env key holding a service's Kafka password."""
    return f"KAFKA_{service.upper()}_PASSWORD"


def kafka_username_key(service: str) -> str:
    """The key naming a service's Kafka username in the environment given to
    ``start_services`` (``process_env`` turns it into that process's own)."""
    return f"KAFKA_{service.upper()}_USERNAME"


# Kafka credentials no service process gets (process_env removes them): the admin's,
# the reader's and the controller listener's.
KAFKA_PRIVILEGED_KEYS = (
    "KAFKA_ADMIN_USERNAME",
    "KAFKA_ADMIN_PASSWORD",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_CONTROLLER_PASSWORD",
)


# The Kafka names of stack.env (DESIGN.md "Contract additions: trust").
KAFKA_CLIENT_ENV_KEYS = (
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_ADMIN_USERNAME",
    "KAFKA_ADMIN_PASSWORD",
)


def kafka_stack_env(secrets_values: Mapping[str, str]) -> dict[str, str]:
    """What stack.env says about Kafka security (DESIGN.md "Contract additions: trust"):
    the protocol, the mechanism, the read-only principal and the admin principal."""
    return {
        "KAFKA_SECURITY_PROTOCOL": KAFKA_SECURITY_PROTOCOL,
        "KAFKA_SASL_MECHANISM": KAFKA_SASL_MECHANISM,
        "KAFKA_SASL_USERNAME": KAFKA_READER_USERNAME,
        "KAFKA_SASL_PASSWORD": secrets_values["KAFKA_SASL_PASSWORD"],
        "KAFKA_ADMIN_USERNAME": KAFKA_ADMIN_USERNAME,
        "KAFKA_ADMIN_PASSWORD": secrets_values["KAFKA_ADMIN_PASSWORD"],
    }


def kafka_admin_env(values: Mapping[str, str]) -> dict[str, str]:
    """From stack.env's Kafka names in ``values``: the environment that makes this
    process's clients (shared/kafka.py) the admin principal; ``{}`` for an open broker.
    For test tooling and benchmarks, which create and delete topics."""
    kafka = {k: values[k] for k in KAFKA_CLIENT_ENV_KEYS if values.get(k)}
    if not (kafka.get("KAFKA_ADMIN_USERNAME") and kafka.get("KAFKA_ADMIN_PASSWORD")):
        return {}
    kafka["YIBAO_KAFKA_USERNAME"] = kafka["KAFKA_ADMIN_USERNAME"]
    kafka["YIBAO_KAFKA_PASSWORD"] = kafka["KAFKA_ADMIN_PASSWORD"]
    return kafka


def kafka_service_principals(secrets_values: Mapping[str, str]) -> dict[str, str]:
    """Each service's Kafka username and password under ``KAFKA_<SERVICE>_USERNAME`` /
    ``_PASSWORD``, for ``start_services`` (each process gets only its own)."""
    values: dict[str, str] = {}
    for service in KAFKA_SERVICES:
        password = secrets_values.get(kafka_password_key(service))
        if password:
            values[kafka_username_key(service)] = kafka_username(service)
            values[kafka_password_key(service)] = password
    return values


def process_env(env: Mapping[str, str], service: str) -> dict[str, str]:
    """The environment of one service process: ``env`` without any Kafka credential
    but this service's own, as ``YIBAO_KAFKA_USERNAME`` / ``YIBAO_KAFKA_PASSWORD``
    (shared/kafka.py). A service without a principal in ``env`` (the development
    gateways; or no broker security at all) gets none."""
    per_service = {kafka_username_key(s) for s in KAFKA_SERVICES} | {
        kafka_password_key(s) for s in KAFKA_SERVICES
    }
    dropped = per_service | set(KAFKA_PRIVILEGED_KEYS)
    dropped |= {"YIBAO_KAFKA_USERNAME", "YIBAO_KAFKA_PASSWORD"}
    out = {k: v for k, v in env.items() if k not in dropped}
    if service in KAFKA_SERVICES:
        username = env.get(kafka_username_key(service))
        password = env.get(kafka_password_key(service))
        if username and password:
            out["YIBAO_KAFKA_USERNAME"] = username
            out["YIBAO_KAFKA_PASSWORD"] = password
        elif env.get("YIBAO_KAFKA_USERNAME") and env.get("YIBAO_KAFKA_PASSWORD"):
            # One principal given for every service (an operator's choice): kept.
            out["YIBAO_KAFKA_USERNAME"] = env["YIBAO_KAFKA_USERNAME"]
            out["YIBAO_KAFKA_PASSWORD"] = env["YIBAO_KAFKA_PASSWORD"]
    return out


def ensure_secrets(lay: Layout) -> dict[str, str]:
    """Generate ``.run/secrets.env`` once; keys missing from an older file are added."""
    current = read_env_file(lay.secrets_env)
    fresh = generate_secrets()
    missing = {k: v for k, v in fresh.items() if k not in current}
    if missing or not lay.secrets_env.exists():
        current.update(missing)
        write_private(lay.secrets_env, render_env(current), 0o600)
        log(f"wrote {lay.secrets_env} (new: {', '.join(missing)})")
    return current


def stack_env_values(
    kafka_bootstrap: str, database_url: str, secrets_values: Mapping[str, str]
) -> dict[str, str]:
    values = {"KAFKA_BOOTSTRAP": kafka_bootstrap, "DATABASE_URL": database_url}
    # Our broker authenticates (SASL/SCRAM, ACLs); one given by KAFKA_BOOTSTRAP comes
    # with its own settings in the caller's environment.
    if kafka_bootstrap == DEFAULT_KAFKA_BOOTSTRAP:
        values.update(kafka_stack_env(secrets_values))
    for name, _module, port in SERVICES:
        values[SERVICE_URL_KEYS[name]] = f"http://127.0.0.1:{port}"
    for key in CALLER_KEYS:
        values[key] = secrets_values[key]
    return values


def write_stack_env(lay: Layout, kafka_bootstrap: str, database_url: str) -> dict[str, str]:
    values = stack_env_values(kafka_bootstrap, database_url, ensure_secrets(lay))
    write_private(lay.stack_env, render_env(values), 0o600)  # holds keys and passwords
    return values


def caller_key_env(secrets_values: Mapping[str, str]) -> dict[str, str]:
    """The services' key settings, from the keys of secrets.env: both ordinary callers,
    the bureau key as Beijing's bureau, the operator key. A name set in secrets.env
    itself wins (a hand-written YIBAO_API_KEYS there is kept)."""
    callers = [secrets_values[k] for k in ("API_KEY", "API_KEY_2") if secrets_values.get(k)]
    bureau = secrets_values.get("BUREAU_API_KEY", "")
    derived = {
        "YIBAO_API_KEYS": ",".join(callers),
        "YIBAO_BUREAU_API_KEYS": f"{LOCAL_BUREAU_REGION}:{bureau}" if bureau else "",
        "YIBAO_OPERATOR_API_KEYS": secrets_values.get("OPERATOR_API_KEY", ""),
    }
    return {k: v for k, v in derived.items() if v and k not in secrets_values}


def service_env(lay: Layout) -> dict[str, str]:
    """os.environ + stack.env + secrets.env and the key settings derived from it: what
    every service process gets, through ``process_env`` (which keeps only that
    service's own Kafka credentials)."""
    env = dict(os.environ)
    env.update(read_env_file(lay.stack_env))
    secrets_values = read_env_file(lay.secrets_env)
    env.update(secrets_values)
    env.update(caller_key_env(secrets_values))
    # Kafka: each service process gets only its own principal (process_env).
    env.update(kafka_service_principals(secrets_values))
    env.setdefault("PYTHONUNBUFFERED", "1")
    # The local stack is a development stack, said explicitly: unset, services assume
    # production and refuse the development keys (shared/settings.py).
    env.setdefault("YIBAO_ENVIRONMENT", "development")
    # Integrators replay DESIGN.md's example (one phone) many times an hour locally.
    env.setdefault("RISK_PHONE_CODES_PER_HOUR", "60")
    # The development gateways keep what they received across restarts.
    env.setdefault("SMS_GATEWAY_STORE", str(lay.run / "sms" / "messages.sqlite3"))
    env.setdefault("BANK_GATEWAY_STORE", str(lay.run / "devbank" / "bank.sqlite3"))
    return env


@dataclass
class Started:
    """What an ensure/up call started itself (so `run` stops exactly that)."""

    kafka: bool = False
    postgres: bool = False
    services: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
