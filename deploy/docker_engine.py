"""A Docker engine for the containerised tests and images: found, or installed and started.

    python3 deploy/docker_engine.py ensure [--compose] [--debootstrap]
    python3 deploy/docker_engine.py stop      # only a dockerd this script started
    python3 deploy/docker_engine.py status

``ensure``: when a Docker engine answers (``docker info``), it is used as it is (a
laptop's Docker Desktop, a CI runner's engine) with its default networking. Otherwise,
as root on Debian: Debian's ``docker.io`` is installed when missing, and ``dockerd`` is
started in the background with no bridge and no iptables rules
(``--bridge=none --iptables=false --ip-masq=false``: containers then run with
``--network host`` only), logging to ``.run/dockerd.log``, its pid in
``.run/pids/dockerd.pid``. It says what it did; it exits non-zero with a message when no
engine can be had. ``--compose`` also installs Debian's ``docker-compose``,
``--debootstrap`` Debian's ``debootstrap`` (for ``make images``' base image).

``DOCKER_HOST=unix:///some/docker.sock`` (the docker client's own variable) is honoured
both ways: the engine is looked for there, and a dockerd started here listens there
only. On a machine shared with people whose tests must not see an engine (their
fixtures would switch to containers), give everything of yours that DOCKER_HOST.

Standard library only (see deploy/stack.py).
"""

# This module drives trusted local tools (docker, dockerd, apt-get) by design.
# ruff: noqa: S603, S607

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable as `deploy`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy.common import StackError, layout
from deploy.procs import log_tail, pid_alive, running_pid, stop_process

DOCKERD_FLAGS = ("--bridge=none", "--iptables=false", "--ip-masq=false")
ENGINE_READY_TIMEOUT = 60.0


def say(message: str) -> None:
    print(f"[docker] {message}", file=sys.stderr, flush=True)


def engine_answers(timeout: float = 10.0) -> str | None:
    """The engine's server version when ``docker info`` answers, else None."""
    if not shutil.which("docker"):
        return None
    try:
        proc = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    version = proc.stdout.strip()
    return version if proc.returncode == 0 and version else None


def host_networking_only() -> bool:
    """True when the engine has no bridge network (a dockerd started as here): images
    are built and containers run with ``--network host``."""
    try:
        proc = subprocess.run(
            ["docker", "network", "ls", "--format", "{{.Driver}}"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return True
    return "bridge" not in proc.stdout.split()


def _dpkg_installed(package: str) -> bool:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return "install ok installed" in proc.stdout


def apt_install(packages: list[str]) -> None:
    """Install the Debian packages of ``packages`` that are missing (root only)."""
    if not shutil.which("dpkg-query"):
        missing = packages
    else:
        missing = [p for p in packages if not _dpkg_installed(p)]
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise StackError(f"no apt-get here: install {' '.join(missing)} yourself")
    if os.geteuid() != 0:
        raise StackError(f"run as root to install {' '.join(missing)} (Debian packages)")
    say(f"installing Debian packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise StackError(f"apt-get install {' '.join(missing)} failed:\n{proc.stderr[-2000:]}")


def _dockerd_binary() -> str | None:
    for candidate in ("/usr/sbin/dockerd", "/usr/bin/dockerd"):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("dockerd")


def dockerd_pidfile() -> Path:
    return layout().pids / "dockerd.pid"


def dockerd_log() -> Path:
    return layout().run / "dockerd.log"


def start_dockerd(timeout: float = ENGINE_READY_TIMEOUT) -> int:
    """Start Debian's dockerd in the background (host networking only); its pid."""
    dockerd = _dockerd_binary()
    if dockerd is None:
        raise StackError("dockerd is not installed (Debian: apt-get install docker.io)")
    pidfile = dockerd_pidfile()
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    logfile = dockerd_log()
    # containerd, runc and docker-init live in /usr/sbin or /usr/bin (Debian).
    env = dict(os.environ)
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin:" + env.get("PATH", "")
    flags = list(DOCKERD_FLAGS)
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):  # a private socket: nobody else finds this engine
        Path(host.removeprefix("unix://")).parent.mkdir(parents=True, exist_ok=True)
        flags += ["-H", host, "--pidfile", str(pidfile.with_suffix(".dockerd-pid"))]
    elif host:
        raise StackError(f"DOCKER_HOST={host}: only a unix:// socket can be started here")
    say(f"starting {dockerd} {' '.join(flags)} (log: {logfile})")
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            [dockerd, *flags],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    pidfile.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while engine_answers(timeout=5) is None:
        if proc.poll() is not None or not pid_alive(proc.pid):
            pidfile.unlink(missing_ok=True)
            raise StackError(f"dockerd exited during start-up; {logfile}:\n{log_tail(logfile)}")
        if time.monotonic() > deadline:
            raise StackError(
                f"dockerd (pid {proc.pid}) did not answer within {timeout:.0f}s; "
                f"{logfile}:\n{log_tail(logfile)}"
            )
        time.sleep(0.5)
    return proc.pid


def ensure_engine(*, compose: bool = False, debootstrap: bool = False) -> str:
    """A Docker engine that answers: the one already there, or Debian's started here.
    Returns its version. Installs the extra tools asked for (root, Debian)."""
    extras = (["docker-compose"] if compose else []) + (["debootstrap"] if debootstrap else [])
    version = engine_answers()
    if version is not None:
        say(f"using the Docker engine that answers (server {version})")
        if extras:
            missing = [t for t in extras if not shutil.which(t)]
            if missing and os.geteuid() == 0 and shutil.which("apt-get"):
                apt_install(missing)
        return version
    if not sys.platform.startswith("linux"):
        raise StackError(
            "no Docker engine answers `docker info`: start Docker Desktop (or another "
            "engine) and retry"
        )
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise StackError(
            "no Docker engine answers `docker info`, and this is not root on Debian, so "
            "none can be installed and started here: start an engine (Docker Desktop, "
            "`sudo systemctl start docker`) or run this as root"
        )
    apt_install(["docker.io", *extras])
    pid = start_dockerd()
    version = engine_answers() or "?"
    say(
        f"started dockerd (pid {pid}, server {version}; no bridge: containers use "
        f"--network host); stop it with `python3 deploy/docker_engine.py stop`"
    )
    return version


def stop_engine() -> bool:
    """Stop the dockerd this script started (its pid file); False when there is none."""
    pidfile = dockerd_pidfile()
    if running_pid(pidfile, "dockerd") is None:
        pidfile.unlink(missing_ok=True)
        return False
    stopped = stop_process(pidfile, expect="dockerd", timeout=30.0)
    if stopped:
        say("stopped the dockerd this script started")
    return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ensure = sub.add_parser("ensure", help="use or start a Docker engine")
    ensure.add_argument("--compose", action="store_true", help="also Debian's docker-compose")
    ensure.add_argument("--debootstrap", action="store_true", help="also Debian's debootstrap")
    sub.add_parser("stop", help="stop the dockerd this script started")
    sub.add_parser("status", help="exit 0 when an engine answers")
    args = parser.parse_args(argv)
    try:
        if args.command == "ensure":
            ensure_engine(compose=args.compose, debootstrap=args.debootstrap)
        elif args.command == "stop":
            if not stop_engine():
                say("no dockerd started by this script is running")
        else:
            version = engine_answers()
            ours = running_pid(dockerd_pidfile(), "dockerd")
            print(
                f"engine: {version or 'not answering'}" + (f" (ours: pid {ours})" if ours else "")
            )
            return 0 if version else 1
    except StackError as exc:
        say(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
