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
    .run/logs/     one log per service (instance: payment.log, payment-2.log ...)
    .run/pids/     one pid file per process we started (payment.pid, payment-2.pid ...)
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
* ``YIBAO_INSTANCES=N`` (or ``YIBAO_PAYMENT_INSTANCES``, ``YIBAO_RISK_INSTANCES``,
  ``YIBAO_NOTIFY_INSTANCES``) runs N processes of payment, risk and notify on their
  usual ports (SO_REUSEPORT; ``common.instance_counts``); the ledger always runs once.

The parts: ``deploy/common.py`` (layout, constants, env files), ``deploy/procs.py``
(processes and ports), ``deploy/local_kafka.py``, ``deploy/local_postgres.py``; this
file adds the services and the commands.
"""

# This script starts the service processes by design.
# ruff: noqa: S603

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable as `deploy`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy.common import (
    DEFAULT_DATABASE_URL,
    DEFAULT_KAFKA_BOOTSTRAP,
    PG_HOST,
    PG_PORT,
    SERVICE_READY_TIMEOUT,
    SERVICES,
    Layout,
    StackError,
    Started,
    instance_counts,
    instance_name,
    instance_names,
    layout,
    log,
    process_env,
    read_env_file,
    service_env,
    stack_lock,
    write_stack_env,
)
from deploy.local_kafka import (
    create_topics,
    ensure_kafka,
    fetch_kafka_jars,
    kafka_healthy,
    kafka_marker,
    kafka_running_pid,
)
from deploy.local_postgres import (
    ensure_databases,
    ensure_postgres,
    pg_bindir,
    pg_healthy,
    pg_running_pid,
    stop_postgres,
)
from deploy.procs import (
    listens_on,
    log_tail,
    port_taken_error,
    running_pid,
    stop_process,
    wait_port_free,
)

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
    if kafka and stop_process(lay.kafka_pidfile, expect=kafka_marker(lay)):
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
    instances: Mapping[str, int] | None = None,
) -> list[str]:
    """Start services as ``<repo>/.venv/bin/python -m <module>`` and wait for /healthz.

    ``names`` picks from ``services`` (default: SERVICES); modules not written yet are
    skipped with a note. Each process gets ``env`` as its whole environment, logs to
    ``<log_dir>/<name>.log`` and has its pid in ``<pid_dir>/<name>.pid`` (defaults:
    .run/logs and .run/pids). A service already running from that pid file is left
    alone. Returns the names started now. On failure, raises StackError with the log
    tail (the processes started so far keep running: stop them with stop_process).

    ``instances`` (``common.instance_counts``) runs a service as that many processes on
    its one port (SO_REUSEPORT): the first is ``<name>`` as above, the others
    ``<name>-2`` ... in pid and log file names. Missing instances of a running service
    are added; instances past the count (an earlier, larger start) are stopped.
    """
    lay = layout(repo)
    log_path = Path(log_dir) if log_dir else lay.logs
    pid_path = Path(pid_dir) if pid_dir else lay.pids
    log_path.mkdir(parents=True, exist_ok=True)
    pid_path.mkdir(parents=True, exist_ok=True)
    python = str(lay.venv_python) if lay.venv_python.exists() else sys.executable
    table = list(services if services is not None else SERVICES)
    counts = instances or {}
    launched: list[_Launched] = []
    for name, module, port in table:
        if names is not None and name not in names:
            continue
        if not module_exists(lay.repo, module):
            log(f"{name}: {module} does not exist yet; skipped")
            continue
        wanted = [instance_name(name, i) for i in range(1, counts.get(name, 1) + 1)]
        for extra in instance_names(name, pid_path):
            if extra not in wanted and stop_process(pid_path / f"{extra}.pid", expect=module):
                log(f"stopped {extra} ({len(wanted)} instance(s) wanted)")
        running = {w for w in wanted if running_pid(pid_path / f"{w}.pid", module) is not None}
        if running and healthz(port):
            if len(running) == len(wanted):
                log(f"{name}: already running")
                continue
        else:
            for instance in wanted:
                stop_process(pid_path / f"{instance}.pid", expect=module)
            running = set()
            if not wait_port_free(port):
                raise port_taken_error(port, f"the {name} service")
        own_env = process_env(env, name)  # its own Kafka principal, no other's
        launched += [
            _launch(
                instance,
                port,
                [python, "-m", module],
                own_env,
                lay.repo,
                log_path,
                pid_path / f"{instance}.pid",
            )
            for instance in wanted
            if instance not in running
        ]
    _wait_ready(launched, timeout)
    return [service.name for service in launched]


@dataclass(frozen=True)
class _Launched:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    logfile: Path


def _launch(
    name: str,
    port: int,
    cmd: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    log_dir: Path,
    pidfile: Path,
) -> _Launched:
    """Start one service in its own session (so stopping it stops what it forked)."""
    logfile = log_dir / f"{name}.log"
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pidfile.write_text(f"{proc.pid}\n")
    return _Launched(name, port, proc, logfile)


def _wait_ready(launched: Sequence[_Launched], timeout: float) -> None:
    """Wait until each listens on its port and the port answers GET /healthz;
    StackError with its log tail when one exits or the time is up."""
    deadline = time.monotonic() + timeout
    for service in launched:
        # Instances share their port: the port answering does not mean this one is up,
        # so it must also be listening itself (where /proc tells).
        while listens_on(service.proc.pid, service.port) is False or not healthz(service.port):
            if service.proc.poll() is not None:
                raise StackError(
                    f"{service.name} exited with {service.proc.returncode} during start-up; "
                    f"{service.logfile}:\n" + log_tail(service.logfile)
                )
            if time.monotonic() > deadline:
                raise StackError(
                    f"{service.name} did not answer GET /healthz on port {service.port} within "
                    f"{timeout:.0f}s; {service.logfile}:\n" + log_tail(service.logfile)
                )
            time.sleep(0.2)
        log(f"{service.name}: ready on http://127.0.0.1:{service.port}")


def stop_services(lay: Layout, names: Sequence[str] | None = None) -> None:
    """Stop the services (each of their instances) started from ``lay``."""
    for name, module, _port in reversed(SERVICES):
        if names is not None and name not in names:
            continue
        for instance in reversed(instance_names(name, lay.pids)):
            if stop_process(lay.pids / f"{instance}.pid", expect=module):
                log(f"stopped {instance}")


def _running_instances(lay: Layout) -> list[tuple[str, str, str]]:
    """(service, instance, module) of every service instance alive from ``lay``'s pids."""
    return [
        (name, instance, module)
        for name, module, _port in SERVICES
        for instance in instance_names(name, lay.pids)
        if running_pid(lay.pids / f"{instance}.pid", module) is not None
    ]


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
        "BANK_GATEWAY_URL",
    ):
        if key in env:
            log(f"  {key}={env[key]}")


