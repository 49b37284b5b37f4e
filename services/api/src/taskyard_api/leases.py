"""Workers in any language over REST: the api process is the REST worker's executor proxy.

A claim pulls from the same per-priority JetStream consumers as a Python executor, high before
normal before low (`taskyard_common.puller`, no-wait pulls), and turns the delivery into a *lease*.
While the lease is heartbeated the proxy keeps the delivery with `in_progress()`; it publishes the
same lifecycle events an executor does (`started`, `progress`, `succeeded`, `retrying`, `failed`,
`dead`) with the REST worker's id, its log lines to LOGS, and the REST worker's heartbeat to the
workers KV (so `taskyard workers`, positions, ETAs and reasons count its slots).

The JetStream delivery stays the source of truth. A lease that is not heartbeated within its TTL
ends as *expired*: the proxy naks the delivery without a `handed_back` event, so the next delivery
counts an attempt, exactly as when an executor dies (the projector records `worker_lost`); if this
api process dies, the unacked delivery comes back after ack_wait in the same way.

Leases live in the memory of the api process that issued them, whose id (`owner`, random per
process) is in each lease id: `ls_<owner>_<random>`. A call on a lease that reaches another api
process (several replicas behind one Service) is forwarded to the owner over core NATS and runs
there as a local call (lease_relay.py); a lease whose owner is gone is gone with it (404), and its
delivery comes back after ack_wait as above.

A REST worker is served by one api process at a time, its *home*: the only one that counts its
slots and leases and writes its heartbeat, which names it (`via`). Every write of that key expects
the revision the home last wrote, so two processes never both take a worker: the one that loses
finds the other's name and forwards its claims there (`Elsewhere`, lease_relay.py). A home that is
gone is taken over. Without this, a worker's claims spread over replicas each counted their own
slots, and the replicas' heartbeats overwrote each other's running jobs.
"""

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskyard_common import __version__
from taskyard_common.backoff import backoff_delay
from taskyard_common.journal import Decision, Journal, attempt_of, read_journal
from taskyard_common.nats_util import AckedPublish, consumer_of, wait_acks
from taskyard_common.puller import Puller
from taskyard_common.schemas import EventType, Heartbeat, JobEvent, JobSpec, LogLine, RunningJob
from taskyard_common.topology import PRIORITIES, Topology

from .auth import Principal
from .failures import Forbidden, Invalid, NotFound, Refused, TooLarge
from .lease_usage import NOTHING, Reported, figures
from .messages import question_row
from .models import Checkpoint, JobMessage

log = logging.getLogger("taskyard.api.leases")

# A checkpoint a REST worker asked (`on_reject` of its row): a decision is only recorded and
# handed to the worker, which holds the job meanwhile (checkpoints._after).
LEASE_ON_REJECT = "worker"
# How often a waiting claim or ask looks again when no wake-up comes (the executor's idle poll).
POLL_S = 0.2
# Ended leases are remembered this long, so a late call is told what happened (409), not 404.
ENDED_KEEP_S = 600.0
WORKER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# A lease id names the api process that holds it: `ls_<owner>_<random>`, owner 8 hex digits.
LEASE_OWNER = re.compile(r"^ls_([0-9a-f]{8})_[A-Za-z0-9_-]+$")
# Tries at writing a worker's heartbeat when other processes write it in between.
HOME_TRIES = 5


class Elsewhere(Refused):
    """The REST worker is served by another live api process: a claim goes there (lease_relay).
    A claim forwarded there that finds it moved again answers this 409: the worker claims again."""

    def __init__(self, worker_id: str, home: str) -> None:
        super().__init__(f"worker {worker_id} is served by api process {home}; claim again")
        self.worker_id, self.home = worker_id, home


@dataclass
class RestWorker:
    id: str
    key_id: str
    slots: int
    queues: set[str]
    started_at: float = field(default_factory=time.time)
    seen: float = field(default_factory=time.monotonic)
    types: set[str] = field(default_factory=set)
    claiming: int = 0
    draining: bool = False
    # The revision of its heartbeat this process last wrote as its home (None: not its home yet).
    revision: int | None = None
    done: int = 0
    failed: int = 0
    leases: dict[str, "Lease"] = field(default_factory=dict)


