"""The local Kafka broker: jars fetched with Maven once, KRaft storage, one combined
broker+controller node, readiness by a real metadata request, explicit topics.

Clients authenticate with SASL/SCRAM-SHA-512 on a SASL_PLAINTEXT listener (loopback:
no TLS), and the StandardAuthorizer allows only what an ACL grants
(deploy/kafka_access.py). The admin's SCRAM credential is written at format time (the
broker uses it to talk to itself); the other principals and the ACLs are set through
the admin API after start (``python -m deploy.topics --grant-access``). The
controller listener uses SASL/PLAIN with a static password (KRaft cannot use SCRAM
there). A storage formatted before authentication existed is given the admin once,
through a start without security; a running broker of this checkout on an older
configuration is restarted.

Standard library only (see deploy/stack.py).
"""

# This module drives trusted local tools (java, mvn) by design.
# ruff: noqa: S603

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from deploy.common import (
    DEFAULT_KAFKA_BOOTSTRAP,
    KAFKA_ADMIN_USERNAME,
    KAFKA_CONFIG_DIR,
    KAFKA_CONTROLLER_PORT,
    KAFKA_CONTROLLER_USERNAME,
    KAFKA_HOST,
    KAFKA_PORT,
    KAFKA_READY_TIMEOUT,
    KAFKA_SASL_MECHANISM,
    KAFKA_VERSION,
    REPO,
    Layout,
    StackError,
    Started,
    ensure_secrets,
    kafka_service_principals,
    kafka_stack_env,
    layout,
    log,
    read_env_file,
    write_private,
)
from deploy.procs import (
    log_tail,
    pid_alive,
    port_free,
    port_owner,
    port_taken_error,
    reap,
    running_pid,
    stop_process,
    take_over,
)

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


@dataclass(frozen=True)
class BrokerSecurity:
    """The passwords the broker itself needs: the admin's (its inter-broker principal,
    a super user) and the controller listener's."""

    admin_password: str
    controller_password: str

    @classmethod
    def of(cls, secrets_values: Mapping[str, str]) -> BrokerSecurity:
        return cls(
            secrets_values["KAFKA_ADMIN_PASSWORD"], secrets_values["KAFKA_CONTROLLER_PASSWORD"]
        )

    @property
    def admin(self) -> Credentials:
        return Credentials(KAFKA_ADMIN_USERNAME, self.admin_password)


@dataclass(frozen=True)
class Credentials:
    """A SASL/SCRAM principal, for the readiness probe."""

    username: str
    password: str


def _jaas(module: str, **options: str) -> str:
    quoted = " ".join(f'{k}="{v}"' for k, v in options.items())
    return f"{module} required {quoted};"


def _security_settings(security: BrokerSecurity) -> dict[str, str]:
    controller = {
        "username": KAFKA_CONTROLLER_USERNAME,
        "password": security.controller_password,
        f"user_{KAFKA_CONTROLLER_USERNAME}": security.controller_password,
    }
    return {
        "sasl.enabled.mechanisms": KAFKA_SASL_MECHANISM,
        "sasl.mechanism.inter.broker.protocol": KAFKA_SASL_MECHANISM,
        "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": _jaas(
            "org.apache.kafka.common.security.scram.ScramLoginModule",
            username=KAFKA_ADMIN_USERNAME,
            password=security.admin_password,
        ),
        # KRaft cannot use SCRAM on the controller listener (its credentials live in
        # the metadata the controller serves): PLAIN with one static user.
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": _jaas(
            "org.apache.kafka.common.security.plain.PlainLoginModule", **controller
        ),
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{KAFKA_ADMIN_USERNAME};User:{KAFKA_CONTROLLER_USERNAME}",
        "allow.everyone.if.no.acl.found": "false",
    }


def render_server_properties(
    data_dir: Path | str,
    *,
    host: str = KAFKA_HOST,
    port: int = KAFKA_PORT,
    controller_port: int = KAFKA_CONTROLLER_PORT,
    security: BrokerSecurity | None = None,
) -> str:
    """server.properties of the single-node KRaft broker+controller; with
    ``security``, SASL/SCRAM for clients and ACLs (without: plaintext, open)."""
    client, controller = ("SASL_PLAINTEXT", "SASL_PLAINTEXT") if security else ("PLAINTEXT",) * 2
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "listeners": f"{client}://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"{client}://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": client,
        "listener.security.protocol.map": f"CONTROLLER:{controller},{client}:{client}",
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
    if security is not None:
        settings.update(_security_settings(security))
    header = "# Written by deploy/stack.py; regenerated on every start. Holds passwords.\n"
    return header + "".join(f"{k}={v}\n" for k, v in settings.items())


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, base64url without padding, never starting
    with ``-`` (one in 64 would, and a command line reads that as an option; Kafka's own
    ``Uuid.randomUuid`` skips those too)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


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


