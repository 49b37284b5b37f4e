"""Tracing over HTTP: one server span per request (ASGI) and traceparent on outgoing httpx calls.

Health probes and scrapes are not traced: at one probe every few seconds per replica they would
bury the spans anyone looks for. The middleware costs one dict lookup when tracing is off.
"""

from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

if TYPE_CHECKING:  # taskyard-common needs no starlette at run time; every HTTP service has it
    from fastapi.telemetry import TelemetryConfig
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .telemetry import tracing_on

UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class TracingMiddleware:
    """Pure ASGI middleware: continues the caller's trace (W3C traceparent) in a SERVER span.

    The span is named after the route template (`GET /api/v1/jobs/{job_id}`), never the concrete
    path, so span names stay few.
    """

    def __init__(self, app: "ASGIApp", service: str) -> None:
        self.app = app
        self.tracer = trace.get_tracer(service)

    async def __call__(self, scope: "Scope", receive: "Receive", send: "Send") -> None:
        if scope["type"] != "http" or not tracing_on() or scope["path"] in UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope["method"]
        with self.tracer.start_as_current_span(
            method,
            # No traceparent: stay in the current context (a framework span may already be open).
            context=propagate.extract(carrier) if "traceparent" in carrier else None,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        ) as span:

            async def send_wrapper(message: "Message") -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)


async def inject_traceparent(request: Any) -> None:
    """httpx request event hook: the outgoing call carries the current span's traceparent.

    Use as `httpx.AsyncClient(event_hooks={"request": [inject_traceparent]})`; nothing is added
    when no span is current (tracing off).
    """
    propagate.inject(request.headers)


def is_untraced(scope: Any) -> bool:
    """Whether a request is a probe or scrape (kept out of traces)."""
    return scope.get("path") in UNTRACED_PATHS


# FastAPI (>= 0.16x) traces natively once a provider is set: its own server spans would duplicate
# TracingMiddleware's, and it would trace probes. Keep its operation spans, minus the probes.
FASTAPI_TELEMETRY: "TelemetryConfig" = {"tracing": False, "exclude": is_untraced}
