"""Job commands on the API side: submit (through the outbox), cancel, retry, and the outbox itself.

Each command loads a record, asks the lifecycle core what follows, and writes that back under a
guard (job_store); publishing is the only step outside the database, and a job whose publish did
not happen stays due in the outbox (`outbox_at`) until it does.
"""

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskyard_common.schemas import JobEvent
from taskyard_common.telemetry import current_traceparent, tracer, tracing_on
from taskyard_common.topology import QueueLimitReached

from . import admission, approvals, gates
from .auth import Principal
from .db import one_process_at_a_time, unsynced
from .failures import Forbidden, Invalid, NotFound, Refused, TooLarge
from .ids import JOB_ID, new_id
from .job_store import JobStore
from .job_types import KnownTypes
from .key_defaults import MAX_KEY, GateDefaults
from .key_rules import Gate, gates_of
from .lifecycle import GATED_STATES, Cancel, Event, JobRecord, Published, Retry, new_job, transition
from .models import edges_table, job_notify_table
from .notify import webhook_rows
from .plan import Item, check_graph
from .publisher import Publisher
from .schemas import ApprovalPolicies
from .settings import ApiSettings

log = logging.getLogger("taskyard.api.jobs")
_tracer = tracer("taskyard.api")

# Most jobs one grouped INSERT carries (like a jobs:batch request).
GROUP_MAX = 500
# How often a command decides again when a concurrent writer moved the job under it.
DECIDE_TRIES = 5
# Due jobs the outbox publishes at a time.
OUTBOX_PAGE = 1000


# Work a command's transaction does after its own writes (the gate keeper's), committed with them.
Follow = Callable[[AsyncSession, list[JobRecord]], Awaitable[gates.Opened]]


def _rearm(now: float) -> Follow:
    """After retries: what waited for the retried jobs and did not succeed waits for them again."""

    async def follow(session: AsyncSession, jobs: list[JobRecord]) -> gates.Opened:
        return await gates.rearm(session, jobs, now)

    return follow


def _may_see(who: Principal, job: JobRecord) -> bool:
    return who.at_least("admin") or job.owner_id == who.id


def _new_record(
    item: Item,
    owner: Principal,
    now: float,
    member: dict[str, Any],
    policies: ApprovalPolicies,
    defaults: GateDefaults | None = None,
) -> JobRecord:
    spec = item.spec
    fields = spec.record_fields(now)
    policy = approvals.policy_for(policies, spec.type, spec.queue)
    fields["approval"] = approvals.approval_for(fields.get("approval"), policy, now)
    if defaults is not None:
        # The api's configured keys for its type or queue, unless the job names its own.
        fields |= defaults.fill(fields)
        for kind in ("concurrency", "rate"):
            if len(fields.get(f"{kind}_key") or "") > MAX_KEY:
                raise Invalid(
                    f"{item.field(kind)}: the configured default key expands to "
                    f"{len(fields[f'{kind}_key'])} characters (at most {MAX_KEY})"
                )
    job_id = item.id or new_id(now)
    traceparent = None
    if tracing_on():
        # The job's own span: its trace id is shown on the job and executors continue it.
        attrs = {"taskyard.job.id": job_id, "taskyard.queue": spec.queue, "taskyard.type": spec.type}
        with _tracer.start_as_current_span("taskyard.job.enqueue", attributes=attrs):
            traceparent = current_traceparent()
    return new_job(
        id=job_id,
        owner_id=owner.id,
        now=now,
        traceparent=traceparent,
        blocked=bool(item.parents),
        node=item.name,
        inputs=item.inputs,
        map=item.map,
        **member,
        **fields,
        artifacts=spec.artifacts(),
    )


def _queued_event(job: JobRecord, at: float) -> JobEvent:
    return JobEvent.of(job, "queued", {"generation": job.generation}, at=at)


