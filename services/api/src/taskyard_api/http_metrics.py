"""The API's own Prometheus figures: requests by route template, method and status."""

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
JOBS_PRUNED = Counter(
    "taskyard_api_jobs_pruned_total",
    "Finished jobs deleted from the database by this API process (retention)",
    registry=REGISTRY,
)

JOBS_PUBLISHED = Counter(
    "taskyard_api_jobs_published_total",
    "Job messages this api process published to JOBS and JetStream stored",
    registry=REGISTRY,
)
# A message JetStream already held (same Nats-Msg-Id in the duplicate window) and dropped: the
# outbox's resend after a crash, or two api processes publishing one job. Dedupe is the backstop;
# one outbox sweeper at a time (db.one_process_at_a_time) keeps this near 0 (tests/test_two_apis.py).
JOBS_PUBLISH_DUPLICATES = Counter(
    "taskyard_api_jobs_publish_duplicates_total",
    "Job messages JetStream dropped as duplicates of one it held (dedupe acted)",
    registry=REGISTRY,
)
EVENTS_UNPROJECTABLE = Counter(
    "taskyard_api_events_unprojectable_total",
    "Events the projector could not apply even alone (logged with their EVENTS sequence, skipped).",
    registry=REGISTRY,
)
GATE_MOVES = Counter(
    "taskyard_api_gate_moves_total",
    "Jobs the gate keeper of this API process moved: released (parents done), skipped (a parent "
    "ended as its edge does not accept), failed (an input missing). Counted after the commit.",
    ["move"],
    registry=REGISTRY,
)
GATE_RELEASE = Histogram(
    "taskyard_api_gate_release_seconds",
    "From the end of the parent that opened a job's last edge to the job's release.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
GATE_DUE_LAG = Histogram(
    "taskyard_api_gate_due_lag_seconds",
    "From a scheduled job's run_at to the gate timer opening it.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
# Totals only: a label per concurrency or rate key would be unbounded (one per tenant).
GATE_ADMISSIONS = Counter(
    "taskyard_api_gate_admissions_total",
    "Throttled jobs this API process admitted to JOBS, by the kind of key that admitted them "
    "(a job with both keys counts once for each). Counted after the commit.",
    ["kind"],
    registry=REGISTRY,
)
GATE_KEY_CANCELS = Counter(
    "taskyard_api_gate_key_cancels_total",
    "Jobs a concurrency key's strategy cancelled (keep_latest, cancel_newest, cancel_in_progress).",
    ["strategy"],
    registry=REGISTRY,
)
WORK_CREATED = Counter(
    "taskyard_api_work_created_total", "Batches and workflows stored.", ["kind"], registry=REGISTRY
)
SCHEDULE_FIRES = Counter(
    "taskyard_api_schedule_fires_total",
    "Schedule fire times handled by this process, by outcome (created, skipped, failed; lost: "
    "another api process fired it; dropped: missed and not caught up).",
    ["outcome"],
    registry=REGISTRY,
)
BATCHES_COMPLETED = Counter(
    "taskyard_api_batches_completed_total", "Batches whose last member ended.", registry=REGISTRY
)
BATCH_DURATION = Histogram(
    "taskyard_api_batch_duration_seconds",
    "From a batch's submit to the end of its last member.",
    buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400),
    registry=REGISTRY,
)


class MetricsMiddleware:
    """Counts and times every HTTP request.

    Plain ASGI rather than Starlette's BaseHTTPMiddleware, which runs each request in a task group
    with memory streams: several times the cost of the whole submit handler.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The route template, never the raw path: job ids would explode label cardinality.
            name = getattr(scope.get("route"), "path", "unmatched")
            LATENCY.labels(scope["method"], name).observe(time.perf_counter() - start)
            REQUESTS.labels(scope["method"], name, str(status)).inc()
