"""Tracing across HTTP, PostgreSQL and Kafka on the real stack (issue 14).

One request stages an event; the relay publishes it; a consumer applies it and stages a
second, which a second consumer applies (tests/integration/tracing_app.py, its own
process). Every span of that story is in ONE trace, tied across Kafka by the
``traceparent`` the outbox stored and the relay sent as a header.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from shared.topics import TopicNames
from tests.support import Infra

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
Span = dict[str, Any]


def run_pipeline(dsn: str, bootstrap: str, first: str, second: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration.tracing_app", dsn, bootstrap, first, second],
        cwd=REPO,
        # Headers recorded, as an operator may ask: a credential's value never is.
        env={
            **os.environ,
            "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": "authorization,x-request-id",
        },
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def one(spans: list[Span], **match: Any) -> Span:
    found = [s for s in spans if all(s[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, [(s["name"], s["kind"]) for s in spans])
    return found[0]


def ancestors(span: Span, by_id: dict[str, Span]) -> list[str]:
    names = []
    while span["parent_id"] in by_id:
        span = by_id[span["parent_id"]]
        names.append(span["name"])
    return names


async def test_one_trace_from_the_request_through_two_kafka_hops(
    infra: Infra,
    kafka_topics: TopicNames,
    new_database: Callable[[], Awaitable[str]],
) -> None:
    first, second = kafka_topics.payments, kafka_topics.risk
    result = run_pipeline(await new_database(), infra.kafka_bootstrap, first, second)
    assert result["effects"] == 2
    spans: list[Span] = result["spans"]

    request = one(spans, kind="SERVER", name="POST /stage")
    trace_id = request["trace_id"]
    story = [s for s in spans if s["trace_id"] == trace_id]
    by_id = {s["span_id"]: s for s in story}

    # The outbox stored the staging transaction's context, hop 1's stage included.
    assert len(result["traceparents"]) == 2
    assert all(tp.startswith(f"00-{trace_id}-") for tp in result["traceparents"])

    # Kafka: each send is the staged context's child, each process span the send's
    # child through the header (two processes' worth of spans share nothing else).
    send1 = one(story, kind="PRODUCER", name=f"{first} send")
    process1 = one(story, kind="CONSUMER", name=f"{first} process")
    send2 = one(story, kind="PRODUCER", name=f"{second} send")
    process2 = one(story, kind="CONSUMER", name=f"{second} process")
    assert process1["parent_id"] == send1["span_id"]
    assert process2["parent_id"] == send2["span_id"]
    assert "POST /stage" in ancestors(send1, by_id)
    assert f"{first} process" in ancestors(send2, by_id)
    assert process1["attributes"]["messaging.consumer.group.name"] == "hop1"
    assert process2["attributes"]["yibao.event_type"] == "LimitReleased"

    # PostgreSQL: the request's outbox insert and each handler's statements, in place.
    statements = [s for s in story if s["attributes"].get("db.system") == "postgresql"]
    under = {
        name: [s for s in statements if name in ancestors(s, by_id)]
        for name in ("POST /stage", f"{first} process", f"{second} process")
    }
    assert any("outbox" in s["attributes"]["db.statement"] for s in under["POST /stage"])
    assert any("effects" in s["attributes"]["db.statement"] for s in under[f"{first} process"])
    assert any("outbox" in s["attributes"]["db.statement"] for s in under[f"{first} process"])
    assert any("effects" in s["attributes"]["db.statement"] for s in under[f"{second} process"])

    # No statement without a parent (the relay's claims, the pollers) made a trace.
    assert not [s for s in spans if s["attributes"].get("db.system") and s["parent_id"] is None]
    # Nor does a query string leave: the request's ?code= is redacted.
    target = request["attributes"].get("http.target") or request["attributes"].get("url.query")
    assert target is not None and "12345678" not in json.dumps(spans)
    assert request["service"] == "yibao-tracing-test"
    assert request["attributes"]["http.request.header.authorization"] == ["[REDACTED]"]
    assert request["attributes"]["http.request.header.x_request_id"] == ["req-1"]
    assert "yb_secret_key" not in json.dumps(spans)
    # One span per request, not one more per ASGI message.
    assert not [s for s in story if s["name"].endswith((" http send", " http receive"))]
