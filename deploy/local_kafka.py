"""The local Kafka broker: jars fetched with Maven once, KRaft storage, one combined
broker+controller node, readiness by a real metadata request, explicit topics.

Standard library only (see deploy/stack.py).
"""

# This module drives trusted local tools (java, mvn) by design.
# ruff: noqa: S603

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

from deploy.common import (
    DEFAULT_KAFKA_BOOTSTRAP,
    KAFKA_CONFIG_DIR,
    KAFKA_CONTROLLER_PORT,
    KAFKA_HOST,
    KAFKA_PORT,
    KAFKA_READY_TIMEOUT,
    KAFKA_VERSION,
    REPO,
    Layout,
    StackError,
    Started,
    layout,
    log,
)
from deploy.procs import (
    log_tail,
    pid_alive,
    port_free,
    port_owner,
    port_taken_error,
    reap,
    running_pid,
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


def kafka_marker(lay: Layout) -> str:
    """A string only our broker's command line contains (guards recycled pids)."""
    return str(lay.kafka / "server.properties")


def kafka_running_pid(lay: Layout) -> int | None:
    return running_pid(lay.kafka_pidfile, kafka_marker(lay))


def ensure_kafka(lay: Layout, started: Started, timeout: float = KAFKA_READY_TIMEOUT) -> str:
    """Make sure our local broker answers; start (or restart) it when needed."""
    bootstrap = DEFAULT_KAFKA_BOOTSTRAP
    pid = kafka_running_pid(lay)
    if pid is not None:
        _wait_kafka(lay, bootstrap, pid, timeout)
        return bootstrap
    lay.kafka_pidfile.unlink(missing_ok=True)
    if _reuse_foreign_kafka(bootstrap):
        return bootstrap

    libs = fetch_kafka_jars(lay)
    lay.kafka.mkdir(parents=True, exist_ok=True)
    lay.pids.mkdir(parents=True, exist_ok=True)
    props = lay.kafka / "server.properties"
    props.write_text(
        render_server_properties(
            lay.kafka / "data",
            host=KAFKA_HOST,
            port=KAFKA_PORT,
            controller_port=KAFKA_CONTROLLER_PORT,
        )
    )
    java = _java()
    classpath = f"{libs}/*"
    _format_storage(lay, java, classpath, props)

    log("starting Kafka")
    t0 = time.monotonic()
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
    started.kafka = True
    _wait_kafka(lay, bootstrap, proc.pid, timeout)
    started.timings["kafka_start"] = time.monotonic() - t0
    log(f"Kafka ready on {bootstrap} in {started.timings['kafka_start']:.1f}s (pid {proc.pid})")
    return bootstrap


def _reuse_foreign_kafka(bootstrap: str) -> bool:
    """With our broker not running: True when a healthy Kafka that another checkout
    started holds the port (reuse it); raises when anything else holds one of our
    ports. In CI such a broker is stopped instead (``take_over``)."""
    for port in (KAFKA_PORT, KAFKA_CONTROLLER_PORT):
        if not port_free(port) and not take_over(port, "Kafka"):
            if port == KAFKA_PORT and kafka_healthy(bootstrap):
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


def _format_storage(lay: Layout, java: str, classpath: str, props: Path) -> None:
    """KRaft storage, formatted once (``--standalone``) with this checkout's cluster id."""
    if (lay.kafka / "data" / "meta.properties").exists():
        return
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


def _wait_kafka(lay: Layout, bootstrap: str, pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if kafka_healthy(bootstrap, timeout=3):
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
