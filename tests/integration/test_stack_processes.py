"""deploy.stack's process handling: start_services waits for /healthz, stop_process stops."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from deploy import common, procs, stack

pytestmark = pytest.mark.integration

FAKE_SERVICE = """
import http.server, os

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/healthz"
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(os.environ.get("GREETING", "").encode())

    def log_message(self, *args):
        pass

print("fake service up", flush=True)
http.server.HTTPServer(("127.0.0.1", int(os.environ["FAKE_PORT"])), Handler).serve_forever()
"""

BROKEN_SERVICE = "raise SystemExit('cannot start: no config')\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _repo_with(tmp_path: Path, module: str, source: str) -> Path:
    pkg = tmp_path / "services" / module
    pkg.mkdir(parents=True)
    (tmp_path / "services" / "__init__.py").touch()
    (pkg / "__init__.py").touch()
    (pkg / "__main__.py").write_text(source)
    return tmp_path


def test_start_and_stop_a_service(tmp_path: Path) -> None:
    port = _free_port()
    repo = _repo_with(tmp_path, "fake", FAKE_SERVICE)
    env = dict(os.environ, FAKE_PORT=str(port), GREETING="hi")
    services = [("fake", "services.fake", port), ("missing", "services.missing", 1)]
    logs, pids = tmp_path / "logs", tmp_path / "pids"

    started = stack.start_services(
        env, log_dir=logs, pid_dir=pids, repo=repo, services=services, timeout=30
    )
    assert started == ["fake"]  # the module that does not exist is skipped
    pidfile = pids / "fake.pid"
    pid = procs.read_pid(pidfile)
    assert pid is not None
    assert procs.pid_alive(pid)
    assert stack.healthz(port)
    assert "fake service up" in (logs / "fake.log").read_text()

    # Already running: left alone.
    again = stack.start_services(
        env, log_dir=logs, pid_dir=pids, repo=repo, services=services, timeout=30
    )
    assert again == []
    assert procs.read_pid(pidfile) == pid

    assert procs.stop_process(pidfile) is True
    assert not procs.pid_alive(pid)
    assert not pidfile.exists()
    assert not stack.healthz(port)
    assert procs.stop_process(pidfile) is False  # idempotent


def test_a_service_that_dies_reports_its_log(tmp_path: Path) -> None:
    repo = _repo_with(tmp_path, "broken", BROKEN_SERVICE)
    with pytest.raises(common.StackError, match="cannot start: no config"):
        stack.start_services(
            dict(os.environ),
            log_dir=tmp_path / "logs",
            pid_dir=tmp_path / "pids",
            repo=repo,
            services=[("broken", "services.broken", _free_port())],
            timeout=30,
        )


SHARED_PORT_SERVICE = """
import http.server, os, socket, socketserver

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(str(os.getpid()).encode())

    def log_message(self, *args):
        pass

class Server(http.server.HTTPServer):
    def server_bind(self):  # as shared/runtime.listening_socket does
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

print("instance up", flush=True)
Server(("127.0.0.1", int(os.environ["FAKE_PORT"])), Handler).serve_forever()
"""


def test_instances_share_the_port_each_with_its_pid_and_log(tmp_path: Path) -> None:
    port = _free_port()
    repo = _repo_with(tmp_path, "shared", SHARED_PORT_SERVICE)
    env = dict(os.environ, FAKE_PORT=str(port))
    services = [("fake", "services.shared", port)]
    logs, pids = tmp_path / "logs", tmp_path / "pids"

    def start(count: int) -> list[str]:
        return stack.start_services(
            env,
            log_dir=logs,
            pid_dir=pids,
            repo=repo,
            services=services,
            timeout=30,
            instances={"fake": count},
        )

    try:
        assert start(2) == ["fake", "fake-2"]
        first, second = procs.read_pid(pids / "fake.pid"), procs.read_pid(pids / "fake-2.pid")
        assert first is not None and second is not None and first != second
        assert procs.listens_on(first, port) and procs.listens_on(second, port)
        for name in ("fake", "fake-2"):
            assert "instance up" in (logs / f"{name}.log").read_text()

        assert start(3) == ["fake-3"]  # the running two are kept, one is added
        assert procs.read_pid(pids / "fake.pid") == first
        assert start(1) == []  # the others are stopped
        assert common.instance_names("fake", pids) == ["fake"]
        assert not procs.pid_alive(second)
        assert stack.healthz(port)
    finally:
        for name in common.instance_names("fake", pids):
            procs.stop_process(pids / f"{name}.pid")
    assert not stack.healthz(port)


def test_listening_sockets_share_a_port_only_with_each_other() -> None:
    """shared/runtime.listening_socket: the port is shared only with whoever asks for
    sharing too; a socket that does not (any other program) is refused."""
    from shared.runtime import listening_socket

    first = listening_socket("127.0.0.1", 0)
    port = first.getsockname()[1]
    try:
        first.listen()
        second = listening_socket("127.0.0.1", port)
        second.close()
        assert not procs.port_free(port)
        assert procs.listens_on(os.getpid(), port) is True
    finally:
        first.close()
