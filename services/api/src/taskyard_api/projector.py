"""Projects the EVENTS stream into the database: the job row's state and its timeline.

Idempotent: a timeline row is keyed by its EVENTS sequence (insert-or-ignore), and a job row only
moves for events newer than the last one it applied, so replaying the stream changes nothing.
"""

import asyncio
import contextlib
import logging
import time

from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError
from sqlalchemy import bindparam, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskyard_common.nats_util import stream_seq
from taskyard_common.schemas import FINAL_STATES, JobEvent
from taskyard_common.topology import Topology

from .models import Checkpoint, Job, JobEventRow

log = logging.getLogger("taskyard.api.projector")
COALESCE_S = 0.05

_jobs = Job.__table__
# What apply_event reads (and may write), loaded per batch...
_READ = (
    "status",
    "generation",
    "attempt",
    "worker_id",
    "started_at",
    "updated_at",
    "last_event_seq",
)
# ...and what it only writes: loading these (results can be large JSON) would be wasted work.
_WRITE_ONLY = ("finished_at", "progress", "result", "error")
_UNSET = object()


class JobState:
    """The part of a job row that projection moves; `changes()` is what to write back."""

    __slots__ = ("id", "_loaded", *_READ, *_WRITE_ONLY)

    def __init__(self, row) -> None:  # noqa: ANN001 - a Row of (id, *_READ)
        self.id, self._loaded = row[0], tuple(row[1:])
        for name, value in zip(_READ, self._loaded, strict=True):
            setattr(self, name, value)
        for name in _WRITE_ONLY:
            setattr(self, name, _UNSET)

    def changes(self) -> dict:
        """Only the columns that moved: writing back an unchanged one could undo a concurrent
        write (PostgreSQL), e.g. put back `queued` over the API's `cancelled`."""
        values = {
            name: value
            for name, old in zip(_READ, self._loaded, strict=True)
            if (value := getattr(self, name)) != old
        }
        values.update((n, v) for n in _WRITE_ONLY if (v := getattr(self, n)) is not _UNSET)
        return values


_updates: dict[tuple[tuple[str, ...], bool], object] = {}


def _update_jobs(columns: tuple[str, ...], unless_final: bool):
    """UPDATE jobs SET <columns> WHERE id = :b_id, built once per column set and reused, so each
    batch is one cached executemany per set of columns (almost always one).

    `unless_final` adds `AND status NOT IN (final states)`: a non-final outcome (`started`,
    `progress`, …) was computed from the batch's snapshot, and on PostgreSQL the API may have
    committed `cancelled` since; that row must not be moved back.
    """
    key = (columns, unless_final)
    stmt = _updates.get(key)
    if stmt is None:
        where = [_jobs.c.id == bindparam("b_id")]
        if unless_final:
            # Inline constants: an expanding IN parameter cannot go through executemany.
            final = [literal(state, literal_execute=False) for state in sorted(FINAL_STATES)]
            where.append(_jobs.c.status.not_in(final))
        stmt = _updates[key] = (
            update(_jobs).where(*where).values({name: bindparam(f"b_{name}") for name in columns})
        )
    return stmt


def apply_event(job: JobState, event: JobEvent, seq: int) -> list[dict]:
    """Move `job` by one event; returns extra timeline rows the event implies (a lost worker)."""
    extra: list[dict] = []
    job.last_event_seq = seq
    if event.generation < job.generation:
        return extra
    kind, data = event.type, event.data
    if job.status in FINAL_STATES and kind not in FINAL_STATES:
        return extra  # e.g. a late `started` after the API cancelled the job
    job.updated_at = max(job.updated_at, event.at)
    # `queued` moves nothing: it is sent before JetStream acks the job (so it precedes `started`),
    # and only QueuedMarker, which has the ack, may mark a row queued (else a failed publish would
    # leave a `queued` row the outbox never republishes).
    if kind == "started":
        if job.status == "running" and job.worker_id and event.attempt > job.attempt:
            extra.append(_row(job.id, None, "worker_lost", event.at, job.attempt, job.worker_id, {}))
        job.status, job.attempt, job.worker_id = "running", event.attempt, event.worker_id
        job.started_at = job.started_at or event.at
    elif kind == "progress":
        job.progress = data
    elif kind == "waiting":
        job.status, job.worker_id = "waiting", None
    elif kind == "retrying":
        job.status, job.error = "retrying", data.get("error")
    elif kind in FINAL_STATES:
        job.status, job.finished_at = kind, event.at
        job.attempt = max(job.attempt, event.attempt)
        if kind == "succeeded":
            job.result, job.error = data.get("result"), None
        elif kind != "cancelled":
            job.error = data.get("error")
    return extra


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


