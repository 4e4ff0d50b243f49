"""OpenTelemetry tracing, off unless an exporter is configured (issue 14).

``setup_tracing(service)`` runs once per process (``shared.runtime.prepare_service``
after the migrations, the development bank's ``__main__``). With no exporter in the
environment it does nothing: no provider, no instrumentation, no span objects, and the
helpers below return at once. With one, it installs an SDK tracer provider and the
maintained instrumentations: asyncpg (one span per statement, the SQL text with its
``$n`` placeholders and never the parameters), httpx (the calls to risk and the bank,
carrying ``traceparent``; notify's SMS sender posts through ``shared.outbound``, which
makes the same client span itself) and aiokafka (a ``<topic> send`` span per
published message, whose context goes out in the ``traceparent`` header, and
``<topic> receive`` spans); ``serve`` adds the FastAPI app's (``instrument_app``).

Across Kafka the context is the one of the transaction that staged the event:
``write_outbox`` stores ``current_traceparent()`` in the outbox row, the relay sends each
row inside ``publishing(row traceparent)``, so its send span is that context's child,
and ``InboxConsumer`` applies each event inside ``processing(...)``, a
``<topic> process`` span whose parent is the producer's context from the header, so the
handler's statements and the events it stages join the same trace.

Environment (the standard OpenTelemetry names):

* ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``): turns
  tracing on, exporting OTLP over HTTP/protobuf (e.g. ``http://collector:4318``);
  ``OTEL_EXPORTER_OTLP_HEADERS``, ``…_TIMEOUT``, ``…_CERTIFICATE`` as usual.
* ``OTEL_TRACES_EXPORTER``: ``otlp``, ``console`` (spans on stdout, for a look) or
  ``none``; a comma list for several. Set, it decides; unset, an endpoint means ``otlp``.
* ``OTEL_SDK_DISABLED=true``: off whatever else is set.
* ``OTEL_SERVICE_NAME`` (default ``yibao-<service>``), ``OTEL_RESOURCE_ATTRIBUTES``,
  ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` (default: every trace),
  ``OTEL_BSP_*`` (the batch exporter's queue and delay).

Two rules on top of the SDK's: a statement with no span around it (a worker's poll, the
relay's claim) starts no trace of its own, so idle services export nothing; and the
query string of every URL is replaced by ``REDACTED`` (a receipt's 校验码, the dev
gateway's phone filter), as no secret or clear phone may leave in telemetry either.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

if TYPE_CHECKING:
    from fastapi import FastAPI

log = structlog.get_logger(__name__)

TRACEPARENT = "traceparent"  # the W3C header, on HTTP requests and Kafka messages
REDACTED = "REDACTED"
# Probes and scrapes: frequent, never part of a payment; not traced.
UNTRACED_PATHS = "/healthz,/livez,/readyz,/metrics"
SECRET_HEADERS = ["authorization", "cookie", "session", "token", "key", "secret"]
_W3C = TraceContextTextMapPropagator()
# What the helpers return when tracing is off: one shared do-nothing context manager.
NO_SPAN: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
_URL_KEYS = ("http.target", "http.url", "url.full")


class TracingConfigError(ValueError):
    """The OTEL_* environment asks for something this build does not do."""


@dataclass
class _Tracing:
    provider: TracerProvider
    tracer: trace.Tracer


_state: _Tracing | None = None


def enabled() -> bool:
    """Whether ``setup_tracing`` turned tracing on in this process."""
    return _state is not None


def exporters_from_env(environ: Mapping[str, str] | None = None) -> list[SpanExporter]:
    """The span exporters the environment asks for; none means tracing stays off."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    chosen = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not chosen:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        chosen = "otlp" if endpoint and endpoint.strip() else "none"
    exporters: list[SpanExporter] = []
    for name in (n.strip() for n in chosen.split(",")):
        if name in ("", "none"):
            continue
        if name == "otlp":
            protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
            )
            if protocol.strip() != "http/protobuf":
                raise TracingConfigError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: Yibao exports OTLP over"
                    " http/protobuf only (the collector's port 4318); unset it or set"
                    " http/protobuf"
                )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )

            exporters.append(OTLPSpanExporter())
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        else:
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER={chosen}: {name!r} is not one of otlp, console, none"
            )
    return exporters


