"""Projects the EVENTS stream into the database: the job row's state and its timeline.

Idempotent: a timeline row is keyed by its EVENTS sequence (insert-or-ignore), and a job row only
moves for events newer than the last one it applied, so replaying the stream changes nothing.
"""

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import ValidationError
from sqlalchemy import bindparam, delete, literal, update
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskyard_common.nats_util import stream_seq
from taskyard_common.schemas import ENDED_OUTCOMES, FINAL_STATES, JobEvent, message_events
from taskyard_common.supervise import Backoff
from taskyard_common.topology import Topology

from . import costs, event_epochs, gates, messages, rollups
from .db import synced_off_loop
from .driver_sql import Many
from .http_metrics import EVENTS_UNPROJECTABLE, RECONCILED
from .job_store import CHECKPOINTS_ONCE, JobStore
from .lifecycle import JobRecord, changes, lost_attempt, lost_worker, reports, transition
from .models import events_table, jobs_table, messages_table

log = logging.getLogger("taskyard.api.projector")


def is_outage(exc: BaseException) -> bool:
    """Did a batch fail because something is away (NATS, the database: retried after the restart)
    rather than because of an event this code cannot project (isolated and skipped)? Unsure means
    an outage: skipping events while the database is down would lose them."""
    if isinstance(exc, DataError | IntegrityError):
        return False
    if isinstance(exc, DBAPIError):
        return not str(getattr(exc.orig, "sqlstate", "") or "").startswith(("22", "23"))
    return isinstance(exc, NatsError | ConnectionError | OSError | TimeoutError)


# After a short batch, wait this long for more events, so a trickle of events shares transactions.
# Short, because a parent's outcome waits this long before the gate keeper releases its children
# (50 ms made the release take ~40 ms at p50; docs/performance.md).
COALESCE_S = 0.005

# An event's place in EVENTS: its message's sequence times this, plus its index in an EventBatch
# (an executor's batch holds at most logsink.BATCH_MAX of them). One order for single events and
# batched ones; rows projected before batching existed keep their plain sequence, all lower.
PER_MESSAGE = 1024
# Looking up the durable goes to its consumer leader; while a JetStream cluster elects one, nobody
# answers and only a timeout tells. With the api's 10 s for JetStream requests, a restart after a
# leader died waited 10 s before it could try again; within 3 s the supervisor retries sooner.
SUBSCRIBE_TIMEOUT_S = 3.0
# The projector's restarts (a subscribe: one consumer-info request) are cheap, and the default
# backoff's 4 and 8 s kept it down after the cluster had elected the new leaders (kill -9 of the
# JOBS leader: jobs flowed again after 15.3 s, 8 s of it the election).
RESTART_BACKOFF = Backoff(initial_s=0.5, max_s=2.0)
# Why a job moved by the replay after the database lost commits (its `reconciled` timeline row).
REPLAYED_WHY = "the database lost events the projector had acked; projected again from EVENTS"

_jobs = jobs_table
_updates: dict[tuple[tuple[str, ...], bool], Many] = {}
# Projecting the same event twice inserts nothing (the rows are keyed by their place in EVENTS).
_TIMELINE = Many.insert_ignoring(events_table, "stream_seq")
_MESSAGES = Many.insert_ignoring(messages_table, "key")


def _update_jobs(columns: tuple[str, ...], unless_final: bool) -> Many:
    """UPDATE jobs SET <columns> WHERE id = :b_id, built once per column set and reused, so each
    batch is one executemany per set of columns (almost always one).

    `unless_final` adds `AND status NOT IN (final states)`: a non-final outcome (`started`,
    `progress`, …) was decided from the batch's read, and on SQLite the API may have committed
    `cancelled` since (on PostgreSQL the rows are locked for the batch); it must not be undone.
    """
    key = (columns, unless_final)
    stmt = _updates.get(key)
    if stmt is None:
        where = [_jobs.c.id == bindparam("b_id")]
        if unless_final:
            # Inline constants: an expanding IN parameter cannot go through executemany.
            final = [literal(state, literal_execute=False) for state in sorted(FINAL_STATES)]
            where.append(_jobs.c.status.not_in(final))
        statement = update(_jobs).where(*where).values({name: bindparam(f"b_{name}") for name in columns})
        stmt = _updates[key] = Many(lambda _dialect: statement)
    return stmt