def _sasl_request(sock: socket.socket, api_key: int, version: int, corr: int, body: bytes) -> bytes:
    data = _kafka_request(sock, api_key, version, corr, body)
    (error,) = struct.unpack(">h", data[:2])
    if error != 0:
        raise PermissionError(f"SASL step {api_key} refused with error {error}")
    return data[2:]


def _str(value: bytes) -> bytes:
    return struct.pack(">h", len(value)) + value


def _scram_authenticate(sock: socket.socket, credentials: Credentials) -> None:
    """SASL/SCRAM-SHA-512 (RFC 5802, KIP-84): SaslHandshake v1, then two
    SaslAuthenticate v1 rounds; raises PermissionError when refused."""
    try:
        _sasl_request(sock, 17, 1, 10, _str(KAFKA_SASL_MECHANISM.encode()))
    except PermissionError as exc:  # no SCRAM on this listener: not a SASL broker
        raise ValueError(str(exc)) from exc
    name = credentials.username.replace("=", "=3D").replace(",", "=2C")
    nonce = secrets.token_urlsafe(24)
    first_bare = f"n={name},r={nonce}"

    def authenticate(corr: int, message: str) -> str:
        data = _sasl_request(sock, 36, 1, corr, struct.pack(">i", len(message)) + message.encode())
        (mlen,) = struct.unpack(">h", data[:2])
        pos = 2 + max(mlen, 0)
        (alen,) = struct.unpack(">i", data[pos : pos + 4])
        return data[pos + 4 : pos + 4 + alen].decode()

    server_first = authenticate(11, "n,," + first_bare)
    fields = dict(part.split("=", 1) for part in server_first.split(","))
    if not fields.get("r", "").startswith(nonce):
        raise PermissionError("SCRAM: the server's nonce does not extend ours")
    salted = hashlib.pbkdf2_hmac(
        "sha512", credentials.password.encode(), base64.b64decode(fields["s"]), int(fields["i"])
    )
    client_key = hmac.digest(salted, b"Client Key", "sha512")
    without_proof = f"c=biws,r={fields['r']}"
    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(hashlib.sha512(client_key).digest(), auth_message, "sha512")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    authenticate(12, f"{without_proof},p={base64.b64encode(proof).decode()}")


def kafka_metadata(
    bootstrap: str, timeout: float = 5.0, credentials: Credentials | None = None
) -> dict[str, object]:
    """A real Kafka metadata round trip (ApiVersions, then Metadata) in plain sockets,
    after a SASL/SCRAM-SHA-512 login when ``credentials`` are given.

    Returns ``{"cluster_id", "controller_id", "brokers": [(id, host, port)]}``; raises
    OSError/ConnectionError/ValueError when the server is not a working Kafka broker
    (PermissionError, an OSError, when it refuses the credentials).
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
        if credentials is not None:
            _scram_authenticate(sock, credentials)
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


def probe_credentials(bootstrap: str) -> Credentials | None:
    """Whom the readiness probe logs in as: the admin of the environment
    (``KAFKA_ADMIN_USERNAME``/``_PASSWORD``, as stack.env names it), else this
    checkout's admin for its own broker, else nobody (an open broker)."""
    username = os.environ.get("KAFKA_ADMIN_USERNAME", "")
    password = os.environ.get("KAFKA_ADMIN_PASSWORD", "")
    if username and password:
        return Credentials(username, password)
    if bootstrap == DEFAULT_KAFKA_BOOTSTRAP:
        own = read_env_file(layout(REPO).secrets_env).get("KAFKA_ADMIN_PASSWORD")
        if own:
            return Credentials(KAFKA_ADMIN_USERNAME, own)
    return None


def kafka_healthy(
    bootstrap: str, timeout: float = 5.0, credentials: Credentials | None = None
) -> bool:
    """True when ``bootstrap`` answers a metadata request and has a controller.

    With ``credentials``, only after logging in as them (a broker that does not take
    them is not healthy for us). Without, as ``probe_credentials`` says when the broker
    asks for SASL, and plainly when it does not (an open broker)."""
    try:
        if credentials is not None:
            meta = kafka_metadata(bootstrap, timeout, credentials)
        else:
            meta = _metadata_as(bootstrap, timeout, probe_credentials(bootstrap))
    except (OSError, ValueError, struct.error, UnicodeDecodeError):
        return False
    controller = meta["controller_id"]
    return isinstance(controller, int) and controller >= 0


