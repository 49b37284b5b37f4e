"""A job's log lines and events, published without waiting per line, flushed before the job ends."""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from nats.errors import Error as NatsError
from nats.js.errors import NoStreamResponseError

from taskyard_common.background import Background
from taskyard_common.schemas import EventBatch, JobEvent, LogLine
from taskyard_common.topology import Topology

MAX_UNACKED = 1000
# A publish whose ack has not come this long after it was sent is treated as lost (NATS away or
# restarting): a flush waiting for it raises TimeoutError.
FLUSH_TIMEOUT_S = 30
# Events in one batch message; a burst larger than this is sent in several.
BATCH_MAX = 500
# A publish answered "no responders" (503) reached no stream leader, so nothing was stored: on a
# JetStream cluster that is the election after a leader died (measured 2–15 s, docs/scaling.md). It
# is sent again every RETRY_PAUSE_S for up to RETRY_FOR_S; giving up at once left the job unacked,
# and it ran again after ack_wait (3,044 of 12,000 jobs when the EVENTS leader was killed -9).
RETRY_FOR_S = 20.0
RETRY_PAUSE_S = 0.25


class _Batch:
    """Events waiting for the next batch message, and the future their jobs' flushes wait on."""

    def __init__(self) -> None:
        self.events: list[JobEvent] = []
        self.stored: asyncio.Future = _bounded(asyncio.get_running_loop().create_future())


