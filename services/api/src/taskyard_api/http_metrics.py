"""The API's own Prometheus figures: requests by route template, method and status."""

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
REQUESTS = Counter(
    "taskyard_api_requests_total", "HTTP requests", ["method", "route", "status"], registry=REGISTRY
)
LATENCY = Histogram(
    "taskyard_api_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)
# Read from the database by the checkpoint loop: every API replica reports the same number,
# so dashboards take max() across replicas.
CHECKPOINTS_PENDING = Gauge(
    "taskyard_checkpoints_pending", "Checkpoints waiting for a decision.", ["kind"], registry=REGISTRY
)
JOBS_SUBMITTED = Counter(
    "taskyard_api_jobs_submitted_total", "Jobs accepted by this API process", registry=REGISTRY
)


class MetricsMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        # The route template, never the raw path: job ids would explode label cardinality.
        name = getattr(route, "path", "unmatched")
        LATENCY.labels(request.method, name).observe(time.perf_counter() - start)
        REQUESTS.labels(request.method, name, str(response.status_code)).inc()
        return response
