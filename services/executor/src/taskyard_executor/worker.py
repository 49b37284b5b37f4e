"""The executor's core: pull jobs in strict priority, run them, report, ack, retry, dead-letter.

At-least-once: a delivery is acked only after its outcome (and its log lines) are stored in
JetStream. A silent worker loses its deliveries after ack_wait; `in_progress()` every ack_wait/3
keeps a long job's delivery alive.

A slot is busy while a job's handler runs (slots.py): once it returns, the next job is pulled
while the outcome is still being stored and acked (the delivery is *finishing*).
"""

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue
from pydantic import ValidationError

from taskyard_common.artifact_store import ArtifactStore
from taskyard_common.coalesce import carry
from taskyard_common.nats_util import AckedPublish, delivered_count
from taskyard_common.schemas import ENDED_OUTCOMES, EventType, JobEvent, JobSpec, LogLine
from taskyard_common.settings import ArtifactSettings
from taskyard_common.telemetry import context_from, ns, tracer, tracing_on
from taskyard_common.topology import PRIORITIES, Topology, ensure_queue

from .checkpoints import Journal, Suspended, attempt_of, read_journal
from .context import JobContext
from .errors import JobError, ResultTooLarge, as_job_error
from .logsink import Emitter
from .meter import Meter
from .pull_marks import EmptyMarks
from .registry import Registry, invoke
from .retry_policy import after_failure, lost_on_last_attempt
from .settings import ExecutorSettings
from .slots import Slots
from .staging import Outputs, Workspace
from .start_hold import StartHold

log = logging.getLogger("taskyard.executor")
_OUTCOMES = frozenset({"succeeded", "failed", "retrying", "cancelled", "dead", "waiting"})
# The armed pull above a backlog holds a slot that the backlog's jobs then wait for: only worth it
# where one slot is a small share (4 slots: a quarter of the executor idle for a high job that may
# never come).
ARM_ABOVE_BACKLOG_MIN_SLOTS = 16
# How long a finished job's report waits for the pull out to be answered (Worker._run), and the
# shortest run whose report waits at all.
REPORT_HOLD_S = 0.002
HOLD_MIN_RUN_S = 0.001
# What a later delivery reads back from the job's own EVENTS subject (checkpoints.Journal).
_JOURNAL = frozenset({"step", "said", "handed_back"})
# How long a redelivered job's journal read is tried again through a JetStream leader election
# (measured 4–9 s after a node died, docs/scaling.md), and how often.
JOURNAL_RETRY_S = 20.0
JOURNAL_RETRY_PAUSE_S = 0.5
_tracer = tracer("taskyard.executor")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _within(task: asyncio.Task, timeout_s: float):  # noqa: ANN202 - the handler's result
    """`await task`, cancelling it after `timeout_s` (a JobError then). One timer handle, not
    asyncio.timeout: ~3 µs less a job (its context manager, the task's cancel counting)."""
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    deadline = asyncio.get_running_loop().call_later(timeout_s, expire)
    try:
        return await task
    except asyncio.CancelledError:
        # Not when the awaiting task is itself being cancelled (the process stops).
        current = asyncio.current_task()
        if expired and current is not None and not current.cancelling():
            raise JobError(f"timed out after {timeout_s:g}s", details={"timeout_s": timeout_s}) from None
        raise
    finally:
        deadline.cancel()


@dataclass
class Running:
    spec: JobSpec
    msg: Msg
    attempt: int
    # What earlier deliveries of this generation recorded; empty on a first delivery.
    journal: Journal = field(default_factory=Journal)
    task: asyncio.Task | None = None
    cancel_requested: bool = False
    outcome: str | None = None
    started: float = field(default_factory=time.time)
    # When the handler returned (or raised): the outcome's time, however long reporting it takes.
    ended: float | None = None
    outputs: Outputs | None = None
    # Set while the release loop publishes this job's held `started`; the outcome waits for it,
    # so the two are stored in order and the outcome's flush covers the `started`.
    start_sent: asyncio.Future[None] | None = None
    start_error: NatsError | None = None
    # The job has events on its own EVENTS subject (a redelivery, a continuation, a step): its
    # outcome goes there too, so a delivery after a lost ack finds it (checkpoints.Journal.outcome).
    journaled: bool = False
    # What the attempt used and spent (the handler's ctx.meter); None until the handler starts.
    meter: Meter | None = None
    # When the delivery's ack wait last began (its delivery, or the last `in_progress`).
    extended: float = field(default_factory=time.monotonic)
    # Which delivery of its message this is (1: the first).
    delivery: int = 1

    @property
    def ran_s(self) -> float:
        """From its start until its handler returned (so far, while it runs)."""
        return (self.ended or time.time()) - self.started


