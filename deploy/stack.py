"""Local bring-up of the Yibao stack without Docker: Kafka, PostgreSQL and the services.

    python deploy/stack.py ensure-infra   # Kafka + PostgreSQL up and ready (idempotent)
    python deploy/stack.py up             # infra + services in the background
    python deploy/stack.py run            # the same in the foreground; Ctrl-C stops it
    python deploy/stack.py down           # stop everything started from this checkout
    python deploy/stack.py status
    python deploy/stack.py clean          # down, then remove .run/
    python deploy/stack.py prepare        # only install: Kafka jars, PostgreSQL binaries

Standard library only, so it runs before the virtualenv exists; the one step that
needs aiokafka (topic creation) runs ``.venv/bin/python -m deploy.topics``.

Everything at run time lives under ``<repo>/.run/``:

    .run/kafka/    server.properties, cluster.id, data/, server.log, console.log
    .run/pg/       PostgreSQL cluster (data/, sock/, postgres.log); a symlink into
                   /var/tmp/yibao-<hash>/pg when the postgres user cannot reach the repo
    .run/logs/     one log per service
    .run/pids/     one pid file per process we started
    .run/stack.env addresses of every part (shell syntax)
    .run/secrets.env  keys generated once for this checkout (mode 600)

Rules worth knowing:

* ``KAFKA_BOOTSTRAP`` / ``DATABASE_URL`` set in the environment to something other
  than the local defaults mean "use that server": we start nothing for it, but still
  create the topics and databases there.
* A port already answering as a healthy Kafka / PostgreSQL that we did not start (for
  example the stack of another clone of this repo) is reused, not fought over. A port
  taken by anything else is an error that names the port and its owner.
* Every wait has a timeout; a failure points at the log to read.
"""

# This script drives trusted local tools (java, mvn, pg_ctl, psql, ss) by design.
# ruff: noqa: S603, S607

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import glob
import hashlib
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
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
DEFAULT_DATABASE_URL = f"postgresql://{PG_SUPERUSER}@{PG_HOST}:{PG_PORT}/postgres"

DATABASES = ("yibao_payment", "yibao_ledger", "yibao_risk", "yibao_notify")

# (name, python module, port). The SMS gateway comes first: notify needs it.
SERVICES: list[tuple[str, str, int]] = [
    ("sms-gateway", "services.notify.gateway", 8009),
    ("payment", "services.payment", 8001),
    ("ledger", "services.ledger", 8002),
    ("risk", "services.risk", 8003),
    ("notify", "services.notify", 8004),
]

# stack.env keys for the service addresses.
SERVICE_URL_KEYS = {
    "payment": "PAYMENT_URL",
    "ledger": "LEDGER_URL",
    "risk": "RISK_URL",
    "notify": "NOTIFY_URL",
    "sms-gateway": "SMS_GATEWAY_URL",
}

KAFKA_READY_TIMEOUT = 120.0
PG_READY_TIMEOUT = 60.0
SERVICE_READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


class StackError(RuntimeError):
    """A failure with a message meant for the person at the terminal."""


def log(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


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
    }


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
    for name, _module, port in SERVICES:
        values[SERVICE_URL_KEYS[name]] = f"http://127.0.0.1:{port}"
    values["API_KEY"] = secrets_values["API_KEY"]
    return values


def write_stack_env(lay: Layout, kafka_bootstrap: str, database_url: str) -> dict[str, str]:
    values = stack_env_values(kafka_bootstrap, database_url, ensure_secrets(lay))
    write_private(lay.stack_env, render_env(values), 0o644)
    return values


def service_env(lay: Layout) -> dict[str, str]:
    """os.environ + stack.env + secrets.env: what every service process gets."""
    env = dict(os.environ)
    env.update(read_env_file(lay.stack_env))
    env.update(read_env_file(lay.secrets_env))
    env.setdefault("PYTHONUNBUFFERED", "1")
    # The development SMS gateway keeps what it received across restarts.
    env.setdefault("SMS_GATEWAY_STORE", str(lay.run / "sms" / "messages.jsonl"))
    return env


# --------------------------------------------------------------- processes, ports


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) counts as dead.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def proc_cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def running_pid(pidfile: Path, expect: str | None = None) -> int | None:
    """The pid in ``pidfile`` if that process is alive (and its command line contains
    ``expect``, which guards against a recycled pid); otherwise None."""
    pid = read_pid(pidfile)
    if pid is None or not pid_alive(pid):
        return None
    if expect is not None and expect not in proc_cmdline(pid):
        return None
    return pid