def up(repo: Path | str | None = None) -> Started:
    lay = layout(repo)
    counts = instance_counts(os.environ)  # a wrong count fails before anything starts
    info = ensure_infra(lay.repo)
    started = info.started
    with stack_lock(lay):
        started.services = start_services(service_env(lay), repo=lay.repo, instances=counts)
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
    print(f"kafka        {kafka:32} {kstate:14} {'pid ' + str(kpid) if kpid else 'not ours'}")
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
    print(f"postgres     {where:32} {pstate:14} {'pid ' + str(ppid) if ppid else 'not ours'}")
    for name, module, port in SERVICES:
        if not module_exists(lay.repo, module):
            print(f"{name:12} {'(not written yet)':32}")
            continue
        sstate = "answering" if healthz(port) else "not answering"
        for instance in instance_names(name, lay.pids):
            spid = running_pid(lay.pids / f"{instance}.pid", module)
            print(
                f"{instance:12} {'http://127.0.0.1:' + str(port):32} {sstate:14} "
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
                print(f"{name:>12} | {line}", flush=True)


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
    before = {name for name, _instance, _module in _running_instances(lay)}
    ours = [name for name, *_ in SERVICES if name not in before]
    return_code = 0
    try:
        counts = instance_counts(os.environ)
        ensure_infra(lay.repo, started=started)
        start_services(service_env(lay), ours, repo=lay.repo, instances=counts)
        _print_summary(lay)
        log("running; Ctrl-C stops everything")
        alive = {instance: module for _name, instance, module in _running_instances(lay)}
        follower = _Follower(lay, list(alive))
        while True:
            follower.pump()
            for instance, module in list(alive.items()):
                if running_pid(lay.pids / f"{instance}.pid", module) is None:
                    log(f"{instance} stopped unexpectedly; see {lay.logs / (instance + '.log')}")
                    del alive[instance]
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