@dataclass
class Lease:
    id: str
    key_id: str
    worker: RestWorker
    spec: JobSpec
    msg: Msg
    attempt: int
    journal: Journal
    ttl_s: float
    expires: float  # monotonic
    started: float = field(default_factory=time.time)
    ended: str | None = None  # completed | failed | retrying | dead | expired | cancelled | handed_back
    ended_at: float = 0.0
    keepalive: asyncio.Task | None = None

    def overdue(self) -> bool:
        """Held past the job's `timeout_s`: an executor would have timed the attempt out."""
        return time.time() - self.started > self.spec.timeout_s

    def out(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "worker_id": self.worker.id,
            "job_id": self.spec.id,
            "attempt": self.attempt,
            "ttl_s": self.ttl_s,
            "expires_in_s": round(max(0.0, self.expires - time.monotonic()), 3),
            "state": self.ended or "active",
        }


def question_id(job_id: str, generation: int, name: str) -> str:
    """The same id the executor gives a checkpoint of this job, generation and name."""
    return "ck_" + hashlib.sha256(f"{job_id}/{generation}/{name}".encode()).hexdigest()[:24]


def _decision_out(ck_id: str, d: Decision) -> dict[str, Any]:
    return {
        "checkpoint_id": ck_id,
        "status": d.status,
        "answer": d.answer,
        "by": d.by,
        "reason": d.reason,
    }