def stop_process(
    pidfile: Path | str, timeout: float = STOP_TIMEOUT, expect: str | None = None
) -> bool:
    """Stop the process (and its process group, when it leads one) named in ``pidfile``.

    SIGTERM, then SIGKILL after ``timeout``. Removes the pid file. Returns True when a
    live process was stopped; a missing file or a dead process is fine (idempotent).
    """
    pidfile = Path(pidfile)
    pid = running_pid(pidfile, expect)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return False

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            # Our children are started with start_new_session=True: pid == pgid, and
            # signalling the group also stops anything they forked.
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    send(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.1)
    if pid_alive(pid):
        log(f"{pidfile.stem} (pid {pid}) did not stop in {timeout:.0f}s; killing it")
        send(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while pid_alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
    _reap(pid)
    pidfile.unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    """Collect an exited child of ours so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``port`` (SO_REUSEADDR: TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def port_owner(port: int) -> str:
    """Who listens on ``port``, as far as ``ss -ltnp`` tells (empty when unknown)."""
    if not shutil.which("ss"):
        return ""
    try:
        out = subprocess.run(
            ["ss", "-H", "-ltnp", f"sport = :{port}"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    owners = re.findall(r'\("([^"]+)",pid=(\d+)', out)
    if owners:
        return ", ".join(
            f"{name} (pid {pid}: {_short(proc_cmdline(int(pid)))})"
            for name, pid in dict.fromkeys(owners)
        )
    return out.strip().splitlines()[0] if out.strip() else ""


def _short(cmdline: str, limit: int = 160) -> str:
    """A command line cut in the middle: its program and its (telling) last arguments."""
    cmdline = cmdline.strip()
    if len(cmdline) <= limit:
        return cmdline
    return cmdline[: limit // 3] + " ... " + cmdline[-(2 * limit) // 3 :]


def port_taken_error(port: int, what: str) -> StackError:
    owner = port_owner(port)
    who = f" by {owner}" if owner else " by another process (ss shows no owner)"
    return StackError(
        f"port {port} (needed for {what}) is already taken{who}, and it does not answer "
        f"as a healthy {what}. Stop that process or free the port, then retry."
    )


def port_owner_pids(port: int) -> list[int]:
    """Pids listening on ``port`` according to ``ss -ltnp`` (empty when unknown)."""
    if not shutil.which("ss"):
        return []
    try:
        out = subprocess.run(
            ["ss", "-H", "-ltnp", f"sport = :{port}"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return sorted({int(pid) for pid in re.findall(r"pid=(\d+)", out)})


# Command-line marks of the processes a yibao checkout's stack.py starts.
_OTHER_STACK_MARKS = {
    "Kafka": ("kafka.Kafka", "/.run/kafka/server.properties"),
    "PostgreSQL": ("postgres", "-D"),
}


def takeover_wanted() -> bool:
    """In CI (``CI=true``) or with ``YIBAO_STACK_TAKEOVER=1``, a stack left running by
    another checkout of this repo is stopped instead of reused: CI must test its own
    broker and database (some tests stop and restart them)."""
    flag = os.environ.get("YIBAO_STACK_TAKEOVER") or os.environ.get("CI") or ""
    return flag.lower() in ("1", "true", "yes")


def other_stack_pid(port: int, what: str) -> int | None:
    """The pid on ``port`` when it is a Kafka/PostgreSQL started by another yibao
    checkout's stack.py (recognised by its command line), else None."""
    for pid in port_owner_pids(port):
        cmdline = proc_cmdline(pid)
        if all(mark in cmdline for mark in _OTHER_STACK_MARKS[what]) and (
            what == "Kafka" or "/.run/pg/" in cmdline or "/yibao-" in cmdline
        ):
            return pid
    return None


def take_over(port: int, what: str) -> bool:
    """Stop another checkout's Kafka/PostgreSQL on ``port`` when takeover is wanted.

    PostgreSQL gets SIGINT (its "fast" shutdown), Kafka SIGTERM; SIGKILL after the
    stop timeout. Returns True when the port was freed.
    """
    if not takeover_wanted():
        return False
    pid = other_stack_pid(port, what)
    if pid is None:
        return False
    log(
        f"CI: stopping the {what} left by another checkout on port {port} (pid {pid}): "
        f"{_short(proc_cmdline(pid))}"
    )
    os.kill(pid, signal.SIGINT if what == "PostgreSQL" else signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not port_free(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    return port_free(port)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])


# ----------------------------------------------------------------------- Kafka


def kafka_cache_dir(version: str = KAFKA_VERSION) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "yibao" / f"kafka-{version}"


def fetch_kafka_jars(lay: Layout, version: str = KAFKA_VERSION) -> Path:
    """Kafka jars + runtime deps in the shared cache, fetched with Maven once.

    A ``.complete`` marker is written last; a directory without it (an interrupted
    download) is fetched again.
    """
    cache = kafka_cache_dir(version)
    libs = cache / "libs"
    marker = cache / ".complete"
    if marker.exists() and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise StackError(
            "Maven (mvn) is needed once to fetch the Kafka jars; install it "
            "(Debian: apt-get install -y maven) and retry"
        )
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    log(f"fetching Kafka {version} jars with Maven into {libs} (once per machine)")
    started = time.monotonic()
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(KAFKA_CONFIG_DIR / "pom.xml"),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={partial}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0 or not any(partial.glob("kafka_2.13-*.jar")):
        raise StackError(
            f"Maven could not fetch the Kafka {version} jars (exit {proc.returncode}):\n"
            + (proc.stdout + proc.stderr)[-3000:]
        )
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)
    marker.write_text(f"kafka {version}\n")
    log(f"Kafka jars fetched in {time.monotonic() - started:.1f}s")
    return libs


