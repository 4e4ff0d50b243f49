"""One payment is one trace across the four services (issue 14), every service a real
process exporting OTLP over HTTP to a collector this test runs.

A system of its own (tracing is configured at start), so the other e2e files run
untraced. The caller sends a ``traceparent``; the payment's whole story (payment's
request, risk's decision, payment applying it, the ledger's posting, payment applying
the ledger's outcome, notify the payment's) must arrive under that trace id, linked
through Kafka.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.e2e.client import premium_body, random_phone
from tests.e2e.conftest import running_system
from tests.support import Infra

pytestmark = pytest.mark.e2e
KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


class Collector:
    """A minimal OTLP/HTTP trace receiver: ``spans`` as flat dicts."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                collector.receive(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def receive(self, request: ExportTraceServiceRequest) -> None:
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        attributes = {
                            a.key: a.value.string_value or a.value.int_value
                            for a in span.attributes
                        }
                        self.spans.append(
                            {
                                "service": resource.get("service.name"),
                                "name": span.name,
                                "kind": KINDS.get(span.kind, str(span.kind)),
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_id": span.parent_span_id.hex() or None,
                                "attributes": attributes,
                            }
                        )

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]

    def close(self) -> None:
        self._server.shutdown()


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def processed(spans: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(service, topic) of every ``<topic> process`` span."""
    return {
        (s["service"], s["attributes"]["messaging.destination.name"].rsplit(".", 2)[-2])
        for s in spans
        if s["name"].endswith(" process")
    }


def complete(spans: list[dict[str, Any]]) -> bool:
    """Every span but the caller's request hangs on a span that has arrived."""
    ids = {s["span_id"] for s in spans}
    return all(s["parent_id"] in ids for s in spans if s["kind"] != "SERVER")


async def test_one_payment_is_one_trace_across_the_four_services(
    infra: Infra, collector: Collector
) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    with running_system(infra, env) as system:
        yibao = system.client
        phone = random_phone()
        # A wallet premium of a new payer: risk approves, the ledger rejects it
        # (insufficient_funds), payment fails it and notify sends the result notice; no
        # bank, no code.
        body = premium_body("u-" + uuid.uuid4().hex[:10], 5000, method="wallet", phone=phone)
        trace_id = secrets.token_hex(16)
        r = await yibao._req(
            "POST",
            f"{yibao.payment_url}/v1/payments",
            json=body,
            headers={
                **yibao._auth(),
                "Idempotency-Key": uuid.uuid4().hex,
                "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
            },
        )
        assert r.status_code == 202, r.text
        p = await yibao.wait_for(r.json()["id"], {"succeeded", "failed", "declined"})
        assert p["status"] == "failed" and p["decline_code"] == "insufficient_funds", p

        wanted = {
            ("yibao-risk", "payments"),
            ("yibao-payment", "risk"),
            ("yibao-ledger", "payments"),
            ("yibao-payment", "ledger"),
            ("yibao-notify", "payments"),  # PaymentFailed: the result notice
        }
        # A span is exported when it ends, after its children: wait for the story and
        # for every parent its spans name (a later event of the same trace, say the
        # ledger's run of PaymentFailed, may still be open when the wanted ones are in).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            wanted <= processed(collector.trace(trace_id)) and complete(collector.trace(trace_id))
        ):
            await asyncio.sleep(0.2)
        story = collector.trace(trace_id)
        assert wanted <= processed(story), sorted(processed(story))

    request = [s for s in story if s["kind"] == "SERVER" and s["service"] == "yibao-payment"]
    assert [s["name"] for s in request] == ["POST /v1/payments"]
    by_id = {s["span_id"]: s for s in story}
    for span in story:  # every span but the request hangs on a span of the same trace
        if span is not request[0]:
            assert span["parent_id"] in by_id, span
    services = {s["service"] for s in story}
    assert {"yibao-payment", "yibao-risk", "yibao-ledger", "yibao-notify"} <= services
    statements = [s for s in story if s["attributes"].get("db.system") == "postgresql"]
    assert {s["service"] for s in statements} >= {"yibao-payment", "yibao-risk", "yibao-ledger"}
    # Nothing personal in any span: not the phone, not the ID number.
    everything = json.dumps(collector.spans, ensure_ascii=False)
    assert phone not in everything
    assert body["beneficiary"]["id_number"] not in everything  # type: ignore[index]
