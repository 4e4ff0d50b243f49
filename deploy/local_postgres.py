"""The local PostgreSQL: Debian's server (installed when missing), a cluster under
.run/pg initialised as the postgres user, one database per service.

Standard library only (see deploy/stack.py).
"""

# This module drives trusted local tools (apt-get, initdb, pg_ctl, psql) by design.
# ruff: noqa: S603

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deploy.common import (
    DATABASES,
    DEFAULT_DATABASE_URL,
    PG_HOST,
    PG_PORT,
    PG_READY_TIMEOUT,
    PG_SUPERUSER,
    STOP_TIMEOUT,
    Layout,
    StackError,
    Started,
    log,
)
from deploy.procs import (
    log_tail,
    pid_alive,
    port_free,
    port_owner,
    port_taken_error,
    read_pid,
    take_over,
)

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


def _pg_ctl(
    bindir: Path, data: Path, action: str, *options: str, wait: float, **run: Any
) -> subprocess.CompletedProcess[str]:
    """``pg_ctl -D data [options] -w -t wait action`` as the postgres user."""
    return subprocess.run(
        _as_postgres(
            [str(bindir / "pg_ctl"), "-D", str(data), *options, "-w", "-t", str(int(wait)), action]
        ),
        capture_output=True,
        text=True,
        timeout=wait + 30,
        check=False,
        **run,
    )


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
    """Our settings (data/yibao.conf, rewritten at every start so a cluster made by an
    older checkout gets them too). Durability is never traded: fsync and
    synchronous_commit stay on. Throughput settings (issue 13): compressed full-page
    images and rarer checkpoints cut WAL per payment; pg_stat_statements is preloaded
    so bench.payments can print the top statements."""
    return (
        "# Written by deploy/local_postgres.py at every start: edit there, not here.\n"
        "listen_addresses = '127.0.0.1'\n"
        f"port = {PG_PORT}\n"
        f"unix_socket_directories = '{sock}'\n"
        "max_connections = 300\n"
        "fsync = on\n"
        "synchronous_commit = on\n"
        "shared_buffers = 256MB\n"
        "wal_compression = on\n"
        "max_wal_size = 2GB\n"
        "checkpoint_timeout = 15min\n"
        "shared_preload_libraries = 'pg_stat_statements'\n"
        "pg_stat_statements.track = top\n"
        "logging_collector = off\n"
        "log_min_messages = warning\n"
        "log_line_prefix = '%m [%p] %q%u@%d '\n"
    )


INCLUDE_LINE = "include_if_exists = 'yibao.conf'"


def _write_settings(data: Path, sock: Path) -> None:
    """data/yibao.conf from ``_pg_settings``, included last by postgresql.conf."""
    uid, gid = _pg_owner()
    ours = data / "yibao.conf"
    ours.write_text(_pg_settings(sock))
    os.chown(ours, uid, gid)
    main = data / "postgresql.conf"
    if INCLUDE_LINE not in main.read_text():
        with open(main, "a") as conf:
            conf.write(f"\n{INCLUDE_LINE}\n")


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
    if _reuse_foreign_postgres(bindir, dsn):
        return dsn

    uid, gid = _pg_owner()
    sock.mkdir(exist_ok=True)
    os.chown(sock, uid, gid)
    if not (data / "PG_VERSION").exists():
        _init_cluster(bindir, data, sock)
    _write_settings(data, sock)

    log("starting PostgreSQL")
    t0 = time.monotonic()
    _start_cluster(bindir, data, logfile, timeout)
    started.postgres = True
    _wait_pg(bindir, dsn, pg_running_pid(data), logfile, timeout)
    started.timings["postgres_start"] = time.monotonic() - t0
    log(f"PostgreSQL ready on {PG_HOST}:{PG_PORT} in {started.timings['postgres_start']:.1f}s")
    return dsn


def _reuse_foreign_postgres(bindir: Path, dsn: str) -> bool:
    """With our cluster not running: True when a healthy PostgreSQL that another
    checkout started holds the port (reuse it); raises when anything else holds it.
    In CI such a cluster is stopped instead (``take_over``)."""
    if port_free(PG_PORT) or take_over(PG_PORT, "PostgreSQL"):
        return False
    if pg_healthy(bindir, dsn):
        log(
            f"PostgreSQL on {PG_HOST}:{PG_PORT} answers but was not started from this "
            f"checkout ({port_owner(PG_PORT) or 'owner unknown'}); reusing it"
        )
        return True
    raise port_taken_error(PG_PORT, "PostgreSQL")


def _init_cluster(bindir: Path, data: Path, sock: Path) -> None:
    """initdb (as the postgres user, trust auth, UTF-8); our settings come after."""
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


def _start_cluster(bindir: Path, data: Path, logfile: Path, timeout: float) -> None:
    # After a kill -9 the old backends may hold the shared memory for a moment:
    # pg_ctl then fails; give it a few tries.
    for attempt in range(5):
        proc = _pg_ctl(
            bindir,
            data,
            "start",
            "-l",
            str(logfile),
            wait=timeout,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        if proc.returncode == 0:
            return
        if attempt < 4:
            time.sleep(1 + attempt)
    raise StackError(
        f"PostgreSQL did not start; see {logfile}. pg_ctl said:\n{proc.stdout}{proc.stderr}\n"
        + log_tail(logfile, 20)
    )


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
    _pg_ctl(bindir, data, "stop", "-m", "fast", wait=STOP_TIMEOUT)
    pid = pg_running_pid(data)
    if pid is not None:  # fast shutdown did not finish in time
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
    return True