def _metadata_as(
    bootstrap: str, timeout: float, credentials: Credentials | None
) -> dict[str, object]:
    """Metadata as ``credentials`` when known, plainly when not, or when the broker
    turns the SASL handshake down (an open broker)."""
    if credentials is None:
        return kafka_metadata(bootstrap, timeout)
    try:
        return kafka_metadata(bootstrap, timeout, credentials)
    except PermissionError:
        raise
    except (OSError, ValueError, struct.error):
        # An open broker answers SaslHandshake with UNSUPPORTED_SASL_MECHANISM
        # or drops the connection: try it without.
        return kafka_metadata(bootstrap, timeout)


def kafka_marker(lay: Layout) -> str:
    """A string only our broker's command line contains (guards recycled pids)."""
    return str(lay.kafka / "server.properties")


def kafka_running_pid(lay: Layout) -> int | None:
    return running_pid(lay.kafka_pidfile, kafka_marker(lay))


def ensure_kafka(lay: Layout, started: Started, timeout: float = KAFKA_READY_TIMEOUT) -> str:
    """Make sure our local broker answers, with authentication; start it when needed,
    restart it when it runs on an older configuration (before SASL/ACLs)."""
    bootstrap = DEFAULT_KAFKA_BOOTSTRAP
    security = BrokerSecurity.of(ensure_secrets(lay))
    props = lay.kafka / "server.properties"
    wanted = _server_properties(lay, security)
    pid = kafka_running_pid(lay)
    if pid is not None:
        if props.exists() and props.read_text() == wanted:
            _wait_kafka(lay, bootstrap, pid, timeout, security.admin)
            return bootstrap
        log(f"Kafka (pid {pid}) runs on an older configuration: restarting it with SASL/ACLs")
        stop_process(lay.kafka_pidfile, expect=kafka_marker(lay))
    lay.kafka_pidfile.unlink(missing_ok=True)
    if _reuse_foreign_kafka(bootstrap, security.admin):
        return bootstrap

    libs = fetch_kafka_jars(lay)
    lay.kafka.mkdir(parents=True, exist_ok=True)
    lay.pids.mkdir(parents=True, exist_ok=True)
    java = _java()
    classpath = f"{libs}/*"
    if _storage_formatted(lay) and not _secured_marker(lay).exists():
        _add_admin_to_open_storage(lay, java, classpath, security, timeout)
    write_private(props, wanted, 0o600)
    _format_storage(lay, java, classpath, props, security)

    log("starting Kafka")
    t0 = time.monotonic()
    pid = _start_broker(lay, java, classpath, props)
    started.kafka = True
    _wait_kafka(lay, bootstrap, pid, timeout, security.admin)
    started.timings["kafka_start"] = time.monotonic() - t0
    log(f"Kafka ready on {bootstrap} in {started.timings['kafka_start']:.1f}s (pid {pid})")
    return bootstrap


def _server_properties(lay: Layout, security: BrokerSecurity | None) -> str:
    return render_server_properties(
        lay.kafka / "data",
        host=KAFKA_HOST,
        port=KAFKA_PORT,
        controller_port=KAFKA_CONTROLLER_PORT,
        security=security,
    )


def _start_broker(lay: Layout, java: str, classpath: str, props: Path) -> int:
    with open(lay.kafka / "console.log", "ab") as console:
        proc = subprocess.Popen(
            _broker_command(lay, java, classpath, props),
            cwd=lay.kafka,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    lay.kafka_pidfile.write_text(f"{proc.pid}\n")
    return proc.pid


def _secured_marker(lay: Layout) -> Path:
    """Written once the storage holds the admin's SCRAM credential."""
    return lay.kafka / "scram-admin.done"


def _storage_formatted(lay: Layout) -> bool:
    return (lay.kafka / "data" / "meta.properties").exists()


def _add_admin_to_open_storage(
    lay: Layout, java: str, classpath: str, security: BrokerSecurity, timeout: float
) -> None:
    """A storage formatted before authentication (no SCRAM credentials): start it once
    as it was (open), give it the admin's credential through the admin API, stop it.
    Topics and their events stay."""
    log("Kafka storage predates authentication: adding the admin principal (once)")
    props = lay.kafka / "server.properties"
    write_private(props, _server_properties(lay, None), 0o600)
    pid = _start_broker(lay, java, classpath, props)
    try:
        _wait_kafka(lay, DEFAULT_KAFKA_BOOTSTRAP, pid, timeout, None)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "YIBAO_KAFKA_"))}
        env["KAFKA_ADMIN_PASSWORD_NEW"] = security.admin_password
        _run_topics_tool(lay, ["--bootstrap", DEFAULT_KAFKA_BOOTSTRAP, "--add-admin-only"], env)
    finally:
        stop_process(lay.kafka_pidfile, expect=kafka_marker(lay))
    _secured_marker(lay).write_text(f"{KAFKA_ADMIN_USERNAME}\n")


