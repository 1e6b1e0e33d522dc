"""Spans: exported through the OpenTelemetry SDK when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, else nothing.

The W3C `traceparent` always flows (shared/context.py): from an HTTP request into the events it
publishes (the CloudEvents `traceparent` extension), from a consumed event into the events its
handler publishes. With an OTLP endpoint configured (the standard `OTEL_EXPORTER_OTLP_*` variables,
HTTP/protobuf), each HTTP request and each consumed event is also a span, exported in batches in the
background, whose ids are the ones that travel, so a trace in Jaeger or Tempo follows a lead from
its capture through every service. Without the variable the SDK is not even imported: a span is then
just a new span id for the traceparent.
"""

import os
from collections.abc import Mapping
from typing import Any

from shared.context import child_traceparent, trace_id_of

_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_state: dict[str, Any] = {}  # "provider" and "tracer" while export is on


class Span:
    """A unit of work in a trace; `traceparent` is what the work passes on."""

    __slots__ = ("traceparent",)

    def __init__(self, traceparent: str) -> None:
        self.traceparent = traceparent

    def end(self, error: str | None = None, name: str | None = None,
            attributes: Mapping[str, str | int] | None = None) -> None:
        """Nothing to record when nothing is exported."""


class _ExportedSpan(Span):
    __slots__ = ("_span",)

    def __init__(self, span: Any) -> None:
        context = span.get_span_context()
        super().__init__(f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}")
        self._span = span

    def end(self, error: str | None = None, name: str | None = None,
            attributes: Mapping[str, str | int] | None = None) -> None:
        if name is not None:
            self._span.update_name(name)
        if attributes:
            self._span.set_attributes(attributes)
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_status(Status(StatusCode.ERROR, error))
        self._span.end()


def enabled() -> bool:
    return "tracer" in _state


def start_span(name: str, parent: str | None, kind: str, attributes: Mapping[str, str] | None = None) -> Span:
    """A child of `parent` (a traceparent; a new trace when absent or malformed). `kind`: server,
    consumer, producer, client or internal."""
    tracer = _state.get("tracer")
    if tracer is None:
        return Span(child_traceparent(parent))
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = TraceContextTextMapPropagator().extract({"traceparent": parent}) if trace_id_of(parent) else Context()
    span = tracer.start_span(name, context=context, kind=trace.SpanKind[kind.upper()], attributes=attributes)
    return _ExportedSpan(span)


def configure_tracing(service: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Turn span export on when an OTLP endpoint is configured; True when it is on. One tracer a
    process (a service process is one service); a second call keeps the first."""
    if enabled():
        return True
    if not any(environ.get(name) for name in _ENDPOINT_VARIABLES) or environ.get("OTEL_SDK_DISABLED") == "true":
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": f"funnelcast-{service}", "service.namespace": "funnelcast"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # endpoint etc. from OTEL_* variables
    _state.update(provider=provider, tracer=provider.get_tracer("funnelcast"))
    return True


def flush(timeout_s: float = 5.0) -> bool:
    provider = _state.get("provider")
    return True if provider is None else bool(provider.force_flush(int(timeout_s * 1000)))


def shutdown_tracing() -> None:
    """Export what is buffered and stop (the service is stopping)."""
    provider = _state.pop("provider", None)
    _state.pop("tracer", None)
    if provider is not None:
        provider.shutdown()
