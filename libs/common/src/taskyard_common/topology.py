"""Every stream, subject, durable and bucket name Taskyard uses, and how to create them.

All names carry the configurable prefix so several installs can share one NATS.
"""

import re
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from .settings import NatsSettings

PRIORITIES = ("high", "normal", "low")
QUEUE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# JetStream's consumer list answers at most this many per request.
CONSUMER_PAGE = 256
# JetStream's error code for "maximum consumers limit reached".
MAX_CONSUMERS_REACHED = 10026


@dataclass(frozen=True)
class Topology:
    """Names and configs derived from NatsSettings; the single source of truth."""

    settings: NatsSettings

    @property
    def prefix(self) -> str:
        return self.settings.prefix

    def _stream(self, kind: str) -> str:
        return f"{self.prefix.upper().replace('-', '_')}_{kind}"

    @property
    def jobs_stream(self) -> str:
        return self._stream("JOBS")

    @property
    def dead_stream(self) -> str:
        return self._stream("DEAD")

    @property
    def events_stream(self) -> str:
        return self._stream("EVENTS")

    @property
    def logs_stream(self) -> str:
        return self._stream("LOGS")

    @property
    def workers_bucket(self) -> str:
        return f"{self.prefix}_workers"

    @property
    def workers_stream(self) -> str:
        """The stream JetStream keeps the workers bucket in (KV buckets are streams named KV_<bucket>)."""
        return f"KV_{self.workers_bucket}"

    @property
    def artifacts_bucket(self) -> str:
        """The Object Store bucket of job inputs and outputs (artifact_store)."""
        return f"{self.prefix}_artifacts"

    @property
    def artifacts_stream(self) -> str:
        """The stream JetStream keeps the artifacts bucket in (Object Stores are OBJ_<bucket>)."""
        return f"OBJ_{self.artifacts_bucket}"

    @staticmethod
    def input_object(sha256: str) -> str:
        """An input file's object: content-addressed, so a file shared by many jobs is stored once."""
        return f"in/{sha256}"

    @staticmethod
    def output_object(job_id: str, name: str) -> str:
        """An output of a job: `name` is already normalised (artifact_names)."""
        return f"out/{job_id}/{name}"

    def job_subject(self, queue: str, priority: str) -> str:
        return f"{self.prefix}.jobs.{queue}.{priority}"

    def dead_subject(self, queue: str) -> str:
        return f"{self.prefix}.dead.{queue}"

    def event_subject(self, job_id: str) -> str:
        return f"{self.prefix}.events.{job_id}"

    @property
    def queued_subject(self) -> str:
        """The API's announcements of what it published (EventBatch of `queued` events): one
        message per publish burst, not one per job. No job id starts with `_`."""
        return f"{self.prefix}.events._queued"

    def batch_subject(self, worker_id: str) -> str:
        """An executor's lifecycle events of several jobs, one EventBatch per message. A subject per
        executor, not per job: nats-server keeps every subject of EVENTS in memory for as long as the
        stream retains it (~200 B each), so only jobs with a journal get their own (event_subject)."""
        return f"{self.prefix}.events._w.{worker_id.replace('.', '_').replace('*', '_').replace('>', '_')}"

    @property
    def batch_subjects(self) -> str:
        """Every executor's batch subject (a wildcard)."""
        return f"{self.prefix}.events._w.>"

    def is_batch_subject(self, subject: str) -> bool:
        """An EventBatch (the API's announcements, an executor's batch) rather than one JobEvent:
        no job id starts with `_`."""
        return subject.startswith(f"{self.prefix}.events._")

    def log_subject(self, job_id: str) -> str:
        return f"{self.prefix}.logs.{job_id}"

    def exec_durable(self, queue: str, priority: str) -> str:
        return f"{self.prefix}_exec_{queue}_{priority}"

    @property
    def projector_durable(self) -> str:
        return f"{self.prefix}_api_projector"

    @property
    def metrics_durable(self) -> str:
        return f"{self.prefix}_metrics"

    def cancel_subject(self, job_id: str = "*") -> str:
        return f"{self.prefix}.control.cancel.{job_id}"

    def drain_subject(self, worker_id: str = "*") -> str:
        return f"{self.prefix}.control.drain.{worker_id}"

    def wake_subject(self, queue: str) -> str:
        """Core NATS, no stream: the API says "new jobs stored in `queue`" so idle executors pull."""
        return f"{self.prefix}.control.wake.{queue}"

    def lease_subject(self, owner: str) -> str:
        """Core NATS request/reply, no stream: calls on the REST workers' leases api process `owner`
        issued (its id is in each lease id). Another api process forwards a lease call here."""
        return f"{self.prefix}.lease.{owner}"

    def stream_configs(self) -> list[StreamConfig]:
        s, r = self.settings, self.settings.replicas
        return [
            StreamConfig(
                name=self.jobs_stream,
                subjects=[f"{self.prefix}.jobs.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                duplicate_window=s.duplicate_window_s,
                allow_direct=True,
                max_consumers=len(PRIORITIES) * s.max_queues,
                num_replicas=r,
            ),
            StreamConfig(
                name=self.dead_stream,
                subjects=[f"{self.prefix}.dead.>"],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                num_replicas=r,
            ),
            StreamConfig(
                name=self.events_stream,
                subjects=[f"{self.prefix}.events.>"],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_age=s.events_max_age_s,
                allow_direct=True,
                num_replicas=r,
            ),
            StreamConfig(
                name=self.logs_stream,
                subjects=[f"{self.prefix}.logs.>"],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_age=s.logs_max_age_s,
                max_bytes=s.logs_max_bytes,
                allow_direct=True,
                num_replicas=r,
            ),
        ]

    def exec_consumer(self, queue: str, priority: str) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.exec_durable(queue, priority),
            filter_subject=self.job_subject(queue, priority),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.settings.ack_wait_s,
            max_deliver=self.settings.max_deliver,
            max_ack_pending=10_000,
            max_waiting=4096,
            num_replicas=self.settings.replicas,
        )

    @property
    def workers_ttl_s(self) -> float:
        """How long a heartbeat entry (or a clean exit's delete marker) lives in the workers bucket."""
        return 3 * self.settings.heartbeat_interval_s

    def workers_kv(self) -> KeyValueConfig:
        return KeyValueConfig(
            bucket=self.workers_bucket,
            ttl=self.workers_ttl_s,
            storage=StorageType.FILE,
            replicas=self.settings.replicas,
        )


