"""OpenTelemetry tracing, configured by the standard OTEL_* environment variables.

Off unless OTEL_TRACES_EXPORTER (otlp | console) or an OTLP endpoint is set, so the embedded
`./taskw up` pays nothing. Trace context crosses NATS as a W3C `traceparent` message header.
"""

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from opentelemetry import propagate, trace
from opentelemetry.context import Context

if TYPE_CHECKING:  # the SDK is imported by setup_tracing only when tracing is on (~20 ms otherwise)
    from opentelemetry.sdk.trace import TracerProvider

_provider: "TracerProvider | None" = None


def setup_tracing(service: str) -> bool:
    """Install a tracer provider for `service`; returns whether tracing is on."""
    global _provider
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    if disabled or exporter == "none" or (not exporter and not endpoint):
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    if exporter == "console":
        span_exporter: SpanExporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)})
    _provider = TracerProvider(resource=resource)
    _provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(_provider)
    return True


def shutdown_tracing() -> None:
    """Flush spans still in the batch processor (call on a clean exit)."""
    if _provider is not None:
        _provider.shutdown()


def tracing_on() -> bool:
    """Whether setup_tracing installed a provider: hot paths skip building no-op spans when not."""
    return _provider is not None


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, or None when tracing is off."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def context_from(traceparent: str | None = None, headers: Mapping[str, str] | None = None) -> Context:
    """The trace context carried by a traceparent string or by message headers."""
    carrier = dict(headers or {})
    if traceparent:
        carrier["traceparent"] = traceparent
    return propagate.extract(carrier)


def trace_id_of(traceparent: str | None) -> str | None:
    return traceparent.split("-")[1] if traceparent and traceparent.count("-") == 3 else None


def ns(seconds: float) -> int:
    """Epoch seconds to the nanoseconds OpenTelemetry wants for explicit start/end times."""
    return int(seconds * 1e9)