class Emitter:
    """Publishes to LOGS and EVENTS without waiting (AckedPublish); `flush(job_id)` waits for that
    job's acks.

    Waiting for acks before the final event and the JOBS ack means a job is never reported
    finished while some of its lines could still be lost. Acks are tracked per job: with one
    shared list, a job's flush could take another job's pending publishes, and that other job
    would then find nothing to wait for and ack its delivery before its own `started` was stored.

    Lifecycle events are batched when `batch_subject` is set: the events every job of this executor
    reports within `batch_s` (0: within the same turn of the event loop) go out as one EventBatch on
    the executor's own subject (Topology.batch_subject), so a quick job costs a share of one EVENTS message and no
    subject of its own in nats-server's memory. An event that must stay readable per job (a journal
    entry: `own_subject=True`) goes to the job's subject, after any batch still open, so EVENTS
    keeps the order events happened in.
    """

    def __init__(
        self,
        publish_async: Callable[[str, bytes], Awaitable[asyncio.Future]],
        topo: Topology,
        batch_subject: str | None = None,
        batch_s: float = 0.0,
    ) -> None:
        # `publish_async`: nats_util.AckedPublish (the publish and a future of its ack).
        self.publish_async, self.topo = publish_async, topo
        self.batch_subject, self.batch_s = batch_subject, batch_s
        self._pending: dict[str, list[asyncio.Future]] = {}
        self._open: _Batch | None = None
        self._sending = Background()
        # How long a publish answered 503 is sent again (RETRY_FOR_S).
        self.retry_for_s = RETRY_FOR_S

    async def _publish(self, job_id: str, subject: str, data: bytes) -> None:
        pending = self._pending.setdefault(job_id, [])
        pending.append(await self._send(subject, data))
        if len(pending) >= MAX_UNACKED:
            await self.flush(job_id)

    async def _send(self, subject: str, data: bytes) -> asyncio.Future:
        """publish_async, whose returned future is sent again while the answer is 503 (no stream
        leader) and RETRY_FOR_S has not passed. The first send's own errors are raised."""
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future = _bounded(loop.create_future())
        deadline = loop.time() + self.retry_for_s
        ack = await self.publish_async(subject, data)
        ack.add_done_callback(lambda done: self._answered(subject, data, outcome, deadline, done))
        return outcome

    def _answered(
        self, subject: str, data: bytes, outcome: asyncio.Future, deadline: float, done: asyncio.Future
    ) -> None:
        if outcome.done():  # its FLUSH_TIMEOUT_S ran out
            return
        no_leader = not done.cancelled() and isinstance(done.exception(), NoStreamResponseError)
        if no_leader and asyncio.get_running_loop().time() < deadline:
            self._sending.spawn(self._again(subject, data, outcome, deadline))
            return
        _settle(outcome, done)

    async def _again(self, subject: str, data: bytes, outcome: asyncio.Future, deadline: float) -> None:
        await asyncio.sleep(RETRY_PAUSE_S)
        if outcome.done():
            return
        try:
            ack = await self.publish_async(subject, data)
        except (NatsError, OSError) as exc:  # reconnecting: the next answer decides again
            _settle(outcome, exc)
            return
        ack.add_done_callback(lambda done: self._answered(subject, data, outcome, deadline, done))

    async def log(self, job_id: str, line: LogLine) -> None:
        await self._publish(job_id, self.topo.log_subject(job_id), line.model_dump_json().encode())

    async def event(self, event: JobEvent, own_subject: bool = False) -> None:
        if own_subject or self.batch_subject is None:
            await self.send_batch()
            await self._publish(
                event.job_id, self.topo.event_subject(event.job_id), event.model_dump_json().encode()
            )
            return
        batch = self._open
        if batch is None:
            batch = self._open = _Batch()
            loop = asyncio.get_running_loop()
            if self.batch_s > 0:
                loop.call_later(self.batch_s, self._send_later, batch)
            else:
                loop.call_soon(self._send_later, batch)
        batch.events.append(event)
        self._pending.setdefault(event.job_id, []).append(batch.stored)
        if len(batch.events) >= BATCH_MAX:
            await self.send_batch()

    def _send_later(self, batch: _Batch) -> None:
        if self._open is batch:
            self._sending.spawn(self.send_batch())

    async def send_batch(self) -> None:
        """Publish the open batch now (its jobs' flushes then wait for its ack)."""
        batch, self._open = self._open, None
        if batch is None:
            return
        body = EventBatch(events=batch.events).model_dump_json().encode()
        try:
            ack = await self._send(self.batch_subject, body)  # type: ignore[arg-type]
        except (NatsError, OSError) as exc:
            _settle(batch.stored, exc)
            return
        ack.add_done_callback(lambda done: _settle(batch.stored, done))

    async def flush(self, job_id: str | None = None) -> None:
        """Wait for `job_id`'s publishes (every job's when None); raise the first failure."""
        if job_id is None:
            await self.send_batch()
        jobs = list(self._pending) if job_id is None else [job_id]
        pending = [future for job in jobs for future in self._pending.pop(job, [])]
        # Each future ends by FLUSH_TIMEOUT_S (_bounded); a batch's is shared by its jobs, hence
        # shield: one job's task cancelled must not cancel the others' wait. (asyncio.wait with a
        # timeout per flush cost ~5 µs a job.) The caller has not acked its job yet: a failure
        # raised here leaves it to be redelivered.
        for future in dict.fromkeys(pending):
            await asyncio.shield(future)

    async def close(self) -> None:
        """At stop: every job's publishes acked (flush), then the resends and batch sends still
        running end too (each is bounded by FLUSH_TIMEOUT_S) instead of dying with the loop."""
        try:
            await self.flush()
        finally:
            await self._sending.finish(timeout_s=FLUSH_TIMEOUT_S)

    def forget(self, job_id: str) -> None:
        """Stop tracking a job that ended without a flush (NATS error, handed back)."""
        self._pending.pop(job_id, None)


def _bounded(future: asyncio.Future) -> asyncio.Future:
    """`future`, failed with TimeoutError if nothing settles it within FLUSH_TIMEOUT_S."""

    def expire() -> None:
        if not future.done():
            future.set_exception(TimeoutError("no publish ack"))
            with contextlib.suppress(BaseException):
                future.exception()  # no "never retrieved" when no flush waits for it

    deadline = asyncio.get_running_loop().call_later(FLUSH_TIMEOUT_S, expire)
    future.add_done_callback(lambda _: deadline.cancel())
    return future


def _settle(stored: asyncio.Future, outcome: asyncio.Future | BaseException) -> None:
    """Pass a batch publish's ack (or failure) to the future its jobs wait on; it may have run out
    of time already (_bounded)."""
    if stored.done():
        return
    if isinstance(outcome, BaseException):
        stored.set_exception(outcome)
    elif outcome.cancelled():
        stored.set_exception(TimeoutError("no publish ack"))
    elif (exc := outcome.exception()) is not None:
        stored.set_exception(exc)
    else:
        stored.set_result(outcome.result())
    with contextlib.suppress(BaseException):
        stored.exception()  # a batch no job flushes (all forgotten) must not log "never retrieved"