class LeaseService:
    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        topo: Topology,
        sessions: async_sessionmaker[AsyncSession],
        max_result_bytes: int,
        publish_async: AckedPublish | None = None,
    ) -> None:
        self.nc, self.js, self.topo, self.sessions = nc, js, topo, sessions
        self.publish_async = publish_async or AckedPublish(nc)
        self.max_result_bytes = max_result_bytes
        # This process's id in the lease ids it issues (a restarted process holds none of its leases).
        self.owner = secrets.token_hex(4)
        self.puller = Puller(nc, topo.jobs_stream, self._arrived, lambda durable, delivered: None)
        # Deliveries by consumer, taken by the claim whose pull asked (or the next one: a late one).
        self._inbox: dict[str, deque[tuple[float, Msg]]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self.workers: dict[str, RestWorker] = {}
        self.leases: dict[str, Lease] = {}
        self._cancelled: dict[str, float] = {}
        self._kv: KeyValue | None = None
        # Homes of REST workers found gone (lease_relay): their workers may be taken over.
        self.gone: set[str] = set()
        self._started = False
        self._start_lock = asyncio.Lock()
        self._subs: list = []

    # -- start / background ---------------------------------------------------------------------
    async def _ensure_started(self) -> None:
        if self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            await self.puller.start()
            self._subs.append(await self.nc.subscribe(self.topo.wake_subject("*"), cb=self._on_wake))
            self._subs.append(await self.nc.subscribe(self.topo.cancel_subject(), cb=self._on_cancel))
            self._subs.append(await self.nc.subscribe(self.topo.drain_subject(), cb=self._on_drain))
            self._kv = await self.js.key_value(self.topo.workers_bucket)
            self._started = True

    async def run(self) -> None:
        """Expire leases past their TTL and heartbeat present REST workers (supervised)."""
        beat_every = self.topo.settings.heartbeat_interval_s
        last_beat = 0.0
        while True:
            now = time.monotonic()
            for lease in [le for le in self.leases.values() if le.ended is None and le.expires <= now]:
                await self._expire(lease)
            for lease in [le for le in self.leases.values() if le.ended is None and le.overdue()]:
                await self._time_out(lease)
            for lease_id in [
                i for i, le in self.leases.items() if le.ended and now - le.ended_at > ENDED_KEEP_S
            ]:
                del self.leases[lease_id]
            if now - last_beat >= beat_every:
                last_beat = now
                for worker in list(self.workers.values()):
                    await self._beat(worker)
            await asyncio.sleep(min(0.25, beat_every))

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()
        with contextlib.suppress(NatsError):
            await self.puller.stop()

    def _present(self, worker: RestWorker) -> bool:
        return (
            bool(worker.leases or worker.claiming) or time.monotonic() - worker.seen < self.topo.workers_ttl_s
        )

    async def _beat(self, worker: RestWorker, claiming: bool = False) -> None:
        """The REST worker's heartbeat, as an executor writes its own. A worker that stopped calling
        gets none: its key expires with the bucket's TTL and it shows `gone`. `claiming`: a claim
        asks; it raises Elsewhere when another api process serves the worker."""
        if self._kv is None:
            return
        if not self._present(worker):
            # Gone (its key expires with the bucket's TTL): a later claim under its name starts
            # afresh, not draining, counters from 0, as a restarted executor does.
            self.workers.pop(worker.id, None)
            return
        hb = Heartbeat(
            via=self.owner,
            id=worker.id,
            host=f"rest via {socket.gethostname()}",
            pid=os.getpid(),
            version=__version__,
            queues=sorted(worker.queues),
            slots=worker.slots,
            running=[
                RunningJob(id=le.spec.id, type=le.spec.type, queue=le.spec.queue, started_at=le.started)
                for le in worker.leases.values()
            ],
            done=worker.done,
            failed=worker.failed,
            state="draining" if worker.draining else "running",
            started_at=worker.started_at,
            handlers=sorted(worker.types),
        )
        try:
            await self._write_home(worker, hb.model_dump_json().encode())
        except Elsewhere:
            if claiming:
                raise
        except NatsError as exc:
            log.warning("heartbeat of REST worker %s not stored: %s", worker.id, exc)

    async def _write_home(self, worker: RestWorker, value: bytes) -> None:
        """Write the worker's heartbeat as its home. Raises Elsewhere when another live api process
        is its home: this one then forgets the worker (its leases here live on; only a home that
        was taken for gone while it was not can have any)."""
        assert self._kv is not None
        for _ in range(HOME_TRIES):
            if worker.revision is not None:
                try:
                    worker.revision = await self._kv.update(worker.id, value, last=worker.revision)
                    return
                except KeyWrongLastSequenceError:
                    worker.revision = None  # written by another process (or expired): look again
            revision, home = await self._home_of(worker.id)
            if home not in (None, self.owner) and home not in self.gone:
                if self.workers.get(worker.id) is worker:
                    del self.workers[worker.id]
                if worker.leases:
                    log.warning(
                        "REST worker %s is served by api process %s now; its %d leases here go on",
                        worker.id,
                        home,
                        len(worker.leases),
                    )
                raise Elsewhere(worker.id, home)
            worker.revision = revision
        raise Refused(f"worker {worker.id}: its heartbeat keeps changing under this api process; claim again")

    async def _home_of(self, worker_id: str) -> tuple[int, str | None]:
        """The revision of the worker's key (0: it has none) and the api process its live
        heartbeat names (None: no live heartbeat, or one of an executor or an older api)."""
        assert self._kv is not None
        try:
            entry = await self._kv.get(worker_id)
        except KeyNotFoundError as exc:  # never written, or deleted: the marker's revision
            return (exc.entry.revision or 0) if exc.entry is not None else 0, None
        if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:  # expired
            return entry.revision or 0, None
        try:
            return entry.revision or 0, Heartbeat.model_validate_json(entry.value).via
        except ValidationError:
            return entry.revision or 0, None

    # -- NATS callbacks -------------------------------------------------------------------------
    def _arrived(self, msg: Msg) -> None:
        durable = consumer_of(msg)
        self._inbox.setdefault(durable, deque()).append((time.monotonic(), msg))

    async def _on_wake(self, msg: Msg) -> None:
        queue = msg.subject.rsplit(".", 1)[-1]
        if (event := self._wake.get(queue)) is not None:
            event.set()

    async def _on_cancel(self, msg: Msg) -> None:
        job_id = msg.subject.rsplit(".", 1)[-1]
        now = time.monotonic()
        self._cancelled[job_id] = now
        if len(self._cancelled) > 10_000:
            self._cancelled = {k: t for k, t in self._cancelled.items() if now - t < 600}
        for lease in list(self.leases.values()):
            if lease.spec.id == job_id and lease.ended is None:
                self._end(lease, "cancelled")
                with contextlib.suppress(NatsError, TimeoutError):
                    await self._outcome(lease, "cancelled", ack="ack", used=NOTHING)

    async def _on_drain(self, msg: Msg) -> None:
        """POST /workers/{id}/drain|stop for a REST worker: it may claim no more (409 telling it to
        exit); `stop` also hands its jobs back at once, without spending an attempt, as an
        executor's stop does (a `handed_back` event in the job's journal, then a nak)."""
        worker = self.workers.get(msg.subject.rsplit(".", 1)[-1])
        if worker is None:
            return
        worker.draining = True
        if (msg.data.decode(errors="replace").strip() if msg.data else "drain") == "stop":
            for lease in list(worker.leases.values()):
                self._end(lease, "handed_back")
                try:
                    await self._publish(
                        self._event(lease, "handed_back", resume=lease.spec.resume, reason="stop")
                    )
                    await lease.msg.nak()
                except (NatsError, TimeoutError) as exc:
                    log.warning(
                        "job %s: hand-back not recorded (%s); back after ack_wait", lease.spec.id, exc
                    )
        await self._beat(worker)

    # -- claim ----------------------------------------------------------------------------------
    def worker_for(self, who: Principal, name: str, slots: int, queue: str, types: list[str]) -> RestWorker:
        if not WORKER_NAME.match(name):
            raise Invalid("worker: 1-64 letters, digits, '-' or '_'")
        key_name = re.sub(r"[^A-Za-z0-9_-]", "-", who.name)[:64]
        worker_id = f"rest-{key_name}-{name}"
        worker = self.workers.get(worker_id)
        if worker is None:
            worker = self.workers[worker_id] = RestWorker(worker_id, who.id, slots, {queue})
        elif worker.key_id != who.id:
            raise Forbidden(f"worker: {worker_id} is claiming with another API key; pick another name")
        worker.slots, worker.seen = slots, time.monotonic()
        worker.queues.add(queue)
        worker.types.update(types)
        return worker

    async def claim(
        self,
        who: Principal,
        queue: str,
        worker_name: str,
        slots: int,
        wait_s: float,
        lease_s: float,
        types: list[str] = [],  # noqa: B006 - read only
    ) -> Lease | None:
        """The next job of `queue` in strict priority, as a lease; None when `wait_s` passed with none."""
        await self._ensure_started()
        worker = self.worker_for(who, worker_name, slots, queue, types)
        beaten = False
        if worker.revision is None:
            # Not served here yet: this process becomes its home, or the claim goes to the one that is.
            await self._beat(worker, claiming=True)
            beaten = worker.revision is not None
        if worker.draining:
            raise Refused(f"worker {worker.id} is draining (an admin asked): finish its leases and exit")
        # A claim waiting counts as a slot taken: two claims at once for a worker's last slot
        # would both lease a job (no await between this check and `claiming += 1`).
        if len(worker.leases) + worker.claiming >= worker.slots:
            raise Refused(
                f"worker {worker.id} holds {len(worker.leases)} leases and {worker.claiming} claims "
                f"waiting, all of its {worker.slots} slots: complete or fail one first (or claim with "
                "more slots)"
            )
        wake = self._wake.setdefault(queue, asyncio.Event())
        deadline = time.monotonic() + wait_s
        worker.claiming += 1
        if worker.claiming == 1 and not beaten:
            await self._beat(worker)  # it serves the queue (and counts as its capacity) while it claims
        try:
            while True:
                wake.clear()
                msg = await self._pull(queue)
                if msg is not None:
                    lease = await self._lease(msg, worker, who, lease_s)
                    if lease is not None:
                        return lease
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(POLL_S, remaining)):
                        await wake.wait()
        finally:
            worker.claiming -= 1
            worker.seen = time.monotonic()

    async def _pull(self, queue: str) -> Msg | None:
        """One job from the highest priority that has one (no-wait pulls: an empty consumer answers
        at once, so a lower priority is asked only when every higher one is empty)."""
        stale_after = self.topo.settings.ack_wait_s / 2
        for priority in PRIORITIES:
            durable = self.topo.exec_durable(queue, priority)
            waiting = self._inbox.get(durable)
            while waiting:
                at, msg = waiting.popleft()
                if time.monotonic() - at < stale_after:
                    return msg  # a delivery whose pull had timed out: still ours
            try:
                got = await self.puller.pull(durable, 1)
            except NatsError as exc:
                log.warning("claim pull on %s failed: %s", durable, exc)
                return None
            if got and (waiting := self._inbox.get(durable)):
                return waiting.popleft()[1]
        return None

    async def _lease(self, msg: Msg, worker: RestWorker, who: Principal, lease_s: float) -> Lease | None:
        """Turn a delivery into a lease (None: the delivery needed no worker, try the next)."""
        try:
            spec = JobSpec.model_validate_json(msg.data)
        except ValidationError as exc:
            log.error("malformed job message on %s dropped: %s", msg.subject, exc)
            await msg.term()
            return None
        if spec.id in self._cancelled:
            await msg.ack()
            return None
        delivery = msg.metadata.num_delivered
        journal = Journal()
        if delivery > 1 or spec.resume:
            journal = await read_journal(self.nc, self.topo, spec.id, spec.generation)
        attempt = attempt_of(delivery, journal, spec.resume) if delivery > 1 or spec.resume else delivery
        lease = Lease(
            id=f"ls_{self.owner}_{secrets.token_urlsafe(12)}",
            key_id=who.id,
            worker=worker,
            spec=spec,
            msg=msg,
            attempt=attempt,
            journal=journal,
            ttl_s=lease_s,
            expires=time.monotonic() + lease_s,
        )
        if journal.outcome:  # reported before its ack was lost: not run twice
            await (msg.ack() if journal.outcome == "succeeded" else msg.term())
            return None
        if attempt > spec.max_attempts:  # the last attempt's worker was lost
            error = {
                "type": "WorkerLost",
                "message": f"worker lost on the last of {spec.max_attempts} attempts",
            }
            await self._dead(lease, error, used=None)  # nothing ran: nothing used
            return None
        fresh = delivery == 1 and spec.resume == 0
        wait = {"wait_s": round(lease.started - spec.submitted_at, 6)} if fresh else {}
        # `resume`: the next delivery counts its attempt from this start (journal.attempt_of).
        await self._publish(self._event(lease, "started", resume=spec.resume, **wait))
        self.leases[lease.id] = lease
        worker.leases[lease.id] = lease
        lease.keepalive = asyncio.create_task(self._keep_alive(lease))
        await self._beat(worker)
        return lease

    async def _keep_alive(self, lease: Lease) -> None:
        interval = self.topo.settings.ack_wait_s / 3
        while lease.ended is None:
            with contextlib.suppress(NatsError, TimeoutError):
                await lease.msg.in_progress()
            await asyncio.sleep(interval)

    # -- calls on a lease -----------------------------------------------------------------------
    @staticmethod
    def owner_of(lease_id: str) -> str | None:
        """The id of the api process that issued the lease (None: no api process issued it)."""
        found = LEASE_OWNER.match(lease_id)
        return found.group(1) if found else None

    def active(self, who: Principal, lease_id: str) -> Lease:
        """The caller's live lease, its TTL restarted (any call is a heartbeat)."""
        lease = self.leases.get(lease_id)
        if lease is None:
            raise NotFound(
                f"lease {lease_id} not found: never issued, or ended more than {ENDED_KEEP_S:.0f}s ago"
            )
        if lease.key_id != who.id:
            raise Forbidden(
                f"lease {lease_id} belongs to another API key; only the key that claimed it may use it"
            )
        if lease.ended == "expired":
            raise Refused(
                f"lease {lease_id} expired (no heartbeat within {lease.ttl_s:g}s); job {lease.spec.id} "
                f"was handed back to queue {lease.spec.queue} with attempt {lease.attempt} counted"
            )
        if lease.ended is not None:
            raise Refused(f"lease {lease_id} already ended ({lease.ended}); job {lease.spec.id}")
        lease.expires = time.monotonic() + lease.ttl_s
        lease.worker.seen = time.monotonic()
        return lease

    async def heartbeat(self, who: Principal, lease_id: str, pct: float | None, message: str) -> Lease:
        lease = self.active(who, lease_id)
        if pct is not None or message:
            await self._publish(self._event(lease, "progress", pct=pct, message=message))
        return lease

    async def log_lines(self, who: Principal, lease_id: str, lines: list[str], stream: str) -> int:
        lease = self.active(who, lease_id)
        subject = self.topo.log_subject(lease.spec.id)
        futures = []
        for line in lines:
            body = LogLine(stream=stream, line=line, attempt=lease.attempt)  # type: ignore[arg-type]
            futures.append(await self.publish_async(subject, body.model_dump_json().encode()))
        for result in await wait_acks(futures, timeout=10, nc=self.nc):
            if isinstance(result, BaseException):
                raise result
        return len(lines)

    async def complete(
        self, who: Principal, lease_id: str, result: Any, size: int, used: Reported = NOTHING
    ) -> Lease:
        """The job succeeded; `used` is what the worker says the attempt used and spent."""
        lease = self.active(who, lease_id)
        if size > self.max_result_bytes:
            raise TooLarge(f"result: {size} bytes; the limit is {self.max_result_bytes}")
        self._end(lease, "completed")
        lease.worker.done += 1
        await self._outcome(lease, "succeeded", ack="ack", used=used, result=result)
        return lease

    async def fail(
        self,
        who: Principal,
        lease_id: str,
        error: dict,
        retry: bool,
        delay_s: float | None,
        used: Reported = NOTHING,
    ) -> tuple[Lease, dict]:
        """Like a handler's exception: retried with the job's backoff while attempts remain
        (`retry`), else dead; `retry: false` fails it at once (a PermanentError)."""
        return await self._fail(self.active(who, lease_id), error, retry, delay_s, used)

    async def _fail(
        self, lease: Lease, error: dict, retry: bool, delay_s: float | None, used: Reported = NOTHING
    ) -> tuple[Lease, dict]:
        lease.worker.failed += 1
        spec = lease.spec
        if not retry:
            self._end(lease, "failed")
            await self._outcome(lease, "failed", ack="term", used=used, error=error)
            return lease, {"outcome": "failed"}
        if lease.attempt >= spec.max_attempts:
            self._end(lease, "dead")
            await self._dead(lease, error, used)
            return lease, {"outcome": "dead"}
        delay = delay_s if delay_s is not None else backoff_delay(spec.backoff, lease.attempt)
        self._end(lease, "retrying")
        event = self._event(
            lease,
            "retrying",
            error=error,
            delay_s=round(delay, 3),
            next_at=time.time() + delay,
            **figures(spec, lease.started, used),
        )
        await self._publish(event)
        await lease.msg.nak(delay=delay)
        await self._beat(lease.worker)
        return lease, {"outcome": "retrying", "delay_s": round(delay, 3)}

    async def ask(
        self,
        who: Principal,
        lease_id: str,
        *,
        name: str,
        question: str,
        choices: list[str] | None,
        approvers: list[str],
        timeout_s: float,
        wait_s: float,
    ) -> dict[str, Any]:
        """A question to people through the checkpoint inbox; answered from the job's journal at
        once if an earlier attempt got the answer. Long-polls up to `wait_s` for the decision; the
        job keeps running (and the lease alive) meanwhile."""
        lease = self.active(who, lease_id)
        spec = lease.spec
        ck_id = question_id(spec.id, spec.generation, name)
        if (known := lease.journal.decisions.get(name)) is not None:
            return _decision_out(ck_id, known)
        async with self.sessions() as session:
            ck = await session.get(Checkpoint, ck_id)
            if ck is None:
                now = time.time()
                session.add(
                    Checkpoint(
                        id=ck_id,
                        job_id=spec.id,
                        generation=spec.generation,
                        name=name,
                        kind="question",
                        message=question,
                        data={"lease": lease.id, "worker": lease.worker.id},
                        choices=choices,
                        approvers=approvers,
                        on_reject=LEASE_ON_REJECT,
                        status="pending",
                        created_at=now,
                        expires_at=now + timeout_s,
                    )
                )
                # The question on the job's thread, as a `waiting` event puts an executor's there
                # (whole: AskIn bounds it at 2,000 characters).
                text = question or name
                session.add(
                    JobMessage(**question_row(spec.id, spec.type, text, ck_id, now, max_chars=len(text)))
                )
                await session.commit()
        deadline = time.monotonic() + wait_s
        while True:
            async with self.sessions() as session:
                ck = await session.get(Checkpoint, ck_id)
            assert ck is not None
            if ck.status != "pending":
                decision = Decision(
                    approved=ck.status == "answered",
                    status=ck.status,
                    reason=ck.reason,
                    answer=ck.answer,
                    by=ck.decided_by,
                )
                lease.journal.decisions[name] = decision
                return _decision_out(ck_id, decision)
            if time.monotonic() >= deadline or lease.ended is not None:
                return {
                    "checkpoint_id": ck_id,
                    "status": "pending",
                    "answer": None,
                    "by": None,
                    "reason": None,
                }
            lease.expires = time.monotonic() + lease.ttl_s  # waiting for people is no silence
            await asyncio.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))

    # -- ends -----------------------------------------------------------------------------------
    def _end(self, lease: Lease, how: str) -> None:
        lease.ended, lease.ended_at = how, time.monotonic()
        lease.worker.leases.pop(lease.id, None)
        if lease.keepalive is not None:
            lease.keepalive.cancel()

    async def _time_out(self, lease: Lease) -> None:
        """The attempt ran past the job's timeout_s: a retryable failure, as in an executor."""
        error = {
            "type": "JobError",
            "message": f"timed out after {lease.spec.timeout_s:g}s",
            "details": {"timeout_s": lease.spec.timeout_s},
        }
        try:
            await self._fail(lease, error, retry=True, delay_s=None)
        except (NatsError, TimeoutError) as exc:  # left unacked: back after ack_wait
            log.warning("job %s: timeout not recorded (%s)", lease.spec.id, exc)
            self._end(lease, "timed_out")

    async def _expire(self, lease: Lease) -> None:
        """No heartbeat within the TTL: hand the delivery back at once. No `handed_back` event, so
        the next delivery counts an attempt: the worker-lost path of an executor that died."""
        log.warning(
            "lease %s of %s expired (no heartbeat within %gs): job %s back to queue %s",
            lease.id,
            lease.worker.id,
            lease.ttl_s,
            lease.spec.id,
            lease.spec.queue,
        )
        self._end(lease, "expired")
        with contextlib.suppress(NatsError):
            await lease.msg.nak()
        await self._beat(lease.worker)

    async def _publish(self, event: JobEvent) -> None:
        """One event on the job's own EVENTS subject (its journal), stored before we go on: a
        failure raises (the delivery is then left unacked and comes back, as with an executor)."""
        await self.js.publish(self.topo.event_subject(event.job_id), event.model_dump_json().encode())

    def _event(self, lease: Lease, kind: EventType, **data: Any) -> JobEvent:
        return JobEvent.of(lease.spec, kind, data, attempt=lease.attempt, worker_id=lease.worker.id)

    async def _outcome(
        self, lease: Lease, kind: EventType, ack: str, used: Reported | None, **data: Any
    ) -> None:
        """Store the outcome event, then ack (or term) the delivery: at-least-once, as an executor.
        `used` None: no attempt ran (lost on its last one), so no usage, as from an executor."""
        duration = round(time.time() - lease.started, 6)
        if used is not None:
            data.update(figures(lease.spec, lease.started, used))
        await self._publish(self._event(lease, kind, duration_s=duration, **data))
        await (lease.msg.ack() if ack == "ack" else lease.msg.term())
        await self._beat(lease.worker)

    async def _dead(self, lease: Lease, error: dict, used: Reported | None) -> None:
        spec = lease.spec
        headers = {
            "Taskyard-Attempts": str(lease.attempt),
            "Taskyard-Error": str(error.get("message", ""))[:200],
            "Nats-Msg-Id": f"dead:{spec.msg_id}",
        }
        await self.js.publish(
            self.topo.dead_subject(spec.queue), spec.model_dump_json().encode(), headers=headers
        )
        await self._outcome(lease, "dead", ack="term", used=used, error=error)