@dataclass
class Submission:
    """New jobs and the rows stored with them in the same transaction (edges, batch, workflow)."""

    jobs: list[JobRecord]
    others: list[tuple[Table, list[dict[str, Any]]]] = field(default_factory=list)


def _merged(group: list[Submission]) -> Submission:
    if len(group) == 1:
        return group[0]
    by_table: dict[str, tuple[Table, list[dict[str, Any]]]] = {}
    for sub in group:
        for table, rows in sub.others:
            by_table.setdefault(table.name, (table, []))[1].extend(rows)
    return Submission([job for sub in group for job in sub.jobs], list(by_table.values()))


# What SubmitGroup's store returns once a group's rows are committed: publishing them, to await.
Publish = Callable[[], Awaitable[list[JobRecord]]]
# A request waiting in SubmitGroup: its jobs, and the future its caller awaits.
Request = tuple[Submission, asyncio.Future[list[JobRecord]]]


class SubmitGroup:
    """Group commit: requests that arrive while one INSERT is in flight share the next one (one
    transaction, one publish burst, one wake-up) instead of queueing for the database one by one.
    A lone request goes straight through.

    Two groups are under way at most: one publishing (NATS, then the marking's transaction) while
    the next one's INSERT runs. On PostgreSQL both mostly wait on other processes (the server,
    JetStream); with two requests in flight one api ran +8 % faster than when the next INSERT
    waited for the marking (median of 5 pairs, docs/performance.md, stop 44). Groups publish in
    the order they were stored, so a job stored after another is not put in JOBS ahead of it.
    """

    def __init__(self, store: Callable[[Submission], Awaitable[Publish]]) -> None:
        self._store = store
        self._waiting: list[Request] = []
        self._writer: asyncio.Task[None] | None = None  # the task writing groups, while there are any
        # Set when a request comes or a publish ends: what the writer waits for while idle.
        self._wake = asyncio.Event()

    async def submit(self, submission: Submission) -> list[JobRecord]:
        """Its jobs once they are stored and their publish was attempted, in order."""
        done: asyncio.Future[list[JobRecord]] = asyncio.get_running_loop().create_future()
        self._waiting.append((submission, done))
        self._wake.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all())
        return await done

    def _next_group(self) -> list[Request]:
        group: list[Request] = []
        size = 0
        while self._waiting and (not group or size + len(self._waiting[0][0].jobs) <= GROUP_MAX):
            request = self._waiting.pop(0)
            group.append(request)
            size += len(request[0].jobs)
        return group

    async def _write_all(self) -> None:
        publishing: asyncio.Task[None] | None = None  # the group stored before the one in hand
        # Ends (no await between the last check and returning) as soon as nobody waits and the
        # last group published, so a later submit that finds it done starts a new one.
        while self._waiting or publishing is not None:
            if not self._waiting:
                assert publishing is not None
                # Until that publish ends or a request comes (its INSERT need not wait for it).
                self._wake.clear()
                if not publishing.done():
                    await self._wake.wait()
                if publishing.done():
                    publishing = None
                continue
            group = self._next_group()
            try:
                publish = await self._store(_merged([sub for sub, _ in group]))
            except IntegrityError as exc:
                if publishing is not None:
                    await publishing
                    publishing = None
                await self._one_by_one(group, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - every request of the group answers with it
                for _, done in group:
                    _answer(done, exc)
                continue
            if publishing is not None:
                await publishing
            publishing = asyncio.create_task(self._publish(group, publish))
            publishing.add_done_callback(lambda _: self._wake.set())

    @staticmethod
    async def _publish(group: list[Request], publish: Publish) -> None:
        try:
            stored = await publish()
        except Exception as exc:  # noqa: BLE001 - stored, so due in the outbox; each request is told
            for _, done in group:
                _answer(done, exc)
            return
        start = 0
        for sub, done in group:
            _answer(done, stored[start : start + len(sub.jobs)])
            start += len(sub.jobs)

    async def _one_by_one(self, group: list[Request], exc: IntegrityError) -> None:
        """A taken idempotency key fails the whole INSERT: write each request on its own, so only
        the one that holds the key gets the error."""
        if len(group) == 1:
            _answer(group[0][1], exc)
            return
        for sub, done in group:
            try:
                publish = await self._store(sub)
            except Exception as one:  # noqa: BLE001 - that request answers with it
                _answer(done, one)
                continue
            await self._publish([(sub, done)], publish)


def _answer(done: asyncio.Future[list[JobRecord]], outcome: list[JobRecord] | BaseException) -> None:
    if done.done():
        return  # that request was cancelled (client gone); its jobs still stand
    if isinstance(outcome, BaseException):
        done.set_exception(outcome)
    else:
        done.set_result(outcome)


class JobService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        publisher: Publisher,
        settings: ApiSettings,
        known_types: KnownTypes,
    ) -> None:
        self.sessions, self.publisher, self.settings = sessions, publisher, settings
        self.known_types = known_types
        self.store = JobStore(sessions.kw["bind"])
        # Set when a job was stored with a time to wait for: the gate timer recomputes its sleep.
        self.gates_changed = asyncio.Event()
        self._group = SubmitGroup(self._store_new)

    async def submit(
        self, items: list[Item], owner: Principal, *extra: tuple[Table, dict[str, Any]], **member: Any
    ) -> list[tuple[JobRecord, bool]]:
        """Store and publish new jobs; returns (job, created) in order. A request is accepted whole
        or not at all: every item is checked before anything is written. `extra`: rows stored with
        the jobs (their batch, their workflow); `member`: columns every job gets (batch_id, …)."""
        with _tracer.start_as_current_span("taskyard.submit", attributes={"taskyard.jobs": len(items)}):
            stored_parents = await self._check(items, owner)
            return await self._submit(items, owner, stored_parents, list(extra), member)

    async def _check(self, items: list[Item], owner: Principal) -> dict[str, JobRecord]:
        """Refuse what can never run; returns the stored jobs named as parents."""
        limit = self.settings.max_payload_bytes
        for item in items:
            if item.spec.notify and not self.settings.webhook_secret:
                raise Invalid(
                    f"{item.field('notify')}: this api has no TASKYARD_API_WEBHOOK_SECRET to sign webhooks with"
                )
            if (size := item.spec.payload_size()) > limit:
                raise TooLarge(f"{item.field('payload')}: {size} bytes exceeds the limit of {limit}")
        problems: list[str] = []
        for item in items:
            problems += await self.known_types.problems(item.spec, item.where)
        if problems:
            raise Invalid("; ".join(problems[:10]))
        parent_ids = check_graph(items)
        parents: dict[str, JobRecord] = {}
        if parent_ids:
            async with self.sessions() as session:
                parents = await JobStore.get_many(session, parent_ids)
            for item in items:
                for dep in item.parents:
                    job = parents.get(dep.job)
                    if dep.job in parent_ids and (job is None or not _may_see(owner, job)):
                        raise Invalid(f"{item.field(item.parents_field)}: job {dep.job} not found")
        # A new queue gets its consumers before its first job is stored: past the install's queue
        # limit the submit is refused and nothing is written (stored, it could never be published).
        first: dict[str, Item] = {}
        for item in items:
            first.setdefault(item.spec.queue, item)
        for queue, item in first.items():
            try:
                await self.publisher.ensure_queue(queue)
            except QueueLimitReached as exc:
                raise Refused(f"{item.field('queue')}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - NATS away: stored now, the outbox publishes it
                log.warning("could not create the consumers of queue %r (the outbox retries): %s", queue, exc)
        return parents

    async def _submit(
        self,
        items: list[Item],
        owner: Principal,
        parents: dict[str, JobRecord],
        extra: list[tuple[Table, dict[str, Any]]],
        member: dict[str, Any],
    ) -> list[tuple[JobRecord, bool]]:
        now = time.time()
        keys = [item.spec.idempotency_key for item in items if item.spec.idempotency_key]
        existing: dict[str, JobRecord] = {}
        if keys:
            async with self.sessions() as session:
                existing = await JobStore.by_idempotency_key(session, owner.id, keys)
        results: list[tuple[JobRecord, bool]] = []
        by_name: dict[str, str] = {}  # name in the request → job id
        for item in items:
            key = item.spec.idempotency_key
            if key and key in existing:
                results.append((existing[key], False))
            else:
                job = _new_record(
                    item, owner, now, member, self.settings.approval_policies, self.settings.gate_defaults
                )
                results.append((job, True))
                if key:
                    existing[key] = job  # the same key twice in one batch is one job
            if item.name:
                by_name[item.name] = results[-1][0].id
        new = [job for job, created in results if created]
        edges = [
            {"parent_id": by_name.get(dep.job, dep.job), "child_id": job.id, "on": dep.on, "state": "open"}
            for item, (job, created) in zip(items, results, strict=True)
            if created
            for dep in item.parents
        ]
        # A job's webhook is stored with it: no outcome is projected before the webhook is known.
        hooks = webhook_rows(
            [
                (job.id, hook)
                for item, (job, created) in zip(items, results, strict=True)
                if created
                and (hook := item.spec.notify or self.settings.notify_queue_defaults.get(item.spec.queue))
            ],
            now,
        )
        submission = Submission(
            new, [(edges_table, edges), (job_notify_table, hooks)] + [(t, [row]) for t, row in extra]
        )
        try:
            stored = iter(await self._group.submit(submission) if new or extra else [])
        except IntegrityError:
            if not keys:
                raise  # a row stored with the jobs was taken (a schedule's fire): the caller's
            # A concurrent request stored the same idempotency key first: answer with its job.
            if len(items) != 1:
                raise Refused("idempotency key submitted concurrently; retry the batch") from None
            async with self.sessions() as session:
                again = await JobStore.by_idempotency_key(session, owner.id, keys)
            return [(again[keys[0]], False)]
        by_id = {job.id: job for job in stored}
        for job in await self.after_gates([job for job in by_id.values() if job.status in GATED_STATES]):
            by_id[job.id] = job
        if ended := [job for job in parents.values() if job.finished]:
            # Parents that ended before their children were stored: settle those edges now (the
            # gate keeper closes each edge once, whoever gets there first).
            for job in await self.settle(ended):
                by_id[job.id] = job
        return [(by_id.get(job.id, job), created) for job, created in results]

    async def _store_new(self, submission: Submission) -> Publish:
        """The one insert path (SubmitGroup's writer): insert the rows; returns their publish.

        The rows are committed before the publish and on the disk before the answer, but the
        disk's flush (SQLite: the WAL's fsync) runs meanwhile: an executor may start a job before
        it ends. A machine crash in between can take the row and keep the message (JetStream
        `sync_interval: always`): the reconciler re-creates the row of a job JetStream holds
        (docs/operations.md, "Durability"); the request was never answered."""
        durable = await self.store.insert(submission.jobs, *submission.others)
        if self.settings.fault_crash_after_insert:
            os._exit(99)
        syncing = asyncio.ensure_future(durable())

        async def publish() -> list[JobRecord]:
            try:
                queued = [job for job in submission.jobs if job.outbox_at is not None]
                published = {job.id: job for job in await self.publish(queued)}
            finally:
                await syncing
            return [published.get(job.id, job) for job in submission.jobs]

        return publish

    async def settle(self, ended: list[JobRecord]) -> list[JobRecord]:
        """Run the gate keeper for jobs that ended outside the projector (cancel, a checkpoint's
        rejection, parents found ended at submit); publish what it released. Returns the jobs it
        moved, as they are now."""
        async with self.sessions() as session:
            opened = await gates.settle(session, ended)
            await session.commit()
        return await self.follow(opened) + opened.ended

    async def follow(self, opened: gates.Opened) -> list[JobRecord]:
        """After the transaction in which the gate keeper moved jobs committed: count the moves,
        publish what it released, and let the next gates act on what it moved onto them. Returns
        the released and gated jobs as they are now."""
        opened.count()
        await self._key_cancels([job for done in opened.admissions for job in done.ended])
        return await self.publish(opened.released) + await self.after_gates(opened.gated)

    async def _key_cancels(self, jobs: list[JobRecord]) -> None:
        """Put the cancels of a concurrency key's strategy (keep_latest, cancel_newest, …) on
        their jobs' timelines, whichever path admitted in the key."""
        events = [
            JobEvent.of(
                job,
                "cancelled",
                {"by": "concurrency key", "error": job.error},
                attempt=job.attempt,
                at=job.updated_at,
            )
            for job in jobs
        ]
        if events:
            await self.publisher.publish_events(events)

    async def after_gates(self, jobs: list[JobRecord]) -> list[JobRecord]:
        """Jobs that were just stored on a gate other than their parents: the gate timer learns of
        new times, throttled jobs are admitted if their keys have room. Returns the jobs as they
        are now."""
        if any(job.status == "scheduled" for job in jobs):
            self.gates_changed.set()
        throttled = [job for job in jobs if job.status == "throttled"]
        if not throttled:
            return jobs
        moved = {job.id: job for job in await self.admit(gates_of(throttled))}
        return [moved.get(job.id, job) for job in jobs]

    async def admit(self, keys: set[Gate], wait: bool = True) -> list[JobRecord]:
        """Admit what the concurrency and rate keys `keys` have room for (admission.admit), in a
        transaction of its own; then publish what it admitted, tell executors about holding jobs
        a `cancel_in_progress` key replaced, and put strategy cancels on the timelines. Returns
        every job it moved, as it is now. `wait=False` (the gate timer): the publish runs on its
        own once the admission committed (a crash before it leaves the jobs due in the outbox), so
        the timer is on time for the next token."""
        if not keys:
            return []
        for attempt in range(DECIDE_TRIES):
            try:
                async with self.sessions() as session:
                    done = await admission.admit(session, keys, time.time())
                    # What waited for the jobs a strategy cancelled follows its edges.
                    opened = await gates.settle(session, done.ended) if done.ended else gates.Opened()
                    await session.commit()
                break
            except DBAPIError as exc:
                # PostgreSQL chose this transaction to break a lock cycle: decide again.
                if "deadlock" not in str(exc).lower() or attempt == DECIDE_TRIES - 1:
                    raise
        done.count()
        for old, job in done.stopped:
            if old.stream_seq is not None and old.outbox_at is None:
                await self.publisher.delete_queued(old.stream_seq)
            await self.publisher.broadcast_cancel(job.id)
        await self._key_cancels(done.ended)
        if any(kind == "rate" for kind, _ in keys):
            self.gates_changed.set()  # a rate key's next token time may be sooner than the timer's
        if not wait:
            self.publisher.background.spawn(self._publish_admitted(done.released, opened))
            return done.released + done.ended
        released = await self.publish(done.released)
        return released + done.ended + await self.follow(opened)

    async def _publish_admitted(self, released: list[JobRecord], opened: gates.Opened) -> None:
        try:
            await self.publish(released)
            await self.follow(opened)
        except Exception:  # noqa: BLE001 - the outbox and the gate sweeper take over
            log.exception("publishing %d admitted jobs failed (the outbox retries)", len(released))

    async def publish(self, jobs: list[JobRecord]) -> list[JobRecord]:
        """Publish the jobs' current messages and record the stream sequences JetStream gave them.
        Returns the jobs as they are now; one whose publish failed is still due in the outbox."""
        jobs = [job for job in jobs if job.outbox_at is not None]  # a gate holds the others
        if not jobs:
            return []
        # The timeline's `queued` time is when the message went out: an executor may start the job
        # (and report `started`) before this API gets its publish acks back.
        published_at = time.time()
        seqs = await self.publisher.publish_jobs(jobs)
        now = [
            transition(j, Published(seqs[j.id], j.generation, j.resume)) if j.id in seqs else j for j in jobs
        ]
        acked = [job for job in now if job.id in seqs]
        await self.publisher.wake(acked)
        try:
            async with self.sessions() as session, unsynced(session):
                # Its `queued` row is written with the sequence, once per message: whoever records
                # the sequence first (another api's outbox may have published it too).
                marked = await JobStore.mark_published(session, acked, published_at)
                await session.commit()
        except Exception as exc:  # noqa: BLE001 - still due: the outbox republishes (a dedupe no-op)
            log.warning("could not record %d published jobs (the outbox will): %s", len(acked), exc)
            return now
        await self.publisher.announce([_queued_event(job, published_at) for job in marked])
        return now

    async def get_owned(self, session: AsyncSession, job_id: str, who: Principal) -> JobRecord:
        job = await JobStore.get(session, job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise NotFound(f"job {job_id[:40]} not found")
        if not _may_see(who, job):
            raise Forbidden("only an admin or the job's submitter may change it")
        return job

    async def decide(
        self, job_id: str, who: Principal, event: Event, follow: Follow | None = None
    ) -> tuple[JobRecord, JobRecord, gates.Opened]:
        """Apply a command to a job and store it: (before, after, what `follow` opened in the same
        transaction). Decided again if a concurrent writer (the projector, another API process)
        moved the job in between."""
        for _ in range(DECIDE_TRIES):
            async with self.sessions() as session:
                old = await self.get_owned(session, job_id, who)
                new = transition(old, event)
                if await JobStore.save(session, old, new):
                    opened = await follow(session, [new]) if follow else gates.Opened()
                    await session.commit()
                    return old, new, opened
        raise Refused(f"job {job_id} keeps changing; retry")

    async def cancel(self, job_id: str, who: Principal, descendants: str = "cascade") -> JobRecord:
        """Cancel at once: drop the queued message and tell any executor running it to kill it.
        `descendants`: `cascade` cancels what waits for it too; `leave` lets their edges decide
        (skipped, or run if they wait for it to finish whatever the outcome)."""
        now = time.time()
        moves = [(await self.decide(job_id, who, Cancel(now)))[:2]]
        if descendants == "cascade":
            async with self.sessions() as session:
                waiting = await gates.descendants(session, [job_id])
            for child in waiting:
                try:
                    moves.append((await self.decide(child, who, Cancel(now)))[:2])
                except (Refused, NotFound, Forbidden):
                    continue  # ended already, or not the caller's to cancel
        await self._cancelled(moves, who)
        return moves[0][1]

    async def _cancelled(self, moves: list[tuple[JobRecord, JobRecord]], who: Principal) -> None:
        """After cancels were stored: drop their queued messages, stop them on executors, put
        `cancelled` on their timelines, and let what waited for them follow its edges."""
        for old, job in moves:
            if old.stream_seq is not None and old.outbox_at is None:
                await self.publisher.delete_queued(old.stream_seq)
            if old.status not in GATED_STATES:  # it may be on an executor (or about to be)
                await self.publisher.broadcast_cancel(job.id)
        events = [
            JobEvent.of(job, "cancelled", {"by": who.name}, attempt=job.attempt, at=job.updated_at)
            for _, job in moves
        ]
        await self.publisher.publish_events(events)
        await self.settle([job for _, job in moves])

    async def decide_many(
        self, job_ids: list[str], who: Principal, event: Event, follow: Follow | None = None
    ) -> tuple[list[tuple[JobRecord, JobRecord]], gates.Opened]:
        """Apply one command to many jobs in one transaction: (before, after) of each job it moved,
        and what `follow` opened in that transaction. A job the command may not apply to (Refused),
        or that a concurrent writer moved (its guard no longer matches), is left as it is."""
        moved: list[tuple[JobRecord, JobRecord]] = []
        async with self.sessions() as session:
            for old in (await JobStore.get_many(session, job_ids)).values():
                if not _may_see(who, old):
                    continue
                try:
                    new = transition(old, event)
                except Refused:
                    continue
                if await JobStore.save(session, old, new):
                    moved.append((old, new))
            opened = await follow(session, [new for _, new in moved]) if follow else gates.Opened()
            await session.commit()
        return moved, opened

    async def cancel_many(self, job_ids: list[str], who: Principal) -> list[JobRecord]:
        """`cancel` for many jobs at once (bulk actions); returns the jobs it cancelled."""
        moved, _ = await self.decide_many(job_ids, who, Cancel(time.time()))
        await self._cancelled(moved, who)  # what waited for them follows its edges ("leave")
        return [job for _, job in moved]

    async def retry_many(self, job_ids: list[str], who: Principal) -> list[JobRecord]:
        """`retry` for many jobs at once (bulk actions): one transaction, one publish burst."""
        now = time.time()
        moved, opened = await self.decide_many(job_ids, who, Retry(now), follow=_rearm(now))
        return await self._retried([job for _, job in moved], opened)

    async def retry(self, job_id: str, who: Principal, delay_s: float | None = None) -> JobRecord:
        """Run a finished job again as a new message generation (escapes the dedupe window), after
        `delay_s` if given; what waited for it and did not succeed waits for it again."""
        now = time.time()
        run_at = now + delay_s if delay_s else None
        _, job, opened = await self.decide(job_id, who, Retry(now, run_at), follow=_rearm(now))
        [job] = await self._retried([job], opened)
        return job

    async def _retried(self, jobs: list[JobRecord], opened: gates.Opened) -> list[JobRecord]:
        """After retries were stored: publish them and what they rearmed and released at once (a
        retry with a delay waits for its time, one with a key for its place)."""
        by_id = {job.id: job for job in jobs}
        for job in await self.publish(jobs) + await self.after_gates(
            [j for j in jobs if j.status in GATED_STATES]
        ):
            by_id[job.id] = job
        await self.follow(opened)
        return list(by_id.values())

    async def sweep_gates(self) -> int:
        """Settle the edges of ended jobs that nobody settled (a crash between a cancel's commit and
        its settle): every `gate_sweep_interval_s`, run by the api's Supervisor."""
        async with self.sessions() as session:
            ended = await gates.unsettled_parents(session)
        if ended:
            log.info("gates: settling %d ended jobs' open edges", len(ended))
            await self.settle(ended)
        # Keys with waiting jobs are admitted in once more: a place freed by a job that ended
        # without a trigger (cancelled between its admission and its publish) is not lost.
        async with self.sessions() as session:
            waiting = await admission.waiting_gates(session)
        if waiting:
            await self.admit(waiting)
        return len(ended)

    async def reconcile_once(self) -> int:
        """Outbox: publish the messages a crash or a NATS outage left unpublished (every
        outbox_interval_s, run by the api's Supervisor). One api process sweeps at a time: two
        would publish the same due jobs, and JetStream's dedupe would have to drop the second. A
        backlog is taken a full page after another while they get through: one page per interval
        drained 500 jobs/s, less than the submits that piled up behind a JetStream leader
        election."""
        async with one_process_at_a_time(self.sessions, "outbox") as mine:
            if not mine:
                return 0
            total = 0
            while True:
                async with self.sessions() as session:
                    due = await JobStore.outbox_due(
                        session, time.time() - self.settings.outbox_grace_s, limit=OUTBOX_PAGE
                    )
                if not due:
                    return total
                log.info("outbox: publishing %d due jobs", len(due))
                now = await self.publish(due)
                total += len(due)
                if len(due) < OUTBOX_PAGE or all(job.outbox_at is not None for job in now):
                    return total  # the rest (if any) next interval: NATS may still be away