class Worker:
    def __init__(
        self, nc: NatsClient, topo: Topology, settings: ExecutorSettings, registry: Registry, worker_id: str
    ) -> None:
        self.nc, self.js, self.topo = nc, nc.jetstream(timeout=10), topo
        self.settings, self.registry, self.id = settings, registry, worker_id
        acked = AckedPublish(nc)
        self.emitter = Emitter(acked, topo, topo.batch_subject(worker_id), settings.event_batch_s)
        self.artifacts = ArtifactStore(self.js, acked, topo, ArtifactSettings())
        # Jobs whose handler runs (each holds a slot; the heartbeat lists these), and jobs whose
        # handler returned and whose outcome is being reported and acked (no slot).
        self.running: dict[str, Running] = {}
        self.finishing: dict[str, Running] = {}
        self.slots = Slots(settings.slots)
        self.done = 0
        self.failed = 0
        self.draining = False
        # Set by a drain/stop control message: the process drains with `exit_grace_s`, then exits.
        self.exit_requested = asyncio.Event()
        self.exit_grace_s = settings.drain_grace_s
        # Set when the heartbeat should say something new now instead of at the next beat: a job
        # started or ended (slots in use), or a drain began. The publisher coalesces a burst.
        self.state_changed = asyncio.Event()
        self._cancelled_recently: dict[str, float] = {}
        self._wakeup = asyncio.Event()
        self.empty = EmptyMarks(settings.idle_poll_s)
        self._slot_freed = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._subs: list = []
        self.held = StartHold(settings.started_coalesce_s)
        self.starts_coalesced = self.starts_alone = 0
        self._held_added = asyncio.Event()
        from .puller import Puller

        self.puller = Puller(nc, topo.jobs_stream, self._on_delivery, self._armed_ended)
        self._round_out = False  # a round of pulls is out (pull_forever)
        self._round_ended: asyncio.Future[None] | None = None  # its end, while someone waits for it

    # -- start / stop -------------------------------------------------------------------------
    async def start(self) -> None:
        for queue in self.settings.queues:
            await ensure_queue(self.js, self.topo, queue)
        await self.artifacts.ensure()
        await self.puller.start()
        self._subs.append(await self.nc.subscribe(self.topo.cancel_subject(), cb=self._on_cancel))
        self._subs.append(await self.nc.subscribe(self.topo.drain_subject(self.id), cb=self._on_drain))

    @property
    def free_slots(self) -> int:
        # Taken at delivery, not when the job's task first runs: otherwise the pull loop would see
        # the slot still free and fetch a lower priority in the same round. Given back when the
        # handler returns; reports beyond `slots` in flight take slots again (Slots.free).
        return self.slots.free()

    async def pull_forever(self) -> None:
        """Fill free slots: per queue, high before normal before low; arm long pulls when all are empty.

        A round ends idle only when every pull came back short, i.e. each consumer was empty when
        asked. Then the worker arms a long pull (`Puller.arm`) on each consumer it has a free slot
        for, in priority order: the server hands over the next job as soon as it is stored. Consumers
        left unarmed (fewer free slots than consumers) rely on the API's wake-up (core NATS, one per
        queue per publish burst, after the jobs are stored, naming their priorities); the
        subscription stays open and the flag is cleared before a round, so jobs stored during a round
        start the next one at once. A round started by a wake-up skips the consumers just found empty
        that it does not name (`EmptyMarks`). Every other round (a slot freed under backlog, the idle
        poll) asks every unarmed consumer in order, as strict priority needs.

        Under backlog, a higher priority found empty while a lower one has jobs is armed at once
        (an executor of 16 slots or more, two or more free): it then holds one slot for its next job, which the server
        hands over the moment it is stored, and the rounds that follow skip it. Each round is then
        one pull round trip instead of one per priority above the backlog; strict priority holds
        (the higher priority's next job is delivered at once, not at the next round).
        """
        queues = list(self.settings.queues)
        turn = 0
        wake_subs = [
            await self.nc.subscribe(self.topo.wake_subject(queue), cb=self._wake_handler(queue))
            for queue in queues
        ]
        woken = False
        try:
            while not self.draining:
                if self.free_slots - self.puller.armed_count() <= 0:
                    # Every free slot is promised to an armed pull: wait for one to end (a job or
                    # its expiry), or a running job to finish.
                    self._slot_freed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.settings.idle_poll_s):
                            await self._slot_freed.wait()
                    woken = False
                    continue
                self._wakeup.clear()
                turn = (turn + 1) % len(queues)
                rotation = queues[turn:] + queues[:turn]
                self._round_out = True
                more = False
                try:
                    for durable in self._consumers(rotation):
                        wanted = self.free_slots - self.puller.armed_count()
                        if wanted <= 0 or self.draining:
                            break
                        if self.puller.is_armed(durable) or (woken and self.empty.holds(durable)):
                            continue
                        sent = time.monotonic()
                        try:
                            got = await self.puller.pull(durable, wanted)
                        except NatsError as exc:
                            log.warning("pull failed (%s); NATS may be reconnecting", exc)
                            await asyncio.sleep(0.5)
                            got = 0
                        else:  # a failed pull says nothing about the consumer: no mark
                            self.empty.found(durable, empty=got < wanted, asked_at=sent)
                            if got == 0 and self._above_others(durable):
                                await self._arm_above_backlog(durable)
                        if got >= wanted:
                            # It filled its ask, so it may hold more: the lower priorities wait for
                            # the next round, which starts from the top. Slots freed while this pull
                            # was out (a short job ends within a pull's round trip) must not go to
                            # them.
                            more = True
                            break
                finally:
                    # The reports that waited for this round (Worker._refilled) go on.
                    self._round_out = False
                    if self._round_ended is not None:
                        _resolve(self._round_ended)
                        self._round_ended = None
                woken = False
                if more:
                    continue
                await self._arm(rotation)
                # Wait for a job (armed pull), a publish (wake-up), or poll now and then for the
                # unarmed consumers' retries whose nak delay ran out (those publish nothing).
                try:
                    # asyncio.timeout, not wait_for: no extra task between the wake-up and the pull.
                    async with asyncio.timeout(self.settings.idle_poll_s):
                        await self._wakeup.wait()
                    woken = True
                except TimeoutError:
                    pass
        finally:
            for sub in wake_subs:
                with contextlib.suppress(NatsError):
                    await sub.unsubscribe()

    def _above_others(self, durable: str) -> bool:
        """Is `durable` a priority above another of its queue (not the lowest)?"""
        return not durable.endswith(f"_{PRIORITIES[-1]}")

    async def _arm_above_backlog(self, durable: str) -> None:
        """Arm an empty higher priority while the round goes on to the lower ones (see
        pull_forever): only with a slot to spare for the round's own pulls."""
        if self.settings.slots < ARM_ABOVE_BACKLOG_MIN_SLOTS or self.draining:
            return
        if self.free_slots - self.puller.armed_count() < 2:
            return
        try:
            await self.puller.arm(durable, self.settings.armed_pull_s)
        except NatsError as exc:
            log.warning("arming a pull failed (%s); NATS may be reconnecting", exc)

    def _consumers(self, queues: list[str]) -> list[str]:
        return [self.topo.exec_durable(queue, priority) for queue in queues for priority in PRIORITIES]

    async def _arm(self, queues: list[str]) -> None:
        """Arm a long pull on each unarmed consumer, in priority order, while a slot is free for it."""
        for durable in self._consumers(queues):
            if self.free_slots - self.puller.armed_count() <= 0 or self.draining:
                return
            if not self.puller.is_armed(durable):
                try:
                    await self.puller.arm(durable, self.settings.armed_pull_s)
                except NatsError as exc:
                    log.warning("arming a pull failed (%s); NATS may be reconnecting", exc)
                    return

    def _armed_ended(self, durable: str, delivered: bool) -> None:
        if delivered:
            self.empty.woken(durable)  # it had a job: ask it again in the next round
        self._slot_freed.set()
        self._wakeup.set()

    def _wake_handler(self, queue: str):
        async def on_wake(msg: Msg) -> None:
            # The payload names the priorities published ("high,normal"); an empty one means all.
            named = msg.data.decode(errors="replace").split(",") if msg.data else PRIORITIES
            for priority in named:
                self.empty.woken(self.topo.exec_durable(queue, priority))
            self._wakeup.set()

        return on_wake

    async def drain(self, grace_s: float) -> None:
        """Stop pulling; give running jobs `grace_s` to finish; hand the rest back at once; wait
        for every finishing job's report and ack (each bounded by the emitter's flush timeout)."""
        self.draining = True
        self.state_changed.set()
        self._wakeup.set()
        self._slot_freed.set()
        deadline = time.monotonic() + grace_s
        # An armed pull may still bring a job until it expires: wait for those too, so a job that
        # arrives during the drain is finished or handed back like the others.
        while (self.running or self.puller.armed_count()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for run in list(self.running.values()):
            log.info("drain: handing job %s back to the queue", run.spec.id)
            run.cancel_requested = False
            if run.task:
                run.task.cancel()
            await self._hand_back(run)
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.emitter.close()
        for sub in self._subs:
            await sub.unsubscribe()
        await self.puller.stop()

    # -- control --------------------------------------------------------------------------------
    async def _on_cancel(self, msg: Msg) -> None:
        job_id = msg.subject.rsplit(".", 1)[-1]
        now = time.monotonic()
        self._cancelled_recently[job_id] = now
        if len(self._cancelled_recently) > 10_000:
            self._cancelled_recently = {k: t for k, t in self._cancelled_recently.items() if now - t < 600}
        run = self.running.get(job_id)
        if run and run.task:
            log.info("cancel requested for running job %s", job_id)
            run.cancel_requested = True
            run.task.cancel()

    async def _hand_back(self, run: Running) -> None:
        """Return a running job to its queue without spending an attempt.

        The `handed_back` event goes to the job's journal before the nak: the redelivery's
        delivery count includes this one, and whoever runs it next subtracts the hand-backs it
        reads there (`attempt_of`). Should the event not be stored, there is no nak either: the
        delivery comes back after ack_wait and counts as a lost worker's attempt, as a crash would.
        """
        try:
            await self._report(run, "handed_back", resume=run.spec.resume, reason="drain")
            await self.emitter.flush(run.spec.id)
            await run.msg.nak()
        except NatsError as exc:
            log.warning("job %s: hand-back not recorded (%s); redelivered after ack_wait", run.spec.id, exc)

    async def _on_drain(self, msg: Msg) -> None:
        """`drain` (default): finish running jobs within the grace, hand back the rest, exit.
        `stop`: hand everything back at once and exit. The process's main loop does the work."""
        mode = msg.data.decode(errors="replace").strip() if msg.data else "drain"
        self.exit_grace_s = 0.0 if mode == "stop" else self.settings.drain_grace_s
        log.info("%s requested over NATS (grace %.0fs)", mode or "drain", self.exit_grace_s)
        self.exit_requested.set()

    # -- one delivery ---------------------------------------------------------------------------
    def _on_delivery(self, msg: Msg) -> None:
        task = asyncio.create_task(self._handle(msg))
        self._tasks.add(task)
        self.slots.take(task)
        task.add_done_callback(self._delivery_done)

    def _delivery_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self.slots.end(task)
        self._slot_freed.set()

    def _handler_returned(self, run: Running) -> None:
        """The job's slot is free now: the pull loop fetches the next job while this one's outcome
        is published, its ack awaited and its delivery acked (by the same task, still tracked for
        drain). Its heartbeat entry goes too: the API counts it as a free slot."""
        run.ended = time.time()
        if self.running.get(run.spec.id) is run:
            del self.running[run.spec.id]
        self.finishing[run.spec.id] = run
        task = asyncio.current_task()
        if task is not None and self.slots.release(task):
            self._slot_freed.set()
        self.state_changed.set()

    async def _handle(self, msg: Msg) -> None:
        try:
            spec = JobSpec.model_validate_json(msg.data)
        except ValidationError as exc:
            log.error("malformed job message on %s dropped: %s", msg.subject, exc)
            await msg.term()
            return
        if spec.id in self._cancelled_recently:
            await msg.ack()
            return
        delivery = delivered_count(msg)
        run = Running(spec, msg, delivery, delivery=delivery, journaled=delivery > 1 or spec.resume > 0)
        self.running[spec.id] = run
        self.state_changed.set()
        try:
            if delivery > 1 or spec.resume:
                # A retry, a redelivery or a continuation replays its journal; hand-backs in it
                # were deliveries but no attempts.
                run.journal = await self._journal(run)
                run.attempt = attempt = attempt_of(delivery, run.journal, spec.resume)
            else:
                attempt = delivery
            if lost_on_last_attempt(attempt, spec.max_attempts):
                # The previous attempt's worker died (no outcome was reported): nothing left to try.
                error = {
                    "type": "WorkerLost",
                    "message": f"worker lost on the last of {spec.max_attempts} attempts",
                }
                await self._dead(run, error)
                return
            await self._traced_run(run)
        except (NatsError, TimeoutError) as exc:
            # The outcome could not be stored (an error, or no publish ack within the flush
            # timeout): leave the delivery unacked so it is redelivered.
            log.error("job %s: NATS error while reporting (%s); it will be redelivered", spec.id, exc)
        finally:
            # Identity checks: a redelivery of the same job may already be running here.
            if self.running.get(spec.id) is run:
                del self.running[spec.id]
            if self.finishing.get(spec.id) is run:
                del self.finishing[spec.id]
            self.held.take(spec.id)  # a job that ended unreported (NATS error, shutdown) comes back
            self.state_changed.set()
            self.emitter.forget(spec.id)

    async def _journal(self, run: Running) -> Journal:
        """The job's journal. While JetStream cannot answer (a cluster electing a leader: 503
        "temporarily unavailable", or no answer), ask again for up to JOURNAL_RETRY_S and keep the
        delivery meanwhile: handing it back would spend an attempt on a job that never ran (a node
        stopped for 20 s under load sent one job to `dead` as WorkerLost that way)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + JOURNAL_RETRY_S
        while True:
            try:
                return await read_journal(self.nc, self.topo, run.spec.id, run.spec.generation)
            except (NatsError, TimeoutError):
                if loop.time() > deadline:
                    raise
            with contextlib.suppress(NatsError, TimeoutError):
                await run.msg.in_progress()
            await asyncio.sleep(JOURNAL_RETRY_PAUSE_S)

    async def _traced_run(self, run: Running) -> None:
        """One attempt as a span in the job's trace (continued from the message's traceparent)."""
        if not tracing_on():
            await self._run(run)
            return
        spec = run.spec
        parent = context_from(headers=run.msg.headers)
        attrs: dict[str, AttributeValue] = {
            "taskyard.job.id": spec.id,
            "taskyard.queue": spec.queue,
            "taskyard.type": spec.type,
            "taskyard.priority": spec.priority,
            "taskyard.attempt": run.attempt,
            "taskyard.worker": self.id,
        }
        if run.delivery == 1 and not spec.resume:
            wait = _tracer.start_span(
                "taskyard.job.queue_wait", context=parent, start_time=ns(spec.submitted_at), attributes=attrs
            )
            wait.end(end_time=ns(run.started))
        with _tracer.start_as_current_span(
            "taskyard.job.run", context=parent, kind=SpanKind.CONSUMER, attributes=attrs
        ) as span:
            await self._run(run)
            if run.outcome not in ("succeeded", "waiting", None):
                span.set_status(Status(StatusCode.ERROR, run.outcome))
            span.set_attribute("taskyard.outcome", run.outcome or "handed_back")

    def _event(self, run: Running, kind: EventType, **data) -> JobEvent:
        if run.outputs is not None and kind in _OUTCOMES:
            # The outcome names the outputs this attempt stored: that is the job's listing.
            if run.outputs.stored:
                data["artifacts"] = run.outputs.stored
            if run.outputs.refused:
                data["artifact_errors"] = run.outputs.refused[:100]
        if run.meter is not None and kind in _OUTCOMES:
            # Usage and costs per attempt (taskyard_common.usage); the labels let the metrics
            # service count spend per label without the database.
            data.update(run.meter.figures())
            if run.spec.labels:
                data["labels"] = run.spec.labels
        at = run.ended if run.ended is not None and kind in _OUTCOMES else time.time()
        return JobEvent.of(run.spec, kind, data, attempt=run.attempt, worker_id=self.id, at=at)

    async def _run(self, run: Running) -> None:
        spec = run.spec
        # First runs have no history; a retry or a resumed job replays its finished steps/decisions
        # (read by _handle). A handed-back first attempt is no fresh start: its steps are kept.
        fresh = run.delivery == 1 and spec.resume == 0
        journal = run.journal
        if journal.outcome:
            # A worker reported the outcome, then died before its ack: do not run or report it twice.
            log.info("job %s already %s; dropping the redelivery", spec.id, journal.outcome)
            run.outcome = journal.outcome
            await (run.msg.ack() if journal.outcome == "succeeded" else run.msg.term())
            return
        wait = {"wait_s": round(run.started - spec.submitted_at, 6)} if fresh else {}
        redelivered = run.delivery > 1
        # A redelivery's start names its continuation: the next delivery counts from it.
        started = self._event(run, "started", **({"resume": spec.resume} if redelivered else wait))
        if redelivered:
            # Journaled, and stored before the handler runs: the next delivery counts its attempt
            # from these starts (attempt_of), not from deliveries that may never have reached a
            # worker; a poison job that kills its worker still spends an attempt each time.
            await self.emitter.event(started, own_subject=True)
            await self.emitter.flush(spec.id)
        elif self.held.enabled:
            # Held: the outcome carries it if the job ends within the window (`_report`).
            self.held.hold(started, time.monotonic())
            self._held_added.set()
        else:
            self.starts_alone += 1
            await self._emit(run, started)

        async def emit_log(line: LogLine) -> None:
            await self.emitter.log(spec.id, line)

        async def emit_progress(pct: float, message: str) -> None:
            await self._start_first(run)
            await self._emit(run, self._event(run, "progress", pct=pct, message=message))

        async def emit_event(kind: EventType, data: dict) -> None:
            await self._start_first(run)
            await self._emit(run, self._event(run, kind, **data))
            await self.emitter.flush(spec.id)

        ctx = JobContext(
            spec,
            attempt=run.attempt,
            worker_id=self.id,
            emit_log=emit_log,
            emit_progress=emit_progress,
            emit_event=emit_event,
            journal=journal,
        )
        run.meter = ctx.meter
        try:
            entry = self.registry.get(spec.type)  # UnknownJobType: permanent failure
            run.task = asyncio.create_task(self._invoke_with_files(entry, ctx, run))
            # A job this quick can end while the pull that took it is still out: pull_forever's
            # round stops at a pull that filled its ask, or the freed slot went to a lower priority.
            result = await _within(run.task, spec.timeout_s)
            size = len(json.dumps(result, default=str))
            if size > self.settings.max_result_bytes:
                raise ResultTooLarge(f"result is {size} bytes; the limit is {self.settings.max_result_bytes}")
        except Suspended as parked:
            # Waiting for a person: report it and let go of the message (and the slot).
            await self._finish(run, "waiting", ack="ack", checkpoint=parked.checkpoint)
            return
        except asyncio.CancelledError:
            ctx.cancelled.set()
            if self.draining and not run.cancel_requested:
                return  # handed back by drain()
            if not run.cancel_requested:
                raise
            await self._finish(run, "cancelled", ack="ack")
            return
        except Exception as exc:  # noqa: BLE001 - every handler failure becomes a typed JobError
            await self._failed(run, as_job_error(exc))
            return
        finally:
            self._handler_returned(run)
        self.done += 1
        # The report waits for the refill of this slot: one turn of the loop for the pull loop to
        # ask for its next job, then until that round of pulls ends (its jobs handed to their
        # tasks, which run first), at most REPORT_HOLD_S. Jobs that end together (a wave of equal
        # sleeps) otherwise had their ~25 µs reports run between the pull and its answer: 64 of
        # them kept the next wave from starting for ~1.6 ms (docs/performance.md, changes 61, 64).
        # A job shorter than HOLD_MIN_RUN_S does not wait: the hold would be most of its time, and
        # short jobs end in a stream, not in waves. Without a round out: one more turn, for the
        # NATS client's flusher to put the pull on the wire.
        await asyncio.sleep(0)
        refilled = self._refilled() if run.ran_s >= HOLD_MIN_RUN_S else None
        await (refilled if refilled is not None else asyncio.sleep(0))
        await self._finish(run, "succeeded", ack="ack", result=result)

    def _refilled(self) -> asyncio.Future[None] | None:
        """Resolves when the pull round now out ends, its jobs handed to their tasks (which then
        run before whoever waited for this), or after REPORT_HOLD_S; None when no round is out.
        One future and one timer a round that someone waits for, however many wait."""
        if not self._round_out:
            return None
        if self._round_ended is None:
            loop = asyncio.get_running_loop()
            self._round_ended = loop.create_future()
            loop.call_later(REPORT_HOLD_S, _resolve, self._round_ended)  # a no-op once it ended
        return self._round_ended

    async def _invoke_with_files(self, entry, ctx: JobContext, run: Running):  # noqa: ANN001, ANN202
        """Run the handler; a job with input files or output globs runs in its own working
        directory, inputs staged before and outputs collected after, whatever the outcome."""
        run.outputs = outputs = Outputs(self.artifacts, run.spec)
        ctx._save_artifact = outputs.save
        spec = run.spec
        if not spec.inputs and not spec.outputs:
            return await invoke(entry, ctx)
        workspace = Workspace(self.artifacts, spec, run.attempt)
        try:
            ctx.workdir = await workspace.open()
            ctx.inputs = workspace.inputs
            try:
                return await invoke(entry, ctx)
            finally:
                if spec.outputs:
                    await outputs.collect(ctx.workdir, spec.outputs)
                for problem in outputs.refused:
                    await ctx.log(f"[taskyard] {problem}")
        finally:
            await workspace.close()

    async def keep_alive_forever(self) -> None:
        """Tell JetStream every running handler's delivery is still being worked on, so none is
        redelivered while its handler runs: each gets `in_progress` once its ack wait is a third
        gone, checked every sixth, so at most half of ack_wait passes unextended. One loop for all
        jobs, not a task per job (creating and cancelling it was ~5 µs of a noop job's ~100)."""
        interval = self.topo.settings.ack_wait_s / 3
        while True:
            await asyncio.sleep(interval / 2)
            now = time.monotonic()
            for run in list(self.running.values()):
                if run.task is None or run.task.done() or now - run.extended < interval:
                    continue
                run.extended = now
                with contextlib.suppress(NatsError):
                    await run.msg.in_progress()

    async def _failed(self, run: Running, err: JobError) -> None:
        spec = run.spec
        error = err.to_dict()
        self.failed += 1
        decision = after_failure(err, run.attempt, spec)
        if decision.outcome == "retrying":
            assert decision.delay_s is not None  # a retry always has its delay
            delay = decision.delay_s
            await self._report(
                run, "retrying", error=error, delay_s=round(delay, 3), next_at=time.time() + delay
            )
            await self.emitter.flush(spec.id)
            run.outcome = "retrying"
            await run.msg.nak(delay=delay)
            return
        if decision.outcome == "dead":
            await self._dead(run, error)
        else:
            await self._finish(run, "failed", ack="term", error=error)

    async def _dead(self, run: Running, error: dict) -> None:
        """Out of attempts: keep the job inspectable in DEAD, then remove it from JOBS."""
        spec = run.spec
        headers = {"Taskyard-Attempts": str(run.attempt), "Taskyard-Error": error.get("message", "")[:200]}
        await self.js.publish(
            self.topo.dead_subject(spec.queue),
            spec.model_dump_json().encode(),
            headers={**headers, "Nats-Msg-Id": f"dead:{spec.msg_id}"},
        )
        await self._finish(run, "dead", ack="term", error=error)

    async def _finish(self, run: Running, kind: EventType, ack: str, **data) -> None:
        run.outcome = kind
        duration = round((run.ended or time.time()) - run.started, 6)
        await self._report(run, kind, duration_s=duration, **data)
        await self.emitter.flush(run.spec.id)
        await (run.msg.ack() if ack == "ack" else run.msg.term())

    # -- the held `started` (StartHold) -------------------------------------------------------------
    async def _held_start(self, run: Running) -> JobEvent | None:
        """The job's `started` if still held (the caller reports it now), else None once a release
        of it in flight has been handed to NATS; a failed release raises, as a failed `started`
        publish always did (the delivery stays unacked and comes back)."""
        held = self.held.take(run.spec.id)
        if held is None and run.start_sent is not None:
            await run.start_sent
            if run.start_error is not None:
                raise run.start_error
        return held

    async def _start_first(self, run: Running) -> None:
        """Publish the held `started` before any other event of the job (progress, a step): EVENTS
        keeps a job's events in the order they happened."""
        if (held := await self._held_start(run)) is not None:
            self.starts_alone += 1
            await self._emit(run, held)

    async def _report(self, run: Running, kind: EventType, **data) -> None:
        """Publish an outcome; within the window it carries the job's `started` (one message)."""
        event = self._event(run, kind, **data)
        if (held := await self._held_start(run)) is not None:
            self.starts_coalesced += 1
            carry(event, held)
        await self._emit(run, event)

    async def _emit(self, run: Running, event: JobEvent) -> None:
        """Publish one of the job's events: on the job's own subject when a later delivery must
        read it back (its journal), else in this executor's next batch (logsink.Emitter)."""
        if event.type in _JOURNAL:
            run.journaled = True
        await self.emitter.event(
            event, own_subject=event.type in _JOURNAL or (run.journaled and event.type in ENDED_OUTCOMES)
        )

    async def release_starts(self) -> None:
        """Publish each held `started` whose window passed (run supervised for the process's life)."""
        loop = asyncio.get_running_loop()
        while True:
            due_at = self.held.next_due()
            if due_at is None:
                self._held_added.clear()
                await self._held_added.wait()
                continue
            if (delay := due_at - time.monotonic()) > 0:
                await asyncio.sleep(delay)
                continue
            due = [
                (run, event)
                for event in self.held.due(time.monotonic())
                # A finishing job may not have taken its `started` yet (a dead letter is stored first).
                if (run := self.running.get(event.job_id) or self.finishing.get(event.job_id))
            ]
            # Every one marked before the first publish: a job ending while an earlier one is being
            # published must wait for its own `started`, not report without it.
            for run, _ in due:
                run.start_sent = loop.create_future()
            self.starts_alone += len(due)
            try:
                for run, event in due:
                    try:
                        await self._emit(run, event)
                    except NatsError as exc:
                        log.warning("job %s: `started` not published (%s)", event.job_id, exc)
                        run.start_error = exc
                    finally:
                        run.start_sent.set_result(None)  # type: ignore[union-attr]
            finally:
                for run, _ in due:  # cancelled midway (the process stops): release the waiters
                    if run.start_sent is not None:
                        _resolve(run.start_sent)