def render_server_properties(
    data_dir: Path | str,
    *,
    host: str = KAFKA_HOST,
    port: int = KAFKA_PORT,
    controller_port: int = KAFKA_CONTROLLER_PORT,
) -> str:
    """server.properties of the single-node KRaft broker+controller."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "controller.quorum.bootstrap.servers": f"{host}:{controller_port}",
        "log.dirs": str(data_dir),
        # Topics are created explicitly (deploy/topics.py), never by a stray client.
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        # Single node: internal topics cannot have more than one replica.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # Consumers in tests join and leave quickly: no waiting for more members.
        "group.initial.rebalance.delay.ms": "0",
        # The cleaner's default 128 MiB buffer is pointless for a dev broker (the
        # broker insists on more than 1 MiB per cleaner thread).
        "log.cleaner.dedupe.buffer.size": "2097152",
        "num.recovery.threads.per.data.dir": "1",
    }
    header = "# Written by deploy/stack.py; regenerated on every start.\n"
    return header + "".join(f"{k}={v}\n" for k, v in settings.items())


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, base64url without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _kafka_request(
    sock: socket.socket, api_key: int, version: int, corr: int, body: bytes
) -> bytes:
    client_id = b"yibao-stack"
    header = struct.pack(">hhih", api_key, version, corr, len(client_id)) + client_id
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)

    def recv_exact(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            buf += chunk
        return buf

    (size,) = struct.unpack(">i", recv_exact(4))
    data = recv_exact(size)
    (got_corr,) = struct.unpack(">i", data[:4])
    if got_corr != corr:
        raise ConnectionError("unexpected correlation id")
    return data[4:]


def kafka_metadata(bootstrap: str, timeout: float = 5.0) -> dict[str, object]:
    """A real Kafka metadata round trip (ApiVersions, then Metadata) in plain sockets.

    Returns ``{"cluster_id", "controller_id", "brokers": [(id, host, port)]}``; raises
    OSError/ConnectionError/ValueError when the server is not a working Kafka broker.
    """
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.settimeout(timeout)
        # ApiVersions v0: every broker version answers it.
        data = _kafka_request(sock, 18, 0, 1, b"")
        (error,) = struct.unpack(">h", data[:2])
        if error != 0:
            raise ValueError(f"ApiVersions error {error}")
        (count,) = struct.unpack(">i", data[2:6])
        ranges = {}
        for i in range(count):
            key, lo, hi = struct.unpack(">hhh", data[6 + 6 * i : 12 + 6 * i])
            ranges[key] = (lo, hi)
        if 3 not in ranges:
            raise ValueError("broker does not offer Metadata")
        lo, hi = ranges[3]
        version = max(lo, 4)
        if version > min(hi, 8):  # v9+ are "flexible" encodings we do not speak
            raise ValueError(f"no common Metadata version (broker offers {lo}..{hi})")
        # Metadata request v4..v8: topics = null (all), allow_auto_topic_creation = false
        body = struct.pack(">ib", -1, 0)
        if version >= 8:
            body += struct.pack(">bb", 0, 0)  # include cluster/topic authorized ops
        data = _kafka_request(sock, 3, version, 2, body)
    pos = 4  # throttle_time_ms
    (nbrokers,) = struct.unpack(">i", data[pos : pos + 4])
    pos += 4
    brokers = []
    for _ in range(nbrokers):
        (node_id, hlen) = struct.unpack(">ih", data[pos : pos + 6])
        pos += 6
        bhost = data[pos : pos + hlen].decode()
        pos += hlen
        (bport, rlen) = struct.unpack(">ih", data[pos : pos + 6])
        pos += 6 + max(rlen, 0)
        brokers.append((node_id, bhost, bport))
    (clen,) = struct.unpack(">h", data[pos : pos + 2])
    pos += 2
    cluster_id = data[pos : pos + clen].decode() if clen >= 0 else None
    pos += max(clen, 0)
    (controller_id,) = struct.unpack(">i", data[pos : pos + 4])
    if not brokers:
        raise ValueError("broker answered metadata with no brokers yet")
    return {"cluster_id": cluster_id, "controller_id": controller_id, "brokers": brokers}


def kafka_healthy(bootstrap: str, timeout: float = 5.0) -> bool:
    try:
        meta = kafka_metadata(bootstrap, timeout)
    except (OSError, ValueError, struct.error, UnicodeDecodeError):
        return False
    controller = meta["controller_id"]
    return isinstance(controller, int) and controller >= 0


def _kafka_marker(lay: Layout) -> str:
    """A string only our broker's command line contains (guards recycled pids)."""
    return str(lay.kafka / "server.properties")


def kafka_running_pid(lay: Layout) -> int | None:
    return running_pid(lay.kafka_pidfile, _kafka_marker(lay))