def _second_run(job: JobRecord, event: JobEvent, seq: int) -> bool:
    """A worker's event of a generation that already ended for good, from another run.

    Stored after the event the row last applied: a later attempt (its delivery came back after a
    lost ack), an earlier one whose report was stored only after a later attempt ended the job (its
    executor retried the publish through a JetStream leader election for longer than ack_wait, and
    the job was redelivered meanwhile), or one that began after the end (a second copy in JOBS: an
    outbox republish after the duplicate window).

    Stored before it but projected after it, only an outcome: a generation ends once, so it is
    another run's (the job ran again after a machine crash, its JOBS delivery came back, and that
    run's outcome was projected first, because the projector's own delivery of the older one came
    back only after its ack_wait, its consumer having lost its acks in the same crash: seen with
    `sync_interval: always`; or because the catch-up replays it, Projector.catch_up). Any other
    earlier event arriving now is the job's own history, projected late because another api
    process took a later batch first (a failed attempt 1 reached the timeline after attempt 2's
    success), or a replay."""
    if not (
        job.status in ENDED_OUTCOMES and event.worker_id is not None and event.generation == job.generation
    ):
        return False
    if seq > job.last_event_seq:
        return event.attempt != job.attempt or (job.finished_at is not None and event.at > job.finished_at)
    return seq < job.last_event_seq and event.type in ENDED_OUTCOMES


def keyed(subject_is_batch: bool, seq: int, data: bytes) -> list[tuple[int, JobEvent]]:
    """The events of one EVENTS message, each with its place (PER_MESSAGE)."""
    events = message_events(data, subject_is_batch)[:PER_MESSAGE]
    return [(seq * PER_MESSAGE + index, event) for index, event in enumerate(events)]


def _row(
    job_id: str, seq: int | None, kind: str, at: float, attempt: int, worker: str | None, data: dict
) -> dict:
    return {
        "job_id": job_id,
        "stream_seq": seq,
        "type": kind,
        "at": at,
        "attempt": attempt,
        "worker_id": worker,
        "data": data,
    }


def apply_events(
    events: list[tuple[int, JobEvent]], jobs: dict[str, JobRecord]
) -> tuple[list[dict], list[dict], rollups.Tally]:
    """Move `jobs` (in place) by a batch's events in stream order; return the timeline rows, the
    checkpoint rows and the rollup tally they make. Pure: the caller reads and writes the rows.

    An outcome that carries its `started` (the executor coalesced them) is two timeline rows and two
    transitions, exactly as if the executor had reported twice.

    A worker's events of another run of a generation that already succeeded, failed or went dead
    (`_second_run`) are recorded as `duplicate_run` rows and change nothing (DESIGN: at-least-once).
    Either the worker that reported the outcome stopped before acking its delivery (the outcome was
    in its executor's batch, not in the job's journal, so the next worker could not see it), or JOBS
    held a second copy (the outbox republished after the duplicate window).
    """
    rows: list[dict] = []
    checkpoints: list[dict] = []
    tally = rollups.Tally()
    for seq, message in events:
        for report in reports(message, seq):
            event = report.event
            # The carried `started` is keyed by -seq: unique, so a replay inserts it once.
            key = -seq if report.held else seq
            rows.append(
                _row(event.job_id, key, event.type, event.at, event.attempt, event.worker_id, event.data)
            )
            job = jobs.get(event.job_id)
            if job is None:
                continue  # pruned, or of another install's database: the timeline row stays
            if _second_run(job, event, seq):
                rows[-1].update(type="duplicate_run", data={"event": event.type, **event.data})
                continue
            if seq > job.last_event_seq and lost_worker(job, event):
                attempt, worker = lost_attempt(job, event)
                rows.append(_row(job.id, None, "worker_lost", event.at, attempt, worker, {}))
            jobs[job.id] = moved = transition(job, report)
            tally.moved(job, moved, event.at)
            if event.type == "waiting":
                checkpoints.append(_checkpoint_row(event))
    return rows, checkpoints, tally


