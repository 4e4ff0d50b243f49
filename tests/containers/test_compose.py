"""deploy/compose.yaml for real: the whole stack up from the project's images, on the
host's network on ports of its own, healthy; a premium paid through the published
payment port and its money on the ledger; then down, volumes and all.

    YIBAO_CONTAINER_TESTS=1 .venv/bin/python -m pytest tests/containers/test_compose.py
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import common
from tests.containers.conftest import APP_IMAGES as IMAGES
from tests.containers.conftest import compose_command, containers_wanted
from tests.e2e.client import FINAL, Yibao, premium_body
from tests.support import free_port, project_image

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "deploy" / "compose.yaml"
LONG_RUNNING = ("kafka", "postgres", "sms-gateway", "bank-gateway", "payment", "ledger", "risk")
PORT_VARS = {
    "kafka": "YIBAO_COMPOSE_KAFKA_PORT",
    "controller": "YIBAO_COMPOSE_KAFKA_CONTROLLER_PORT",
    "postgres": "YIBAO_COMPOSE_PG_PORT",
    "payment": "YIBAO_COMPOSE_PAYMENT_PORT",
    "ledger": "YIBAO_COMPOSE_LEDGER_PORT",
    "risk": "YIBAO_COMPOSE_RISK_PORT",
    "notify": "YIBAO_COMPOSE_NOTIFY_PORT",
    "sms": "YIBAO_COMPOSE_SMS_PORT",
    "bank": "YIBAO_COMPOSE_BANK_PORT",
}


class Compose:
    def __init__(self, workdir: Path) -> None:
        self.project = f"yibao-ct-{secrets.token_hex(3)}"
        self.secrets_file = workdir / "secrets.env"
        self.secrets = common.generate_secrets()
        common.write_private(self.secrets_file, common.render_env(self.secrets), 0o600)
        self.ports = {name: free_port() for name in PORT_VARS}
        self.env = {
            **os.environ,
            "YIBAO_SECRETS_ENV": str(self.secrets_file),
            **{var: str(self.ports[name]) for name, var in PORT_VARS.items()},
            # The images of today's code (make images), not whatever :latest is.
            **{f"YIBAO_{n.upper()}_IMAGE": project_image(n) or "" for n in IMAGES},
        }
        self.base = [
            *compose_command(),
            "-p",
            self.project,
            "--env-file",
            str(self.secrets_file),
            "-f",
            str(COMPOSE_FILE),
        ]

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.base, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def container(self, service: str) -> str:
        return self.run("ps", "-q", service).stdout.strip()

    def health(self, service: str) -> str:
        cid = self.container(service)
        if not cid:
            return "absent"
        out = subprocess.run(
            ["docker", "inspect", "--format", "{{json .State}}", cid],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        state = json.loads(out or "{}")
        return str((state.get("Health") or {}).get("Status") or state.get("Status"))

    def wait_healthy(self, services: tuple[str, ...], within: float = 240) -> None:
        deadline = time.monotonic() + within
        while True:
            states = {s: self.health(s) for s in services}
            if all(v == "healthy" for v in states.values()):
                return
            if time.monotonic() > deadline:
                logs = self.run("logs", "--tail", "20").stdout[-6000:]
                pytest.fail(f"not healthy within {within:.0f}s: {states}\n{logs}")
            time.sleep(2)


@pytest.fixture
def compose(tmp_path: Path) -> Iterator[Compose]:
    containers_wanted()
    stack = Compose(tmp_path)
    try:
        yield stack
    finally:
        down = stack.run("down", "-v", "--remove-orphans")
        assert down.returncode == 0, down.stderr


def test_compose_refuses_to_start_without_its_secrets(compose: Compose) -> None:
    env = {k: v for k, v in compose.env.items() if k not in compose.secrets}
    env["YIBAO_SECRETS_ENV"] = str(compose.secrets_file.with_name("missing.env"))
    bare = [a for a in compose.base if a not in (str(compose.secrets_file), "--env-file")]
    proc = subprocess.run(
        [*bare, "config", "-q"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert "secrets.env" in proc.stderr, proc.stderr


async def test_the_stack_comes_up_healthy_and_takes_a_premium(compose: Compose) -> None:
    up = compose.run("up", "-d")
    assert up.returncode == 0, up.stderr[-4000:]
    compose.wait_healthy((*LONG_RUNNING, "notify"))
    url = {n: f"http://127.0.0.1:{compose.ports[n]}" for n in ("payment", "ledger", "sms")}
    yibao = Yibao(url["payment"], url["ledger"], url["sms"], compose.secrets["API_KEY"])
    answer = await yibao.create_payment(premium_body("u-compose-" + secrets.token_hex(4), 12300))
    assert answer.status_code == 202, answer.text
    paid = await yibao.wait_for(answer.json()["id"], FINAL, timeout=90)
    assert paid["status"] == "succeeded", paid
    # Another caller's key does not see it (the keys came from secrets.env).
    other = yibao.as_caller(compose.secrets["API_KEY_2"])
    with pytest.raises(Exception, match="404"):
        await other.get_payment(paid["id"])
