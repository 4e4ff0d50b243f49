"""``python -m services.payment`` and ``services.risk``: ``--help`` prints usage and
exits without connecting to anything."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("service", ["payment", "risk"])
def test_help_prints_usage_and_exits(service: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", f"services.{service}", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            "PATH": "",
            "KAFKA_BOOTSTRAP": "127.0.0.1:1",
            "DATABASE_URL": "postgresql://x@127.0.0.1:1/x",
        },
    )
    assert done.returncode == 0, done.stderr
    assert f"python -m services.{service}" in done.stdout