def disproved_losses(
    events: list[tuple[int, JobEvent]], before: dict[str, JobRecord]
) -> set[tuple[str, int]]:
    """The (job, attempt) pairs whose `worker_lost` row a late report proves wrong.

    Two api processes project EVENTS at once, so a job's next `started` can be projected before its
    previous attempt's `retrying`, stored just before it but taken by the other process's batch:
    the row, still running the earlier attempt, then reads as a worker lost (`lost_worker`). When
    that earlier report arrives (older than the row's last applied event), the attempt is known to
    have ended by its worker's own word: its `worker_lost` row goes (Projector.project). The timeline
    is thus wrong only between the two commits.

    Only `retrying`: it spends its attempt, so no later run has that number. After a hand-back or a
    person's answer the same attempt runs again, and its worker may really be lost (a replay of the
    older report must not take that row back)."""
    return {
        (event.job_id, event.attempt)
        for seq, event in events
        if event.type == "retrying"
        and event.worker_id is not None
        and (job := before.get(event.job_id)) is not None
        and seq < job.last_event_seq
        and event.generation == job.generation
    }


class Projector:
    def __init__(
        self,
        js: JetStreamContext,
        topo: Topology,
        sessions: async_sessionmaker[AsyncSession],
        batch: int,
        follow: Callable[[gates.Opened], Awaitable[list[JobRecord]]],
        ack_wait_s: float = 10.0,
        crash_after_s: float | None = None,
    ) -> None:
        self.js, self.topo, self.sessions, self.batch = js, topo, sessions, batch
        self.ack_wait_s = ack_wait_s
        # Fault injection (settings.fault_crash_mid_projection_after_s): the monotonic time after
        # which the next batch exits the process between its writes and its commit.
        self.crash_at = time.monotonic() + crash_after_s if crash_after_s else None
        # Publishes the jobs a projected outcome released (their gates opened); see gates.
        self.follow = follow
        self.stopping = False
        # Moving average of run time per job type (seconds): what "usually takes" means for `stuck`.
        self.typical_duration_s: dict[str, float] = {}
        # Job webhooks (notify.Notifier): outcomes enqueue a delivery in the batch's transaction.
        self.notifier: Any = None
        # The longest stored thread message (settings.message_max_chars): a longer `say` is cut.
        self.message_max_chars = 4000
        # Where EVENTS' sequences went back after a crash (event_epochs), and the highest raw
        # sequence this projector has seen: one at or below it makes it look again.
        self.epochs: list[event_epochs.Epoch] = []
        self.high_raw = 0
        # Set once the first subscribe has projected again what the database lost (`catch_up`):
        # until then the reconciler must not judge a row by the durable's ack floor.
        self.caught_up = asyncio.Event()

    async def run(self) -> None:
        """Subscribe, then project until `stop()`. Run supervised (app.py): a failure (NATS away,
        the durable consumer deleted, the database down) ends it, and the restart subscribes again,
        which re-creates a consumer that is gone; the durable keeps our place meanwhile.

        A hand-written fetch loop, not FastStream's batch pull subscriber (which the metrics service
        uses): see docs/architecture.md, "Consuming EVENTS"."""
        subscribing = self.js.pull_subscribe(
            f"{self.topo.prefix}.events.>",
            durable=self.topo.projector_durable,
            stream=self.topo.events_stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.ack_wait_s,
                max_ack_pending=50_000,
            ),
        )
        sub = await asyncio.wait_for(subscribing, SUBSCRIBE_TIMEOUT_S)
        try:
            await self.check_epochs()
            await self.catch_up(sub)
            self.caught_up.set()
            self.high_raw = 0
            while not self.stopping:
                try:
                    msgs = await sub.fetch(self.batch, timeout=1)
                except (NatsTimeout, TimeoutError):
                    continue
                await self.handle(msgs)
                if len(msgs) < self.batch:
                    # A trickle: let a few more events gather, so each transaction carries tens of them
                    # rather than one or two (the timeline is a few ms later, the api far cheaper).
                    await asyncio.sleep(COALESCE_S)
        finally:
            # A subscription left behind holds nc.drain() at shutdown until its timeout.
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()

    async def handle(self, msgs: list) -> None:
        """One batch: project it in one transaction, then ack it. An outage hands the batch back
        and raises (ending run(): the supervisor restarts it)."""
        try:
            await self.project(msgs)
        except Exception as exc:
            if is_outage(exc):
                # Hand the batch back now rather than after ack_wait; the restart retries it.
                await _nak(msgs)
                raise
            await self._one_by_one(msgs)
            return
        for msg in msgs:
            await msg.ack()

    async def _one_by_one(self, msgs: list) -> None:
        """A batch failed for a reason other than an outage: project its events alone, so one
        event the code cannot project (a bug, a malformed event) does not stop projection for
        everyone, forever. That event is logged, counted and terminated (never redelivered)."""
        for msg in msgs:
            try:
                await self.project([msg])
            except Exception as exc:
                if is_outage(exc):
                    await _nak(msgs[msgs.index(msg) :])
                    raise
                EVENTS_UNPROJECTABLE.inc()
                log.exception(
                    "cannot project event %s (EVENTS seq %s): skipped", msg.subject, stream_seq(msg)
                )
                await msg.term()
                continue
            await msg.ack()

    def stop(self) -> None:
        """Finish the batch in hand (projected and acked, not redelivered after ack_wait), then end."""
        self.stopping = True

    def _learn_duration(self, event: JobEvent) -> None:
        duration = event.data.get("duration_s")
        if event.type == "succeeded" and event.job_type and isinstance(duration, int | float):
            old = self.typical_duration_s.get(event.job_type, duration)
            self.typical_duration_s[event.job_type] = 0.8 * old + 0.2 * duration

    async def check_epochs(self) -> None:
        """Did EVENTS go back (a crash took messages the database had projected)? Then add an
        epoch, so what comes next is projected above everything recorded (event_epochs)."""
        state = (await self.js.stream_info(self.topo.events_stream)).state
        async with self.sessions() as session:
            self.epochs, added = await event_epochs.check(
                session, state.first_seq, state.last_seq, PER_MESSAGE, self._first_event
            )
            await session.commit()
        if added is not None:
            log.warning(
                "EVENTS went back (a crash lost messages already projected): sequences after %d are "
                "projected %d higher",
                added.after_seq,
                added.shift,
            )

    async def catch_up(self, sub) -> int:  # noqa: ANN001 - nats-py's PullSubscription
        """Project again what the durable consumer acked but the database no longer holds; returns
        how many EVENTS messages that was.

        The durable's ack floor is what was projected; the database's highest timeline row is
        what it kept. They part when the database lost commits the projector had acked (SQLite
        with synchronous=NORMAL in a machine crash, a database restored from a backup): those jobs'
        rows are back where they were (`queued`, `running`) while their JOBS messages are gone, so
        the reconciler would send them again and they would run twice. EVENTS still holds their
        events, and projecting is idempotent: read them once more through an ephemeral consumer,
        from after the last recorded one up to the ack floor, before the durable goes on."""
        info = await asyncio.wait_for(sub.consumer_info(), SUBSCRIBE_TIMEOUT_S)
        acked = info.ack_floor.stream_seq if info.ack_floor else 0
        async with self.sessions() as session:
            recorded = await event_epochs.recorded_max(session, PER_MESSAGE)
        start = event_epochs.raw_of(recorded, self.epochs) + 1
        if start > acked:
            return 0  # the usual case: the database holds all the projector acked
        replay = await self.js.pull_subscribe(
            f"{self.topo.prefix}.events.>",
            stream=self.topo.events_stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start,
                inactive_threshold=30.0,
                num_replicas=1,
                mem_storage=True,
            ),
        )
        read = 0
        try:
            while True:
                try:
                    msgs = await replay.fetch(self.batch, timeout=2)
                except (NatsTimeout, TimeoutError):
                    break  # nothing more in EVENTS
                within = [msg for msg in msgs if stream_seq(msg) <= acked]
                read += len(within)
                if within:
                    await self.project(within, replay=True)
                if len(within) < len(msgs) or stream_seq(msgs[-1]) >= acked:
                    break
        finally:
            with contextlib.suppress(NatsError):
                await replay.unsubscribe()  # the consumer goes after its inactive threshold
        log.warning(
            "the database lost events the projector had acked (EVENTS %d..%d): projected %d messages again",
            start,
            acked,
            read,
        )
        return read

    async def _first_event(self, raw: int) -> tuple[int, str, str, float] | None:
        """The first event of the EVENTS message at or after `raw` (job id, type, time)."""
        try:
            found = await self.js.get_msg(
                self.topo.events_stream, seq=raw, subject=f"{self.topo.prefix}.events.>", next=True
            )
        except NotFoundError:
            return None
        try:
            events = message_events(found.data or b"", self.topo.is_batch_subject(found.subject or ""))
        except ValidationError:
            return None
        if not events or found.seq is None:
            return None
        return found.seq, events[0].job_id, events[0].type, events[0].at

    async def project(self, msgs: list, replay: bool = False) -> None:
        """Project a batch in one transaction. `replay` (catch_up): events the database lost; a
        job they move gets a `reconciled` timeline row, and a job the database does not know
        at all is counted as a lost record (its events are not stored: they would be a timeline
        without a job)."""
        raws = [stream_seq(msg) for msg in msgs]
        if raws and min(raws) <= self.high_raw:
            await self.check_epochs()  # a redelivery, or the stream went back
        self.high_raw = max([self.high_raw, *raws])
        events: list[tuple[int, JobEvent]] = []
        for msg, raw in zip(msgs, raws, strict=True):
            if msg.subject == self.topo.queued_subject:
                continue  # this api's own announcements: their rows were written as they were sent
            seq = event_epochs.effective(raw, self.epochs)
            try:
                events += keyed(self.topo.is_batch_subject(msg.subject), seq, msg.data)
            except ValidationError as exc:
                log.error("dropping malformed event %s: %s", msg.subject, exc)
        if not events:
            return
        events.sort(key=lambda pair: pair[0])
        async with self.sessions() as session, synced_off_loop(session):
            # Several api processes project at once: decide from this batch's rows as they are
            # now; another batch of the same jobs waits for this commit.
            before = await JobStore.lock_many(session, {e.job_id for _, e in events})
            jobs = dict(before)
            for _, event in events:
                self._learn_duration(event)
            rows, checkpoints, tally = apply_events(events, jobs)
            # An outcome of a job the database does not know: it ran, and its JOBS message was
            # acked, but its row is gone (the database lost the commit that made it, or the
            # executor ran it after a crash before the reconciler re-created it): nothing can bring
            # the row back (events do not carry the spec), so it is said, not silent.
            lost = {
                row["job_id"] for row in rows if row["job_id"] not in before and row["type"] in ENDED_OUTCOMES
            }
            if replay:
                # Not stored: they would be a timeline without a job (a pruned one's, too).
                rows = [row for row in rows if row["job_id"] in before]
                rows += [
                    _row(job_id, None, "reconciled", time.time(), job.attempt, None, _REPLAYED)
                    for job_id, job in jobs.items()
                    if changes(before[job_id], job)
                ]
            await _TIMELINE.run(session, rows)
            for job_id, attempt in disproved_losses(events, before):
                await session.execute(
                    delete(events_table).where(
                        events_table.c.job_id == job_id,
                        events_table.c.attempt == attempt,
                        events_table.c.type == "worker_lost",
                    )
                )
            # What each attempt used and spent, keyed like its outcome's timeline row (costs.py).
            await costs.store(session, events, before)
            by_columns: dict[tuple[tuple[str, ...], bool], list[dict]] = {}
            for job_id, job in jobs.items():
                if not (values := changes(before[job_id], job)):
                    continue
                params = {f"b_{name}": value for name, value in values.items()}
                params["b_id"] = job_id
                by_columns.setdefault((tuple(values), not job.finished), []).append(params)
            for (columns, unless_final), batch in by_columns.items():
                await _update_jobs(columns, unless_final).run(session, batch)
            if checkpoints:
                await CHECKPOINTS_ONCE.run(session, checkpoints)
            said = messages.from_events(events, set(before), self.message_max_chars)
            if said:  # the thread: what the jobs said and asked, in stream order
                await _MESSAGES.run(session, said)
            # Outcomes and what they open commit together; the released jobs are due in the
            # outbox, so a crash before the publish below loses nothing.
            ended = [job for job_id, job in jobs.items() if job.finished and not before[job_id].finished]
            opened = await gates.settle(session, ended) if ended else None
            enqueued = 0
            if self.notifier is not None:
                # Moved here, ended by the API (a checkpoint's rejection arrives as a `failed` event
                # on a job it already failed), or ended by the gate keeper: one delivery id per
                # outcome, so seeing an outcome twice stores it once.
                changed = [
                    job for job_id, job in jobs.items() if job.status != before[job_id].status or job.finished
                ]
                enqueued = await self.notifier.enqueue(session, changed + (opened.ended if opened else []))
            await rollups.add(session, tally)
            if self.crash_at is not None and time.monotonic() >= self.crash_at:
                os._exit(98)
            await session.commit()
        _count_repairs(rows if replay else [], lost)
        if enqueued:
            self.notifier.wake.set()
        if opened:
            await self.follow(opened)