def setup_tracing(
    service_name: str,
    *,
    exporters: Sequence[SpanExporter] | None = None,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Turn tracing on for this process when an exporter is configured (``exporters``
    given, as tests do, or from the environment); True when it is on. Once per process:
    a second call changes nothing."""
    global _state
    if _state is not None:
        return True
    chosen = list(exporters) if exporters is not None else exporters_from_env(environ)
    if not chosen:
        return False
    from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    env = os.environ if environ is None else environ
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: f"yibao-{service_name}"}
    # The sampler the environment chose (OTEL_TRACES_SAMPLER), behind our one rule.
    configured = TracerProvider(shutdown_on_exit=False).sampler
    provider = TracerProvider(
        resource=Resource.create(attributes), sampler=NoOrphanStatements(configured)
    )
    for exporter in chosen:
        provider.add_span_processor(BatchSpanProcessor(RedactingExporter(exporter)))
    trace.set_tracer_provider(provider)
    AsyncPGInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    AIOKafkaInstrumentor().instrument(tracer_provider=provider)
    _state = _Tracing(provider, provider.get_tracer("yibao"))
    log.info(
        "tracing_on",
        service=service_name,
        exporters=[type(e).__name__ for e in chosen],
        sampler=provider.sampler.get_description(),
    )
    return True


def instrument_app(app: FastAPI) -> None:
    """A server span per HTTP request (continuing the caller's ``traceparent``), probes
    and ``/metrics`` aside; nothing when tracing is off."""
    if _state is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=_state.provider,
        excluded_urls=UNTRACED_PATHS,
        # One span per request: not one more per ASGI message sent and received.
        exclude_spans=["receive", "send"],
        # Headers are recorded only when OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_* ask
        # for them; even then, never a credential's value.
        http_capture_headers_sanitize_fields=SECRET_HEADERS,
    )


def shutdown_tracing() -> None:
    """Export what is still queued (at the end of ``serve``)."""
    if _state is not None:
        _state.provider.force_flush()


# -- the context across Kafka -----------------------------------------------------------


def traceparent_of(ctx: otel_context.Context | None = None) -> str | None:
    """The W3C ``traceparent`` of ``ctx`` (default: the current context), or None."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=ctx)
    return carrier.get(TRACEPARENT)


def context_of(traceparent: str | bytes | None) -> otel_context.Context:
    """The remote parent a ``traceparent`` names (an empty context when absent or
    malformed: the span it parents starts a trace)."""
    if isinstance(traceparent, bytes):
        traceparent = traceparent.decode("ascii", errors="replace")
    if not traceparent:
        return otel_context.Context()
    return _W3C.extract({TRACEPARENT: traceparent}, context=otel_context.Context())


def current_traceparent() -> str | None:
    """What ``write_outbox`` stores with a staged event: the caller's trace, or None
    (always None when tracing is off)."""
    if _state is None:
        return None
    return traceparent_of()


def header_traceparent(headers: Sequence[tuple[str, bytes | None]] | None) -> bytes | None:
    """The ``traceparent`` header of a Kafka message, if any."""
    for key, value in headers or ():
        if key == TRACEPARENT:
            return value
    return None


def publishing(traceparent: str | None) -> contextlib.AbstractContextManager[None]:
    """Around the relay's ``producer.send`` of one outbox row: the row's trace is the
    current context, so the Kafka instrumentation's send span is its child and its
    context is what the ``traceparent`` header carries."""
    if _state is None or not traceparent:
        return NO_SPAN
    return _attached(context_of(traceparent))


@contextlib.contextmanager
def _attached(ctx: otel_context.Context) -> Iterator[None]:
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def processing(
    *,
    group: str,
    topic: str,
    partition: int,
    offset: int,
    headers: Sequence[tuple[str, bytes | None]] | None,
    event_id: str,
    event_type: str,
) -> contextlib.AbstractContextManager[Any]:
    """The span of applying one event: ``<topic> process``, a child of the producer's
    context from the message's ``traceparent`` header; the handler's statements and
    the events it stages are its children."""
    if _state is None:
        return NO_SPAN
    return _state.tracer.start_as_current_span(
        f"{topic} process",
        context=context_of(header_traceparent(headers)),
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": topic,
            "messaging.destination.partition.id": str(partition),
            "messaging.kafka.offset": offset,
            "messaging.consumer.group.name": group,
            "messaging.message.id": event_id,
            "yibao.event_type": event_type,
        },
    )


# -- the two rules ----------------------------------------------------------------------


class NoOrphanStatements(Sampler):
    """A database statement with no parent span is not traced (a worker's poll, the
    relay's claim); everything else as ``delegate`` (the configured sampler) decides."""

    def __init__(self, delegate: Sampler) -> None:
        self._delegate = delegate

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: trace.SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if (
            kind is trace.SpanKind.CLIENT
            and attributes
            and ("db.system" in attributes or "db.system.name" in attributes)
            and not trace.get_current_span(parent_context).get_span_context().is_valid
        ):
            return SamplingResult(Decision.DROP)
        return self._delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"NoOrphanStatements{{{self._delegate.get_description()}}}"


def redact_urls(attributes: Attributes) -> dict[str, Any] | None:
    """``attributes`` with every URL's query string replaced by ``REDACTED``; None when
    there is none to replace."""
    if not attributes:
        return None
    changed = dict(attributes)
    if "url.query" in changed:
        changed["url.query"] = REDACTED
    for key in _URL_KEYS:
        value = changed.get(key)
        if isinstance(value, str) and "?" in value:
            changed[key] = value.split("?", 1)[0] + "?" + REDACTED
    return changed if changed != dict(attributes) else None


class RedactingExporter(SpanExporter):
    """Hands ``inner`` the spans with no query string in any URL attribute (the HTTP
    instrumentations set some of them after the span started, so this is done on the
    finished span, before it leaves the process)."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._inner.export([_redacted(span) for span in spans])

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _redacted(span: ReadableSpan) -> ReadableSpan:
    attributes = redact_urls(span.attributes)
    if attributes is None:
        return span
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=span.events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )
