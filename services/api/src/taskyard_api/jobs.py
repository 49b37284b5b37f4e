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

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskyard_common.schemas import JobEvent
from taskyard_common.telemetry import current_traceparent, tracer, tracing_on
from taskyard_common.topology import QueueLimitReached

from .auth import Principal
from .failures import Forbidden, Invalid, NotFound, Refused, TooLarge
from .ids import JOB_ID, new_id
from .job_store import JobStore
from .job_types import KnownTypes
from .lifecycle import Cancel, Event, JobRecord, Published, Retry, new_job, transition
from .publisher import Publisher
from .schemas import JobCreate
from .settings import ApiSettings

log = logging.getLogger("taskyard.api.jobs")
_tracer = tracer("taskyard.api")

# Most jobs one grouped INSERT carries (like a jobs:batch request).
GROUP_MAX = 500
# How often a command decides again when a concurrent writer moved the job under it.
DECIDE_TRIES = 5


def _new_record(spec: JobCreate, owner: Principal, now: float) -> JobRecord:
    job_id = new_id(now)
    traceparent = None
    if tracing_on():
        # The job's own span: its trace id is shown on the job and executors continue it.
        attrs = {"taskyard.job.id": job_id, "taskyard.queue": spec.queue, "taskyard.type": spec.type}
        with _tracer.start_as_current_span("taskyard.job.enqueue", attributes=attrs):
            traceparent = current_traceparent()
    return new_job(id=job_id, owner_id=owner.id, now=now, traceparent=traceparent, **spec.model_dump())


def _queued_event(job: JobRecord, at: float) -> JobEvent:
    return JobEvent.of(job, "queued", {"generation": job.generation}, at=at)


class SubmitGroup:
    """Group commit: requests that arrive while one INSERT is in flight share the next one (one
    transaction, one publish burst, one wake-up) instead of queueing for the database one by one.
    A lone request goes straight through.
    """

    def __init__(self, store: Callable[[list[JobRecord]], Awaitable[list[JobRecord]]]) -> None:
        self._store = store
        self._waiting: list[tuple[list[JobRecord], asyncio.Future[list[JobRecord]]]] = []
        self._writer: asyncio.Task[None] | None = None  # the task writing groups, while there are any

    async def submit(self, jobs: list[JobRecord]) -> list[JobRecord]:
        """`jobs` once they are stored and their publish was attempted, in order."""
        done: asyncio.Future[list[JobRecord]] = asyncio.get_running_loop().create_future()
        self._waiting.append((jobs, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all())
        return await done

    def _next_group(self) -> list[tuple[list[JobRecord], asyncio.Future[list[JobRecord]]]]:
        group: list[tuple[list[JobRecord], asyncio.Future[list[JobRecord]]]] = []
        size = 0
        while self._waiting and (not group or size + len(self._waiting[0][0]) <= GROUP_MAX):
            request = self._waiting.pop(0)
            group.append(request)
            size += len(request[0])
        return group

    async def _write_all(self) -> None:
        # Ends (no await between the last check and returning) as soon as nobody waits, so a
        # later submit that finds it done starts a new one.
        while self._waiting:
            group = self._next_group()
            try:
                stored = await self._store([job for jobs, _ in group for job in jobs])
            except IntegrityError as exc:
                if len(group) == 1:
                    _answer(group[0][1], exc)
                    continue
                # A taken idempotency key fails the whole INSERT: write each request on its own,
                # so only the one that holds the key gets the error.
                for jobs, done in group:
                    try:
                        _answer(done, await self._store(jobs))
                    except Exception as one:  # noqa: BLE001 - that request answers with it
                        _answer(done, one)
                continue
            except Exception as exc:  # noqa: BLE001 - every request of the group answers with it
                for _, done in group:
                    _answer(done, exc)
                continue
            start = 0
            for jobs, done in group:
                _answer(done, stored[start : start + len(jobs)])
                start += len(jobs)


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
        self._group = SubmitGroup(self._store_new)

    async def submit(self, specs: list[JobCreate], owner: Principal) -> list[tuple[JobRecord, bool]]:
        """Store and publish new jobs; returns (job, created) in order. A batch is accepted whole
        or not at all: every item is checked before anything is written."""
        with _tracer.start_as_current_span("taskyard.submit", attributes={"taskyard.jobs": len(specs)}):
            await self._check(specs)
            return await self._submit(specs, owner)

    async def _check(self, specs: list[JobCreate]) -> None:
        def field(i: int, name: str) -> str:
            return name if len(specs) == 1 else f"jobs[{i}].{name}"

        limit = self.settings.max_payload_bytes
        for i, spec in enumerate(specs):
            if (size := spec.payload_size()) > limit:
                raise TooLarge(f"{field(i, 'payload')}: {size} bytes exceeds the limit of {limit}")
        problems: list[str] = []
        for i, spec in enumerate(specs):
            problems += await self.known_types.problems(spec, None if len(specs) == 1 else i)
        if problems:
            raise Invalid("; ".join(problems[:10]))
        # A new queue gets its consumers before its first job is stored: past the install's queue
        # limit the submit is refused and nothing is written (stored, it could never be published).
        first: dict[str, int] = {}
        for i, spec in enumerate(specs):
            first.setdefault(spec.queue, i)
        for queue, i in first.items():
            try:
                await self.publisher.ensure_queue(queue)
            except QueueLimitReached as exc:
                raise Refused(f"{field(i, 'queue')}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - NATS away: stored now, the outbox publishes it
                log.warning("could not create the consumers of queue %r (the outbox retries): %s", queue, exc)

    async def _submit(self, specs: list[JobCreate], owner: Principal) -> list[tuple[JobRecord, bool]]:
        now = time.time()
        keys = [spec.idempotency_key for spec in specs if spec.idempotency_key]
        existing: dict[str, JobRecord] = {}
        if keys:
            async with self.sessions() as session:
                existing = await JobStore.by_idempotency_key(session, owner.id, keys)
        results: list[tuple[JobRecord, bool]] = []
        new: list[JobRecord] = []
        for spec in specs:
            key = spec.idempotency_key
            if key and key in existing:
                results.append((existing[key], False))
                continue
            job = _new_record(spec, owner, now)
            new.append(job)
            results.append((job, True))
            if key:
                existing[key] = job  # the same key twice in one batch is one job
        try:
            stored = iter(await self._group.submit(new) if new else [])
        except IntegrityError:
            # A concurrent request stored the same idempotency key first: answer with its job.
            if len(specs) != 1:
                raise Refused("idempotency key submitted concurrently; retry the batch") from None
            async with self.sessions() as session:
                again = await JobStore.by_idempotency_key(session, owner.id, keys)
            return [(again[keys[0]], False)]
        by_id = {job.id: job for job in stored}
        return [(by_id.get(job.id, job), created) for job, created in results]

    async def _store_new(self, jobs: list[JobRecord]) -> list[JobRecord]:
        """The one insert path (SubmitGroup's writer): insert the rows, then publish them."""
        await self.store.insert(jobs)
        if self.settings.fault_crash_after_insert:
            os._exit(99)
        return await self.publish(jobs)

    async def publish(self, jobs: list[JobRecord]) -> list[JobRecord]:
        """Publish the jobs' current messages and record the stream sequences JetStream gave them.
        Returns the jobs as they are now; one whose publish failed is still due in the outbox."""
        if not jobs:
            return []
        # The timeline's `queued` time is when the message went out: an executor may start the job
        # (and report `started`) before this API gets its publish acks back.
        published_at = time.time()
        seqs, events = await self.publisher.publish_jobs(jobs, [_queued_event(j, published_at) for j in jobs])
        now = [
            transition(j, Published(seqs[j.id], j.generation, j.resume)) if j.id in seqs else j for j in jobs
        ]
        acked = [job for job in now if job.id in seqs]
        await self.publisher.wake(acked)
        try:
            async with self.sessions() as session:
                await JobStore.mark_published(session, acked)
                await session.commit()
        except Exception as exc:  # noqa: BLE001 - still due: the outbox republishes (a dedupe no-op)
            log.warning("could not record %d published jobs (the outbox will): %s", len(acked), exc)
        finally:
            # Always: an unchecked publish whose ack never comes would hold a pending-ack slot.
            await self.publisher.events_stored(events)
        return now

    async def get_owned(self, session: AsyncSession, job_id: str, who: Principal) -> JobRecord:
        job = await JobStore.get(session, job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise NotFound(f"job {job_id[:40]} not found")
        if not who.at_least("admin") and job.owner_id != who.id:
            raise Forbidden("only an admin or the job's submitter may change it")
        return job

    async def decide(self, job_id: str, who: Principal, event: Event) -> tuple[JobRecord, JobRecord]:
        """Apply a command to a job and store it: (before, after). Decided again if a concurrent
        writer (the projector, another API process) moved the job in between."""
        for _ in range(DECIDE_TRIES):
            async with self.sessions() as session:
                old = await self.get_owned(session, job_id, who)
                new = transition(old, event)
                if await JobStore.save(session, old, new):
                    await session.commit()
                    return old, new
        raise Refused(f"job {job_id} keeps changing; retry")

    async def cancel(self, job_id: str, who: Principal) -> JobRecord:
        """Cancel at once: drop the queued message and tell any executor running it to kill it."""
        old, job = await self.decide(job_id, who, Cancel(time.time()))
        if old.stream_seq is not None:
            await self.publisher.delete_queued(old.stream_seq)
        await self.publisher.broadcast_cancel(job.id)
        event = JobEvent.of(job, "cancelled", {"by": who.name}, attempt=job.attempt, at=job.updated_at)
        await self.publisher.publish_events([event])
        return job

    async def retry(self, job_id: str, who: Principal) -> JobRecord:
        """Run a finished job again as a new message generation (escapes the dedupe window)."""
        _, job = await self.decide(job_id, who, Retry(time.time()))
        [job] = await self.publish([job])
        return job

    async def reconcile_once(self) -> int:
        """Outbox: publish the messages a crash or a NATS outage left unpublished (every
        outbox_interval_s, run by the api's Supervisor)."""
        async with self.sessions() as session:
            due = await JobStore.outbox_due(session, time.time() - self.settings.outbox_grace_s)
        if due:
            log.info("outbox: publishing %d due jobs", len(due))
            await self.publish(due)
        return len(due)