class Projector:
    def __init__(
        self, js: JetStreamContext, topo: Topology, sessions: async_sessionmaker[AsyncSession], batch: int
    ) -> None:
        self.js, self.topo, self.sessions, self.batch = js, topo, sessions, batch
        self.applied = 0
        self.stopping = False
        # Moving average of run time per job type (seconds): what "usually takes" means for `stuck`.
        self.typical_duration_s: dict[str, float] = {}

    async def run(self) -> None:
        sub = await self.js.pull_subscribe(
            f"{self.topo.prefix}.events.>",
            durable=self.topo.projector_durable,
            stream=self.topo.events_stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=60,
                max_ack_pending=50_000,
            ),
        )
        try:
            while not self.stopping:
                try:
                    msgs = await sub.fetch(self.batch, timeout=1)
                except (NatsTimeout, TimeoutError):
                    continue
                except Exception as exc:  # noqa: BLE001 - NATS reconnecting; the durable keeps our place
                    log.warning("projector fetch failed, retrying: %s", exc)
                    await asyncio.sleep(1)
                    continue
                try:
                    await self.project(msgs)
                except Exception as exc:  # noqa: BLE001 - DB down: hand the batch back, retry shortly
                    log.warning("projection of %d events failed, will retry: %s", len(msgs), exc)
                    for msg in msgs:
                        await msg.nak(delay=1)
                    await asyncio.sleep(1)
                    continue
                for msg in msgs:
                    await msg.ack()
                if len(msgs) < self.batch:
                    # A trickle: let a few more events gather, so each transaction carries tens of them
                    # rather than one or two (the timeline is a few ms later, the api far cheaper).
                    await asyncio.sleep(COALESCE_S)
        finally:
            # A subscription left behind holds nc.drain() at shutdown until its timeout.
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()

    def stop(self) -> None:
        """Finish the batch in hand (projected and acked, not redelivered after ack_wait), then end."""
        self.stopping = True

    def _learn_duration(self, event: JobEvent) -> None:
        duration = event.data.get("duration_s")
        if event.type == "succeeded" and event.job_type and isinstance(duration, int | float):
            old = self.typical_duration_s.get(event.job_type, duration)
            self.typical_duration_s[event.job_type] = 0.8 * old + 0.2 * duration

    async def project(self, msgs: list) -> None:
        events: list[tuple[int, JobEvent]] = []
        for msg in msgs:
            try:
                events.append((stream_seq(msg), JobEvent.model_validate_json(msg.data)))
            except ValidationError as exc:
                log.error("dropping malformed event %s: %s", msg.subject, exc)
        if not events:
            return
        events.sort(key=lambda pair: pair[0])
        async with self.sessions() as session:
            ids = {e.job_id for _, e in events}
            found = await session.execute(
                select(_jobs.c.id, *(_jobs.c[name] for name in _READ)).where(_jobs.c.id.in_(ids))
            )
            jobs = {row[0]: JobState(row) for row in found}
            moved: dict[str, JobState] = {}
            rows, checkpoints = [], []
            for seq, event in events:
                self._learn_duration(event)
                rows.append(
                    _row(event.job_id, seq, event.type, event.at, event.attempt, event.worker_id, event.data)
                )
                job = jobs.get(event.job_id)
                if job is not None and seq > job.last_event_seq:
                    rows.extend(apply_event(job, event, seq))
                    moved[job.id] = job
                if event.type == "waiting" and job is not None:
                    checkpoints.append(_checkpoint_row(event))
            await session.execute(_insert_ignoring(session, JobEventRow, "stream_seq"), rows)
            by_columns: dict[tuple[tuple[str, ...], bool], list[dict]] = {}
            for job in moved.values():
                values = job.changes()
                params = {f"b_{name}": value for name, value in values.items()}
                params["b_id"] = job.id
                key = (tuple(values), job.status not in FINAL_STATES)
                by_columns.setdefault(key, []).append(params)
            for (columns, unless_final), params in by_columns.items():
                await session.execute(_update_jobs(columns, unless_final), params)
            if checkpoints:
                await session.execute(_insert_ignoring(session, Checkpoint, "id"), checkpoints)
            await session.commit()
        self.applied += len(events)
        self.last_applied_at = time.time()


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


def _insert_ignoring(session: AsyncSession, model, key: str):  # noqa: ANN001
    """INSERT … ON CONFLICT DO NOTHING: projecting the same event twice inserts nothing.

    Executed with the rows as executemany parameters (not `.values(rows)`), so the statement is
    compiled once and cached; a multi-row `.values()` compiled anew for every batch and was 12 % of
    the api's CPU under load (docs/performance.md, "What was changed").
    """
    insert = pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
    return insert(model.__table__).on_conflict_do_nothing(index_elements=[key])