def _reuse_foreign_kafka(bootstrap: str, admin: Credentials) -> bool:
    """With our broker not running: True when a healthy Kafka that another checkout
    started holds the port and takes this checkout's admin credentials (reuse it);
    raises when anything else holds one of our ports. In CI such a broker is stopped
    instead (``take_over``)."""
    for port in (KAFKA_PORT, KAFKA_CONTROLLER_PORT):
        if not port_free(port) and not take_over(port, "Kafka"):
            if port == KAFKA_PORT and not kafka_healthy(bootstrap, credentials=admin):
                with contextlib.suppress(OSError, ValueError, struct.error):
                    kafka_metadata(bootstrap, 5)  # answers with no login at all?
                    raise StackError(
                        f"Kafka on {bootstrap} answers without authentication "
                        f"({port_owner(port) or 'owner unknown'}): it was started by an "
                        "older version or another checkout; stop it there (make down) so "
                        "that this one starts a broker with SASL/ACLs"
                    )
            if port == KAFKA_PORT and kafka_healthy(bootstrap, credentials=admin):
                log(
                    f"Kafka on {bootstrap} answers but was not started from this checkout "
                    f"({port_owner(port) or 'owner unknown'}); reusing it"
                )
                return True
            raise port_taken_error(port, "Kafka")
    return False


def _java() -> str:
    java = shutil.which("java")
    if not java:
        raise StackError(
            "java (17 or newer) is needed to run Kafka; install it "
            "(Debian: apt-get install -y openjdk-17-jre-headless)"
        )
    return java


def _format_storage(
    lay: Layout, java: str, classpath: str, props: Path, security: BrokerSecurity
) -> None:
    """KRaft storage, formatted once (``--standalone``) with this checkout's cluster id
    and the admin's SCRAM credential (the broker authenticates to itself with it)."""
    if _storage_formatted(lay):
        return
    id_file = lay.kafka / "cluster.id"
    if not id_file.exists():
        id_file.write_text(new_cluster_id() + "\n")
    cluster_id = id_file.read_text().strip()
    admin_scram = (
        f"{KAFKA_SASL_MECHANISM}=[name={KAFKA_ADMIN_USERNAME},password={security.admin_password}]"
    )
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
            f"--cluster-id={cluster_id}",
            "-c",
            str(props),
            "--add-scram",
            admin_scram,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if fmt.returncode != 0:
        output = (fmt.stdout + fmt.stderr).replace(security.admin_password, "***")
        raise StackError(f"formatting Kafka storage failed:\n{output}")
    _secured_marker(lay).write_text(f"{KAFKA_ADMIN_USERNAME}\n")


def _broker_command(lay: Layout, java: str, classpath: str, props: Path) -> list[str]:
    return [
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


def _wait_kafka(
    lay: Layout, bootstrap: str, pid: int, timeout: float, admin: Credentials | None
) -> None:
    """Until the broker answers a metadata request (as ``admin`` when given)."""
    deadline = time.monotonic() + timeout
    while True:
        if kafka_healthy(bootstrap, timeout=3, credentials=admin):
            return
        reap(pid)
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
    """Create the contract's topics (idempotent) through the venv's aiokafka; on our
    own broker also (re)set the principals and their ACLs (deploy/kafka_access.py)."""
    args = ["--bootstrap", bootstrap]
    if prefix:
        args += ["--prefix", prefix]
    env = dict(os.environ)
    if bootstrap == DEFAULT_KAFKA_BOOTSTRAP:
        secrets_values = ensure_secrets(lay)
        env.update(kafka_stack_env(secrets_values))
        env.update(kafka_service_principals(secrets_values))
        args.append("--grant-access")
    _run_topics_tool(lay, args, env)


def _run_topics_tool(lay: Layout, args: list[str], env: Mapping[str, str]) -> None:
    python = python_with_aiokafka(lay)
    # Run from the checkout holding this code (deploy.topics, shared.topics), which is
    # also the managed one unless a caller passes another repo (tests do).
    proc = subprocess.run(
        [python, "-m", "deploy.topics", *args],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise StackError(f"deploy.topics {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    log(proc.stdout.strip())


def python_with_aiokafka(lay: Layout) -> str:
    for candidate in (lay.venv_python, layout(REPO).venv_python):
        if candidate.exists():
            return str(candidate)
    with contextlib.suppress(ImportError):
        import aiokafka  # noqa: F401

        return sys.executable
    raise StackError(f"{lay.venv_python} is missing: run `make venv` first")
