"""The UI's own Prometheus metrics and the ASGI middleware that feeds them.

Routes are labelled by their template (`/jobs/{job_id}`), never by the concrete path: a job id
label would create one series per job.
"""

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

REQUESTS = Counter(
    "taskyard_ui_requests_total", "HTTP requests served.", ["method", "route", "status"], registry=REGISTRY
)
DURATION = Histogram(
    "taskyard_ui_request_duration_seconds",
    "Time to serve a request (log streams: their whole lifetime).",
    ["route"],
    registry=REGISTRY,
)
API_ERRORS = Counter(
    "taskyard_ui_api_errors_total",
    "Failed calls to the API by kind (unreachable, unauthorized, error).",
    ["kind"],
    registry=REGISTRY,
)


class Telemetry:
    """Pure ASGI middleware (no response buffering, so log streams pass straight through).

    The api's MetricsMiddleware is the same few lines; sharing it through taskyard-common would
    put NATS and OpenTelemetry packages into the UI, which talks to nothing but the API over HTTP.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app raises before starting a response

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(scope["method"], name, str(status)).inc()
            DURATION.labels(name).observe(time.perf_counter() - started)


# No inline script or style anywhere, so the policy can forbid both: injected markup cannot run.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Adds the headers above to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_wrapper)
