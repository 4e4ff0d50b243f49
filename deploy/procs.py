"""Processes and ports: pid files, stopping, who holds a port, taking over a stale stack.

Standard library only (see deploy/stack.py).
"""

# This module drives trusted local tools (ss) by design.
# ruff: noqa: S603, S607

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from deploy.common import STOP_TIMEOUT, StackError, log

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
        reap(pid)
        time.sleep(0.1)
    if pid_alive(pid):
        log(f"{pidfile.stem} (pid {pid}) did not stop in {timeout:.0f}s; killing it")
        send(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while pid_alive(pid) and time.monotonic() < deadline:
            reap(pid)
            time.sleep(0.1)
    reap(pid)
    pidfile.unlink(missing_ok=True)
    return True


def reap(pid: int) -> None:
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


def wait_port_free(port: int, within: float = 5.0, host: str = "127.0.0.1") -> bool:
    """``port_free``, allowing a process that was just killed a moment to let go: a
    multi-threaded process shows as a zombie while its other threads still hold its
    sockets."""
    deadline = time.monotonic() + within
    while not port_free(port, host):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _listeners(port: int) -> str:
    """``ss -ltnp`` for ``port``: the listening sockets and their processes ("" when unknown)."""
    if not shutil.which("ss"):
        return ""
    try:
        return subprocess.run(
            ["ss", "-H", "-ltnp", f"sport = :{port}"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def port_owner(port: int) -> str:
    """Who listens on ``port``, as far as ``ss -ltnp`` tells (empty when unknown)."""
    out = _listeners(port)
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


def listens_on(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` itself holds a listening TCP socket on ``port``, from
    /proc (its socket inodes against /proc/net/tcp and tcp6); None where /proc does not
    tell (not Linux, or another user's process). Several instances share one port
    (SO_REUSEPORT), so an answer on the port does not say which one is up."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None
    inodes = set()
    for fd in fds:
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN; the inode is field 9.
            if (
                len(fields) > 9
                and fields[3] == "0A"
                and fields[9] in inodes
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                return True
    return False


def port_owner_pids(port: int) -> list[int]:
    """Pids listening on ``port`` according to ``ss -ltnp`` (empty when unknown)."""
    return sorted({int(pid) for pid in re.findall(r"pid=(\d+)", _listeners(port))})


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
