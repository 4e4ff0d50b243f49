"""Tracing's pure parts (issue 14): off by default, which environment turns it on, the
``traceparent`` round trip through a Kafka header, and the two rules on top of the SDK
(no trace for an orphan statement, no query string in any URL)."""

from __future__ import annotations

import asyncpg
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision

from shared import tracing

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}


def test_off_by_default_sets_up_nothing() -> None:
    assert tracing.setup_tracing("payment", environ={}) is False
    assert not tracing.enabled()
    # No provider was set: the API's proxy still stands in, and nothing is patched.
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert not hasattr(asyncpg.connection.Connection.execute, "__wrapped__")
    # The hot-path helpers hand back the one shared do-nothing object: no span objects.
    assert tracing.current_traceparent() is None
    assert tracing.publishing("00-" + "1" * 32 + "-" + "2" * 16 + "-01") is tracing.NO_SPAN
    span = tracing.processing(
        group="ledger",
        topic="payments.v1",
        partition=0,
        offset=1,
        headers=[("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")],
        event_id="e",
        event_type="PaymentAuthorized",
    )
    assert span is tracing.NO_SPAN


@pytest.mark.parametrize(
    ("env", "kinds"),
    [
        ({}, []),
        (ENDPOINT, [OTLPSpanExporter]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, [OTLPSpanExporter]),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, []),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}, []),
        ({"OTEL_TRACES_EXPORTER": "console"}, [ConsoleSpanExporter]),
        (
            {**ENDPOINT, "OTEL_TRACES_EXPORTER": "otlp,console"},
            [OTLPSpanExporter, ConsoleSpanExporter],
        ),
    ],
)
def test_exporters_from_env(env: dict[str, str], kinds: list[type]) -> None:
    assert [type(e) for e in tracing.exporters_from_env(env)] == kinds


@pytest.mark.parametrize(
    "env",
    [
        {**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        {"OTEL_TRACES_EXPORTER": "jaeger"},
    ],
)
def test_exporters_from_env_refuses_what_it_cannot_do(env: dict[str, str]) -> None:
    with pytest.raises(tracing.TracingConfigError):
        tracing.exporters_from_env(env)


def test_traceparent_round_trip_through_a_kafka_header() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("stage") as span:
        sent = tracing.traceparent_of()
    ctx = span.get_span_context()
    assert sent == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    headers = [("ce_id", b"x"), ("traceparent", sent.encode())]
    assert tracing.header_traceparent(headers) == sent.encode()
    parent = trace.get_current_span(tracing.context_of(tracing.header_traceparent(headers)))
    received = parent.get_span_context()
    assert (received.trace_id, received.span_id) == (ctx.trace_id, ctx.span_id)
    assert received.is_remote and received.trace_flags.sampled


@pytest.mark.parametrize("value", [None, b"", "garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"])
def test_no_or_bad_traceparent_means_a_new_trace(value: str | bytes | None) -> None:
    assert not trace.get_current_span(tracing.context_of(value)).get_span_context().is_valid
    assert tracing.header_traceparent(None) is None
    assert tracing.header_traceparent([("ce_type", b"x")]) is None


def test_an_orphan_statement_starts_no_trace() -> None:
    sampler = tracing.NoOrphanStatements(ALWAYS_ON)
    db = {"db.system": "postgresql", "db.statement": "SELECT 1"}
    orphan = sampler.should_sample(None, 1, "SELECT", trace.SpanKind.CLIENT, db)
    assert orphan.decision is Decision.DROP
    with TracerProvider().get_tracer("t").start_as_current_span("request"):
        child = sampler.should_sample(None, 1, "SELECT", trace.SpanKind.CLIENT, db)
    assert child.decision is Decision.RECORD_AND_SAMPLE
    request = sampler.should_sample(None, 1, "POST", trace.SpanKind.SERVER, {"http.method": "POST"})
    assert request.decision is Decision.RECORD_AND_SAMPLE
    call = sampler.should_sample(None, 1, "POST", trace.SpanKind.CLIENT, {"http.url": "http://b"})
    assert call.decision is Decision.RECORD_AND_SAMPLE


def test_no_query_string_leaves_in_a_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(tracing.RedactingExporter(exporter)))
    attributes = {
        "http.target": "/v1/receipts/r1?code=12345678",
        "http.url": "http://127.0.0.1:8002/v1/receipts/r1?code=12345678",
        "url.full": "http://127.0.0.1:8099/inbox?phone=13800138000",
        "url.query": "phone=13800138000",
        "url.path": "/inbox",
    }
    with provider.get_tracer("t").start_as_current_span("GET") as started:
        started.set_attributes(attributes)  # some are set after the start
    provider.get_tracer("t").start_span("plain", attributes={"url.path": "/x"}).end()
    span, plain = exporter.get_finished_spans()
    assert plain.attributes == {"url.path": "/x"}
    assert span.context == started.get_span_context() and span.end_time is not None
    assert span.attributes == {
        "http.target": "/v1/receipts/r1?REDACTED",
        "http.url": "http://127.0.0.1:8002/v1/receipts/r1?REDACTED",
        "url.full": "http://127.0.0.1:8099/inbox?REDACTED",
        "url.query": "REDACTED",
        "url.path": "/inbox",
    }
