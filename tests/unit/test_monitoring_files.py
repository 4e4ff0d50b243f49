"""The dashboard and the alert rules in deploy/monitoring read only series the services
export (shared/metrics.py): a renamed metric fails here, not silently on a wall screen.
(promtool and Grafana's schema check them as documents: make monitoring-check.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest

from shared.metrics import GAUGES, REGISTRY

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
SERIES = re.compile(r"\b(yibao_[a-z_]+)")
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def exported() -> set[str]:
    """Every metric family name the registry describes, with Prometheus' suffixes."""
    names = set(GAUGES)
    for line in generate_latest(REGISTRY).decode().splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
    names |= {
        f"yibao_consumer_events_{n}" for n in ("applied", "duplicates", "dead_lettered", "skipped")
    }
    names |= {"yibao_consumer_redelivered_batches", "yibao_consumer_lag_events"}
    return names


def base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def used_in(text: str) -> set[str]:
    return {base(name) for name in SERIES.findall(text)}


def test_the_dashboard_queries_only_exported_series() -> None:
    board = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = "\n".join(t["expr"] for p in board["panels"] for t in p["targets"])
    used = used_in(exprs)
    assert used, "the dashboard queries nothing"
    assert used <= exported(), used - exported()


def test_the_alert_rules_read_only_exported_series() -> None:
    rules = (MONITORING / "alerts.yml").read_text()
    exprs = "\n".join(
        line for line in rules.splitlines() if "expr:" in line or line.startswith("          ")
    )
    used = used_in(exprs)
    assert {"yibao_consumer_lag_events", "yibao_outbox_oldest_pending_seconds"} <= used
    assert used <= exported(), used - exported()