@dataclass
class Started:
    """What an ensure/up call started itself (so `run` stops exactly that)."""

    kafka: bool = False
    postgres: bool = False
    services: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def ensure_kafka(lay: Layout, started: Started, timeout: float = KAFKA_READY_TIMEOUT) -> str:
    """Make sure our local broker answers; start (or restart) it when needed."""
    bootstrap = DEFAULT_KAFKA_BOOTSTRAP
    pid = kafka_running_pid(lay)
    if pid is not None:
        _wait_kafka(lay, bootstrap, pid, timeout)
        return bootstrap
    lay.kafka_pidfile.unlink(missing_ok=True)

    for port in (KAFKA_PORT, KAFKA_CONTROLLER_PORT):
        if not port_free(port) and not take_over(port, "Kafka"):
            if port == KAFKA_PORT and kafka_healthy(bootstrap):
                log(
                    f"Kafka on {bootstrap} answers but was not started from this checkout "
                    f"({port_owner(port) or 'owner unknown'}); reusing it"
                )
                return bootstrap
            raise port_taken_error(port, "Kafka")

    libs = fetch_kafka_jars(lay)
    lay.kafka.mkdir(parents=True, exist_ok=True)
    lay.pids.mkdir(parents=True, exist_ok=True)
    data = lay.kafka / "data"
    props = lay.kafka / "server.properties"
    props.write_text(
        render_server_properties(
            data, host=KAFKA_HOST, port=KAFKA_PORT, controller_port=KAFKA_CONTROLLER_PORT
        )
    )
    java = shutil.which("java")
    if not java:
        raise StackError(
            "java (17 or newer) is needed to run Kafka; install it "
            "(Debian: apt-get install -y openjdk-17-jre-headless)"
        )
    classpath = f"{libs}/*"
    if not (data / "meta.properties").exists():
        id_file = lay.kafka / "cluster.id"
        if not id_file.exists():
            id_file.write_text(new_cluster_id() + "\n")
        cluster_id = id_file.read_text().strip()
        fmt = subprocess.run(
            [
                java,
                "-cp",
                classpath,
                "-Dlog4j2.configurationFile=" + str(KAFKA_CONFIG_DIR / "log4j2.xml"),
                f"-Dyibao.kafka.log={lay.kafka / 'format.log'}",
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id,
                "-c",
                str(props),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if fmt.returncode != 0:
            raise StackError(f"formatting Kafka storage failed:\n{fmt.stdout}{fmt.stderr}")

    cmd = [
        java,
        "-Xms512m",
        "-Xmx512m",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={KAFKA_CONFIG_DIR / 'log4j2.xml'}",
        f"-Dyibao.kafka.log={lay.kafka / 'server.log'}",
        "-cp",
        classpath,
        "kafka.Kafka",
        str(props),
    ]
    log("starting Kafka")
    t0 = time.monotonic()
    with open(lay.kafka / "console.log", "ab") as console:
        proc = subprocess.Popen(
            cmd,
            cwd=lay.kafka,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    lay.kafka_pidfile.write_text(f"{proc.pid}\n")
    started.kafka = True
    _wait_kafka(lay, bootstrap, proc.pid, timeout)
    started.timings["kafka_start"] = time.monotonic() - t0
    log(f"Kafka ready on {bootstrap} in {started.timings['kafka_start']:.1f}s (pid {proc.pid})")
    return bootstrap


def _wait_kafka(lay: Layout, bootstrap: str, pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if kafka_healthy(bootstrap, timeout=3):
            return
        _reap(pid)
        if not pid_alive(pid):
            lay.kafka_pidfile.unlink(missing_ok=True)
            raise StackError(
                f"Kafka exited during start-up; see {lay.kafka / 'server.log'} and "
                f"{lay.kafka / 'console.log'}. Last lines:\n"
                + log_tail(lay.kafka / "server.log", 15)
                + "\n"
                + log_tail(lay.kafka / "console.log", 15)
            )
        if time.monotonic() > deadline:
            raise StackError(
                f"Kafka (pid {pid}) did not answer a metadata request on {bootstrap} within "
                f"{timeout:.0f}s; see {lay.kafka / 'server.log'}. Last lines:\n"
                + log_tail(lay.kafka / "server.log", 20)
            )
        time.sleep(0.3)


def create_topics(lay: Layout, bootstrap: str, prefix: str = "") -> None:
    """Create the contract's topics (idempotent) through the venv's aiokafka."""
    python = python_with_aiokafka(lay)
    cmd = [python, "-m", "deploy.topics", "--bootstrap", bootstrap]
    if prefix:
        cmd += ["--prefix", prefix]
    # Run from the checkout holding this code (deploy.topics, shared.topics), which is
    # also the managed one unless a caller passes another repo (tests do).
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise StackError(f"creating topics on {bootstrap} failed:\n{proc.stdout}{proc.stderr}")
    log(proc.stdout.strip())


def python_with_aiokafka(lay: Layout) -> str:
    for candidate in (lay.venv_python, layout(REPO).venv_python):
        if candidate.exists():
            return str(candidate)
    with contextlib.suppress(ImportError):
        import aiokafka  # noqa: F401

        return sys.executable
    raise StackError(f"{lay.venv_python} is missing: run `make venv` first")


# ------------------------------------------------------------------ PostgreSQL


def pg_bindir(install: bool = True) -> Path:
    """The newest Debian PostgreSQL bin dir; installs the package when there is none."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(re.sub(r"\D", "", p.split("/")[4]) or 0),
    )
    if found:
        return Path(found[-1]).parent
    if not install:
        raise StackError("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin")
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise StackError(
            "PostgreSQL is not installed; install it (Debian: "
            "sudo apt-get install -y postgresql) and retry"
        )
    log("installing PostgreSQL from the Debian packages (apt-get, once per machine)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
    ):
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=900, check=False
        )
        if proc.returncode != 0:
            raise StackError(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return pg_bindir(install=False)


def _as_postgres(cmd: Sequence[str]) -> list[str]:
    """initdb/pg_ctl refuse to run as root: run them as the postgres user."""
    if os.geteuid() != 0:
        return list(cmd)
    if shutil.which("runuser"):
        return ["runuser", "-u", PG_SUPERUSER, "--", *cmd]
    return ["su", PG_SUPERUSER, "-s", "/bin/sh", "-c", shlex.join(cmd)]


def _pg_owner() -> tuple[int, int]:
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    entry = pwd.getpwnam(PG_SUPERUSER)
    return entry.pw_uid, entry.pw_gid


def pg_root(lay: Layout) -> Path:
    """The cluster's directory, reached through ``.run/pg`` (maybe a symlink).

    The postgres user must be able to traverse the path; when it cannot (a repo under
    /root, say), the cluster goes to /var/tmp/yibao-<hash>/pg and .run/pg links there.
    """
    link = lay.pg_link
    if link.is_symlink() or link.exists():
        return link.resolve()
    lay.run.mkdir(parents=True, exist_ok=True)
    reachable = True
    if os.geteuid() == 0:
        probe = subprocess.run(
            _as_postgres(["test", "-x", str(lay.run)]), check=False, capture_output=True, timeout=30
        )
        reachable = probe.returncode == 0
    # A unix socket path is limited to ~107 bytes; keep it short.
    if reachable and len(str(link / "sock" / ".s.PGSQL.55432")) < 100:
        link.mkdir()
        root = link
    else:
        root = lay.fallback_root / "pg"
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(lay.fallback_root, 0o755)  # noqa: S103 - postgres must traverse it
        link.symlink_to(root)
    uid, gid = _pg_owner()
    os.chown(root, uid, gid)
    return root.resolve()


def pg_running_pid(data: Path) -> int | None:
    """The postmaster's pid for cluster ``data`` if it runs (postmaster.pid line 1)."""
    pid = read_pid(data / "postmaster.pid")
    if pid is None or not pid_alive(pid):
        return None
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    return pid if comm in ("postgres", "postmaster") else None


def _pg_env() -> dict[str, str]:
    return dict(os.environ, PGCONNECT_TIMEOUT="5")


def pg_query(
    bindir: Path, dsn: str, sql: str, timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bindir / "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-Atq", "-d", dsn, "-c", sql],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_pg_env(),
        check=False,
    )


def pg_healthy(bindir: Path, dsn: str) -> bool:
    """pg_isready plus a real query."""
    try:
        ready = subprocess.run(
            [str(bindir / "pg_isready"), "-q", "-t", "3", "-d", dsn],
            timeout=10,
            env=_pg_env(),
            check=False,
        )
        if ready.returncode != 0:
            return False
        proc = pg_query(bindir, dsn, "SELECT 1", timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and proc.stdout.strip() == "1"


def _pg_settings(sock: Path) -> str:
    return (
        "\n# Added by deploy/stack.py\n"
        "listen_addresses = '127.0.0.1'\n"
        f"port = {PG_PORT}\n"
        f"unix_socket_directories = '{sock}'\n"
        "max_connections = 300\n"
        "fsync = on\n"
        "logging_collector = off\n"
        "log_min_messages = warning\n"
        "log_line_prefix = '%m [%p] %q%u@%d '\n"
    )


def ensure_postgres(lay: Layout, started: Started, timeout: float = PG_READY_TIMEOUT) -> str:
    """Make sure our local cluster answers; init/start/restart it when needed."""
    dsn = DEFAULT_DATABASE_URL
    bindir = pg_bindir()
    root = pg_root(lay)
    data, sock, logfile = root / "data", root / "sock", root / "postgres.log"
    pid = pg_running_pid(data)
    if pid is not None:
        _wait_pg(bindir, dsn, pid, logfile, timeout)
        return dsn

    if not port_free(PG_PORT) and not take_over(PG_PORT, "PostgreSQL"):
        if pg_healthy(bindir, dsn):
            log(
                f"PostgreSQL on {PG_HOST}:{PG_PORT} answers but was not started from this "
                f"checkout ({port_owner(PG_PORT) or 'owner unknown'}); reusing it"
            )
            return dsn
        raise port_taken_error(PG_PORT, "PostgreSQL")

    uid, gid = _pg_owner()
    sock.mkdir(exist_ok=True)
    os.chown(sock, uid, gid)
    if not (data / "PG_VERSION").exists():
        shutil.rmtree(data, ignore_errors=True)  # a half-done initdb
        log(f"initialising a PostgreSQL cluster in {data}")
        for locale in ("C.UTF-8", "C"):
            proc = subprocess.run(
                _as_postgres(
                    [
                        str(bindir / "initdb"),
                        "-D",
                        str(data),
                        "-A",
                        "trust",
                        "-U",
                        PG_SUPERUSER,
                        "--encoding=UTF8",
                        f"--locale={locale}",
                    ]
                ),
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if proc.returncode == 0:
                break
            shutil.rmtree(data, ignore_errors=True)
        else:
            raise StackError(f"initdb failed:\n{proc.stdout}{proc.stderr}")
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(_pg_settings(sock))

    log("starting PostgreSQL")
    t0 = time.monotonic()
    # After a kill -9 the old backends may hold the shared memory for a moment:
    # pg_ctl then fails; give it a few tries.
    for attempt in range(5):
        proc = subprocess.run(
            _as_postgres(
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(logfile),
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "start",
                ]
            ),
            capture_output=True,
            text=True,
            timeout=timeout + 30,
            check=False,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        if proc.returncode == 0:
            break
        if attempt < 4:
            time.sleep(1 + attempt)
    else:
        raise StackError(
            f"PostgreSQL did not start; see {logfile}. pg_ctl said:\n{proc.stdout}{proc.stderr}\n"
            + log_tail(logfile, 20)
        )
    pid = pg_running_pid(data)
    started.postgres = True
    _wait_pg(bindir, dsn, pid, logfile, timeout)
    started.timings["postgres_start"] = time.monotonic() - t0
    log(f"PostgreSQL ready on {PG_HOST}:{PG_PORT} in {started.timings['postgres_start']:.1f}s")
    return dsn


def _wait_pg(bindir: Path, dsn: str, pid: int | None, logfile: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pg_healthy(bindir, dsn):
        if pid is not None and not pid_alive(pid):
            raise StackError(f"PostgreSQL exited; see {logfile}:\n" + log_tail(logfile, 20))
        if time.monotonic() > deadline:
            raise StackError(
                f"PostgreSQL did not answer on {dsn} within {timeout:.0f}s; "
                f"see {logfile}:\n" + log_tail(logfile, 20)
            )
        time.sleep(0.3)


def ensure_databases(dsn: str, names: Sequence[str] = DATABASES) -> None:
    bindir = pg_bindir()
    proc = pg_query(bindir, dsn, "SELECT datname FROM pg_database")
    if proc.returncode != 0:
        raise StackError(f"cannot list databases on {dsn}: {proc.stderr.strip()}")
    existing = set(proc.stdout.split())
    for name in names:
        if name in existing:
            continue
        made = pg_query(bindir, dsn, f'CREATE DATABASE "{name}"')
        # Another process may have created it at the same moment: that is fine.
        if made.returncode != 0 and "already exists" not in made.stderr:
            raise StackError(f"cannot create database {name}: {made.stderr.strip()}")


def stop_postgres(lay: Layout) -> bool:
    if not (lay.pg_link.is_symlink() or lay.pg_link.exists()):
        return False
    data = lay.pg_link.resolve() / "data"
    if pg_running_pid(data) is None:
        return False
    bindir = pg_bindir(install=False)
    subprocess.run(
        _as_postgres(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-m",
                "fast",
                "-w",
                "-t",
                str(int(STOP_TIMEOUT)),
                "stop",
            ]
        ),
        capture_output=True,
        text=True,
        timeout=STOP_TIMEOUT + 30,
        check=False,
    )
    pid = pg_running_pid(data)
    if pid is not None:  # fast shutdown did not finish in time
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
    return True


# ------------------------------------------------------------------- infra


@dataclass(frozen=True)
class InfraInfo:
    kafka_bootstrap: str
    database_url: str
    started: Started


def _external(name: str, default: str) -> str | None:
    """An address the user exported, unless it is just our own default."""
    value = os.environ.get(name, "").strip()
    return value if value and value != default else None


def prepare(repo: Path | str | None = None) -> None:
    """Install what the local stack needs without starting anything."""
    lay = layout(repo)
    if not _external("KAFKA_BOOTSTRAP", DEFAULT_KAFKA_BOOTSTRAP):
        fetch_kafka_jars(lay)
    if not _external("DATABASE_URL", DEFAULT_DATABASE_URL):
        pg_bindir()


def ensure_infra(
    repo: Path | str | None = None, *, topics: bool = True, started: Started | None = None
) -> InfraInfo:
    """Kafka and PostgreSQL up and answering, topics and databases created,
    ``.run/stack.env`` written. Idempotent; restarts a dead broker/database.

    ``started`` (optional) is filled in as parts are started, so a caller interrupted
    half-way still knows what to stop."""
    lay = layout(repo)
    started = started if started is not None else Started()
    with stack_lock(lay):
        kafka = _external("KAFKA_BOOTSTRAP", DEFAULT_KAFKA_BOOTSTRAP)
        if kafka:
            if not kafka_healthy(kafka, timeout=10):
                raise StackError(f"KAFKA_BOOTSTRAP={kafka} does not answer a metadata request")
            log(f"using Kafka at {kafka} (KAFKA_BOOTSTRAP)")
        else:
            kafka = ensure_kafka(lay, started)
        dsn = _external("DATABASE_URL", DEFAULT_DATABASE_URL)
        if dsn:
            if not pg_healthy(pg_bindir(), dsn):
                raise StackError(f"DATABASE_URL={dsn} does not answer a query")
            log("using PostgreSQL at DATABASE_URL")
        else:
            dsn = ensure_postgres(lay, started)
        if topics:
            create_topics(lay, kafka)
        ensure_databases(dsn)
        write_stack_env(lay, kafka, dsn)
    return InfraInfo(kafka, dsn, started)


def stop_infra(lay: Layout, kafka: bool = True, postgres: bool = True) -> None:
    if kafka and stop_process(lay.kafka_pidfile, expect=_kafka_marker(lay)):
        log("stopped Kafka")
    if postgres and stop_postgres(lay):
        log("stopped PostgreSQL")


# -------------------------------------------------------------------- services


def module_exists(repo: Path, module: str) -> bool:
    base = repo.joinpath(*module.split("."))
    return (base / "__main__.py").exists() or base.with_suffix(".py").exists()


def healthz(port: int, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_services(
    env: Mapping[str, str],
    names: Sequence[str] | None = None,
    log_dir: Path | str | None = None,
    pid_dir: Path | str | None = None,
    *,
    repo: Path | str | None = None,
    services: Sequence[tuple[str, str, int]] | None = None,
    timeout: float = SERVICE_READY_TIMEOUT,
) -> list[str]:
    """Start services as ``<repo>/.venv/bin/python -m <module>`` and wait for /healthz.

    ``names`` picks from ``services`` (default: SERVICES); modules not written yet are
    skipped with a note. Each process gets ``env`` as its whole environment, logs to
    ``<log_dir>/<name>.log`` and has its pid in ``<pid_dir>/<name>.pid`` (defaults:
    .run/logs and .run/pids). A service already running from that pid file is left
    alone. Returns the names started now. On failure, raises StackError with the log
    tail (the processes started so far keep running: stop them with stop_process).
    """
    lay = layout(repo)
    log_path = Path(log_dir) if log_dir else lay.logs
    pid_path = Path(pid_dir) if pid_dir else lay.pids
    log_path.mkdir(parents=True, exist_ok=True)
    pid_path.mkdir(parents=True, exist_ok=True)
    python = str(lay.venv_python) if lay.venv_python.exists() else sys.executable
    table = list(services if services is not None else SERVICES)
    chosen = [s for s in table if names is None or s[0] in names]
    launched: list[tuple[str, int, subprocess.Popen[bytes], Path]] = []
    for name, module, port in chosen:
        if not module_exists(lay.repo, module):
            log(f"{name}: {module} does not exist yet; skipped")
            continue
        pidfile = pid_path / f"{name}.pid"
        if running_pid(pidfile, module) is not None and healthz(port):
            log(f"{name}: already running")
            continue
        stop_process(pidfile, expect=module)
        if not port_free(port):
            raise port_taken_error(port, f"the {name} service")
        logfile = log_path / f"{name}.log"
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(
                [python, "-m", module],
                cwd=lay.repo,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pidfile.write_text(f"{proc.pid}\n")
        launched.append((name, port, proc, logfile))
    deadline = time.monotonic() + timeout
    for name, port, proc, logfile in launched:
        while not healthz(port):
            if proc.poll() is not None:
                raise StackError(
                    f"{name} exited with {proc.returncode} during start-up; "
                    f"{logfile}:\n" + log_tail(logfile)
                )
            if time.monotonic() > deadline:
                raise StackError(
                    f"{name} did not answer GET /healthz on port {port} within "
                    f"{timeout:.0f}s; {logfile}:\n" + log_tail(logfile)
                )
            time.sleep(0.2)
        log(f"{name}: ready on http://127.0.0.1:{port}")
    return [name for name, *_ in launched]


def stop_services(lay: Layout, names: Sequence[str] | None = None) -> None:
    for name, module, _port in reversed(SERVICES):
        if names is not None and name not in names:
            continue
        if stop_process(lay.pids / f"{name}.pid", expect=module):
            log(f"stopped {name}")


# -------------------------------------------------------------------- commands


def _print_summary(lay: Layout) -> None:
    env = read_env_file(lay.stack_env)
    log(f"stack.env: {lay.stack_env}")
    for key in (
        "KAFKA_BOOTSTRAP",
        "DATABASE_URL",
        "PAYMENT_URL",
        "LEDGER_URL",
        "RISK_URL",
        "NOTIFY_URL",
        "SMS_GATEWAY_URL",
    ):
        if key in env:
            log(f"  {key}={env[key]}")


def up(repo: Path | str | None = None) -> Started:
    lay = layout(repo)
    info = ensure_infra(lay.repo)
    started = info.started
    with stack_lock(lay):
        started.services = start_services(service_env(lay), repo=lay.repo)
    _print_summary(lay)
    return started


def down(repo: Path | str | None = None) -> None:
    lay = layout(repo)
    with stack_lock(lay):
        stop_services(lay)
        stop_infra(lay)
    log("down")


def clean(repo: Path | str | None = None) -> None:
    """``down``, then remove .run/ (and the cluster dir it links to outside the repo)."""
    lay = layout(repo)
    down(lay.repo)
    if lay.pg_link.is_symlink():
        target = lay.pg_link.resolve()
        if target.parent == lay.fallback_root:
            shutil.rmtree(lay.fallback_root, ignore_errors=True)
    shutil.rmtree(lay.run, ignore_errors=True)
    log(f"removed {lay.run}")


def status(repo: Path | str | None = None) -> int:
    """Print the state of every part; exit 0 when infra answers."""
    lay = layout(repo)
    ok = True
    env = read_env_file(lay.stack_env)
    kafka = env.get("KAFKA_BOOTSTRAP", DEFAULT_KAFKA_BOOTSTRAP)
    kpid = kafka_running_pid(lay)
    kstate = "answering" if kafka_healthy(kafka, 3) else "not answering"
    ok &= kstate == "answering"
    print(f"kafka       {kafka:32} {kstate:14} {'pid ' + str(kpid) if kpid else 'not ours'}")
    dsn = env.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    try:
        bindir = pg_bindir(install=False)
        pstate = "answering" if pg_healthy(bindir, dsn) else "not answering"
    except StackError:
        pstate = "not installed"
    ok &= pstate == "answering"
    ppid = None
    if lay.pg_link.exists():
        ppid = pg_running_pid(lay.pg_link.resolve() / "data")
    where = f"{PG_HOST}:{PG_PORT}" if dsn == DEFAULT_DATABASE_URL else "DATABASE_URL"
    print(f"postgres    {where:32} {pstate:14} {'pid ' + str(ppid) if ppid else 'not ours'}")
    for name, module, port in SERVICES:
        if not module_exists(lay.repo, module):
            print(f"{name:11} {'(not written yet)':32}")
            continue
        spid = running_pid(lay.pids / f"{name}.pid", module)
        sstate = "answering" if healthz(port) else "not answering"
        print(
            f"{name:11} {'http://127.0.0.1:' + str(port):32} {sstate:14} "
            f"{'pid ' + str(spid) if spid else 'not running'}"
        )
    return 0 if ok else 1


class _Follower:
    """Prints new lines of the service logs, prefixed with the service name."""

    def __init__(self, lay: Layout, names: Sequence[str]) -> None:
        self.files = {n: lay.logs / f"{n}.log" for n in names}
        self.offsets = {n: (p.stat().st_size if p.exists() else 0) for n, p in self.files.items()}

    def pump(self) -> None:
        for name, path in self.files.items():
            try:
                with open(path, "rb") as fh:
                    fh.seek(self.offsets[name])
                    chunk = fh.read()
            except OSError:
                continue
            if not chunk:
                continue
            complete, _, _rest = chunk.rpartition(b"\n")
            if not complete:
                continue
            self.offsets[name] += len(complete) + 1
            for line in complete.decode(errors="replace").splitlines():
                print(f"{name:>11} | {line}", flush=True)


def run_foreground(repo: Path | str | None = None) -> int:
    """``up`` in the foreground: follow the logs; Ctrl-C/SIGTERM stops what we started."""
    lay = layout(repo)

    def on_signal(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # Installed explicitly: a shell starting us in the background may have set SIGINT
    # to "ignore", and then Python would not raise KeyboardInterrupt on its own.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = Started()
    # Services already running (an earlier `make up`) are not ours to stop.
    before = {
        name
        for name, module, _port in SERVICES
        if running_pid(lay.pids / f"{name}.pid", module) is not None
    }
    ours = [name for name, *_ in SERVICES if name not in before]
    return_code = 0
    try:
        ensure_infra(lay.repo, started=started)
        start_services(service_env(lay), ours, repo=lay.repo)
        _print_summary(lay)
        log("running; Ctrl-C stops everything")
        follower = _Follower(lay, [n for n, *_ in SERVICES])
        alive = {
            name
            for name, module, _port in SERVICES
            if running_pid(lay.pids / f"{name}.pid", module) is not None
        }
        while True:
            follower.pump()
            for name, module, _port in SERVICES:
                if name in alive and running_pid(lay.pids / f"{name}.pid", module) is None:
                    log(f"{name} stopped unexpectedly; see {lay.logs / (name + '.log')}")
                    alive.discard(name)
            time.sleep(0.5)
    except KeyboardInterrupt:
        log("stopping")
    except StackError as exc:
        log(f"error: {exc}")
        return_code = 1
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_services(lay, ours)
        stop_infra(lay, kafka=started.kafka, postgres=started.postgres)
        log("stopped")
    return return_code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stack", description="Yibao local stack")
    parser.add_argument("--repo", default=None, help="checkout to manage (default: this one)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("prepare", "install Kafka jars and PostgreSQL binaries; start nothing"),
        ("ensure-infra", "Kafka + PostgreSQL up and ready (idempotent)"),
        ("up", "infra + services in the background"),
        ("run", "infra + services in the foreground; Ctrl-C stops them"),
        ("down", "stop everything started from this checkout"),
        ("status", "show what runs"),
        ("clean", "down, then remove .run/"),
    ):
        sub.add_parser(name, help=help_text)
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare":
            prepare(args.repo)
        elif args.command == "ensure-infra":
            ensure_infra(args.repo)
            _print_summary(layout(args.repo))
        elif args.command == "up":
            up(args.repo)
        elif args.command == "run":
            return run_foreground(args.repo)
        elif args.command == "down":
            down(args.repo)
        elif args.command == "status":
            return status(args.repo)
        elif args.command == "clean":
            clean(args.repo)
    except StackError as exc:
        log(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