async def ensure_streams(js: JetStreamContext, topo: Topology) -> None:
    """Create the streams and the workers bucket, updating configs that drifted."""
    for cfg in topo.stream_configs():
        try:
            await js.add_stream(cfg)
        except BadRequestError:
            await js.update_stream(cfg)
    await js.create_key_value(topo.workers_kv())


class QueueLimitReached(Exception):
    """JOBS has no room for another queue's consumers (TASKYARD_NATS_MAX_QUEUES)."""


async def ensure_queue(js: JetStreamContext, topo: Topology, queue: str) -> None:
    """Create the three priority consumers of one queue if they are missing.

    Existing ones are left alone: re-adding would be an update that could clear an admin's pause.
    """
    for priority in PRIORITIES:
        try:
            await js.consumer_info(topo.jobs_stream, topo.exec_durable(queue, priority))
        except NotFoundError:
            try:
                await js.add_consumer(topo.jobs_stream, topo.exec_consumer(queue, priority))
            except BadRequestError as exc:
                if exc.err_code != MAX_CONSUMERS_REACHED:
                    raise
                raise QueueLimitReached(
                    f"queue {queue!r} would be one more than the {topo.settings.max_queues} queues this "
                    "install allows (TASKYARD_NATS_MAX_QUEUES): use an existing queue or raise the limit"
                ) from None


@dataclass(frozen=True)
class ConsumerSnap:
    """What the api and the metrics service read of one executor consumer (a queue × priority)."""

    queue: str
    priority: str
    num_pending: int
    num_ack_pending: int
    num_waiting: int
    num_redelivered: int
    delivered_stream_seq: int
    delivered_consumer_seq: int
    paused: bool

    @classmethod
    def of(cls, queue: str, priority: str, info: ConsumerInfo) -> "ConsumerSnap":
        return cls(
            queue=queue,
            priority=priority,
            num_pending=info.num_pending or 0,
            num_ack_pending=info.num_ack_pending or 0,
            num_waiting=info.num_waiting or 0,
            num_redelivered=info.num_redelivered or 0,
            delivered_stream_seq=info.delivered.stream_seq if info.delivered else 0,
            delivered_consumer_seq=info.delivered.consumer_seq if info.delivered else 0,
            paused=bool(info.paused),
        )


async def executor_consumers(js: JetStreamContext, topo: Topology) -> list[ConsumerSnap]:
    """Every executor consumer on JOBS, following the list's pages: one request returns 256
    consumers, i.e. 85 queues of three priorities."""
    found: list[ConsumerInfo] = []
    while True:
        page = await js.consumers_info(topo.jobs_stream, offset=len(found) or None)
        found.extend(page)
        if len(page) < CONSUMER_PAGE:
            break
    out = []
    for info in found:
        parts = (info.config.filter_subject or "").split(".")  # <prefix>.jobs.<queue>.<priority>
        if len(parts) == 4 and parts[:2] == [topo.prefix, "jobs"]:
            queue, priority = parts[2], parts[3]
            if info.name == topo.exec_durable(queue, priority):
                out.append(ConsumerSnap.of(queue, priority, info))
    return out


async def oldest_waiting_age_s(
    js: JetStreamContext, topo: Topology, consumer: ConsumerSnap, now: float
) -> float:
    """Age of the first job the consumer has not delivered yet (0 when there is none)."""
    if not consumer.num_pending:
        return 0.0
    try:
        # Direct get (JOBS has allow_direct) answers from any replica without the stream leader.
        msg = await js.get_msg(
            topo.jobs_stream,
            seq=consumer.delivered_stream_seq + 1,
            subject=topo.job_subject(consumer.queue, consumer.priority),
            next=True,
            direct=True,
        )
    except NotFoundError:
        return 0.0
    if msg.time is None:
        return 0.0
    # Server time vs our clock: a little skew across hosts is expected, never report a negative age.
    return max(0.0, now - msg.time.timestamp())