_REPLAYED = {"action": "replayed", "why": REPLAYED_WHY}


def _count_repairs(rows: list[dict], lost: set[str]) -> None:
    """The metric and log of what a batch found: jobs moved by a replay (Projector.catch_up),
    outcomes of jobs whose record is lost."""
    moved = sum(1 for row in rows if row["type"] == "reconciled")
    if moved:
        RECONCILED.labels("replayed").inc(moved)
        log.warning("reconciler: replayed the lost events of %d jobs", moved)
    if lost:
        RECONCILED.labels("record_lost").inc(len(lost))
        log.error(
            "%d jobs ended without a row (the database lost their record in a crash or a restore, "
            "or they were deleted): %s",
            len(lost),
            sorted(lost)[:20],
        )


async def _nak(msgs: list) -> None:
    for msg in msgs:
        with contextlib.suppress(NatsError):
            await msg.nak(delay=1)


def _checkpoint_row(event: JobEvent) -> dict:
    c = event.data["checkpoint"]
    return {
        "id": c["id"],
        "job_id": event.job_id,
        "generation": event.generation,
        "name": c["name"],
        "kind": c["kind"],
        "message": c.get("message") or "",
        "data": c.get("data"),
        "choices": c.get("choices"),
        "approvers": c.get("approvers") or ["admin"],
        "on_reject": c.get("on_reject", "fail"),
        "status": "pending",
        "created_at": event.at,
        "expires_at": c["expires_at"],
    }
