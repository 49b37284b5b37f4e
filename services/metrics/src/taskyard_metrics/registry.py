"""The metrics service's own Prometheus registry and the event-driven metrics on it.

Labels are bounded on purpose: queue, priority, job type and status. A job id never becomes a label,
it would create one time series per job.
"""

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .costs import Budget, CostMetrics
from .label_children import Children

# Jobs range from a millisecond no-op to multi-hour batch work, hence the wide, sparse buckets.
RUN_BUCKETS_S = (
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
    7200,
    21600,
    86400,
)
WAIT_BUCKETS_S = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    900,
    3600,
    21600,
    86400,
)


@dataclass
class Metrics:
    """Every metric fed by the EVENTS stream, plus process metrics, on a private registry."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    # Queue-wait SLO targets (MetricsSettings.wait_target_s / wait_targets), in seconds.
    wait_target_s: float = 60.0
    wait_targets: dict[str, float] = field(default_factory=dict)
    # The (queue, type) pairs whose series events.init_series exported: it runs once a pair, not
    # once an event (its dozen `labels()` lookups were ~40 % of this service's CPU per job).
    initialised: set[tuple[str, str]] = field(default_factory=set)
    # Costs: the label names spend is counted by, and the budgets (costs.py).
    cost_labels: tuple[str, ...] = ("team",)
    budgets: list[Budget] = field(default_factory=list)
    # `child(metric, *values)`: metric.labels(*values), looked up once (label_children.py).
    child: Children = field(default_factory=Children)

    def __post_init__(self) -> None:
        r = self.registry
        # The process/platform/GC collectors of the default registry are bound to it; make our own.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.submitted = Counter(
            "taskyard_jobs_submitted_total", "Jobs queued (event `queued`).", ["queue", "type"], registry=r
        )
        self.started = Counter(
            "taskyard_jobs_started_total", "Job attempts started by a worker.", ["queue", "type"], registry=r
        )
        self.finished = Counter(
            "taskyard_jobs_finished_total",
            "Jobs that reached a final state (succeeded, failed, cancelled, dead).",
            ["queue", "type", "status"],
            registry=r,
        )
        self.retries = Counter(
            "taskyard_job_retries_total",
            "Failed attempts that will be retried.",
            ["queue", "type"],
            registry=r,
        )
        self.worker_lost = Counter(
            "taskyard_job_worker_lost_total",
            "Attempts whose worker went silent (ack wait expired).",
            ["queue"],
            registry=r,
        )
        self.workers_lost = Counter(
            "taskyard_workers_lost_total",
            "Workers of a queue whose heartbeat went stale or expired without a clean exit.",
            ["queue"],
            registry=r,
        )
        self.run_duration = Histogram(
            "taskyard_job_run_duration_seconds",
            "Run time of one attempt, from start to its outcome.",
            ["queue", "priority"],
            buckets=RUN_BUCKETS_S,
            registry=r,
        )
        self.queue_wait = Histogram(
            "taskyard_job_queue_wait_seconds",
            "Time from enqueue to the start of an attempt.",
            ["queue", "priority"],
            buckets=WAIT_BUCKETS_S,
            registry=r,
        )
        # The queue-wait SLI, counted against each queue's own target: the histogram's buckets are
        # fixed for every queue, a per-queue target is not.
        self.wait_slo = Counter(
            "taskyard_job_wait_target_total",
            "Started attempts by whether they waited at most their queue's wait target.",
            ["queue", "outcome"],
            registry=r,
        )
        self.wait_target = Gauge(
            "taskyard_job_wait_target_seconds",
            "The queue-wait target of each queue seen (TASKYARD_METRICS_WAIT_TARGET_S / _WAIT_TARGETS).",
            ["queue"],
            registry=r,
        )
        self.checkpoints_requested = Counter(
            "taskyard_checkpoints_requested_total",
            "Checkpoints (approvals, questions) jobs paused at.",
            ["queue", "kind"],
            registry=r,
        )
        self.checkpoint_decision = Histogram(
            "taskyard_checkpoint_decision_seconds",
            "Time from a checkpoint's request to its decision.",
            ["queue", "kind", "decision"],
            buckets=(1, 10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 72 * 3600),
            registry=r,
        )
        self.events_processed = Counter(
            "taskyard_events_processed_total", "EVENTS messages consumed and acked.", registry=r
        )
        self.events_invalid = Counter(
            "taskyard_events_invalid_total", "EVENTS messages that were not valid JobEvent JSON.", registry=r
        )
        self.costs = CostMetrics(r, self.cost_labels, self.budgets)
        self.up = Gauge("taskyard_metrics_up", "1 while the metrics service runs.", registry=r)
        self.up.set(1)
        self.nats_connected = Gauge(
            "taskyard_metrics_nats_connected", "1 when the metrics service is connected to NATS.", registry=r
        )
        self.poll_errors = Counter(
            "taskyard_metrics_poll_errors_total", "Failed reads of JetStream/KV state.", registry=r
        )
        self.last_poll = Gauge(
            "taskyard_metrics_last_poll_timestamp_seconds",
            "Unix time of the last successful JetStream/KV read (queue and worker gauges date from it).",
            registry=r,
        )

    def target_for(self, queue: str) -> float:
        """The queue-wait target of `queue` in seconds."""
        return self.wait_targets.get(queue, self.wait_target_s)
