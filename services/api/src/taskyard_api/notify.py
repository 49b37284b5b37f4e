"""Job webhooks: a job's `notify` asks for a signed POST when it reaches chosen outcomes.

- Submit stores the job's webhook (`job_notify`) in the transaction that stores the job, so the
  projector always knows it by the time an outcome is projected.
- The projector enqueues a `notifications` row in the transaction that records the outcome (one
  row per job, generation, continuation and outcome: projecting twice enqueues once).
- The deliverer (a supervised loop in every api process) claims a due row with a conditional
  UPDATE — only one process wins it — POSTs it, and records the try and its answer on the row. A
  failed try is retried with exponential backoff; a claim whose process died expires after
  CLAIM_S and the row is due again. Delivery is at least once: a receiver dedupes on
  `Taskyard-Delivery`.
- Signature: header `Taskyard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
  "<t>.<body>")>`, a fresh `t` on every try, so a receiver can refuse old (replayed) requests
  and still accept a retry. docs/webhook_receiver.py verifies it.
"""

import asyncio
import hashlib
import hmac
import json
import logging
import os
import socket
import time
from functools import cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .db import listed, one_of
from .driver_sql import Many
from .lifecycle import JobRecord
from .models import JobNotify, Notification, job_notify_table, notifications_table
from .schemas import NotifySpec, iso

if TYPE_CHECKING:  # imported at the first delivery: ~40 ms of every api's start-up otherwise
    import httpx

log = logging.getLogger("taskyard.api.notify")
OUTCOMES = frozenset({"succeeded", "failed", "dead", "waiting"})
# A claimed row is the claimer's this long (longer than a try's timeout); then it is due again.
CLAIM_S = 60.0
# Tries kept on a row to show (the count goes on in `attempts`).
KEEP_TRIES = 20
# Rows one round claims, and POSTs in flight at once.
ROUND_ROWS = 64
PARALLEL = 8


def signature(secret: bytes, t: int, body: bytes) -> str:
    """The `Taskyard-Signature` header value of `body` sent at unix time `t`."""
    mac = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def backoff_s(tries: int, max_s: float) -> float:
    """Wait after failed try `tries` (1-based): 1, 2, 4, … seconds, at most `max_s`."""
    return float(min(max_s, 2 ** (tries - 1)))


def webhook_rows(watched: list[tuple[str, NotifySpec]], now: float) -> list[dict[str, Any]]:
    """`job_notify` rows of new jobs, stored in the jobs' own transaction."""
    return [
        {"job_id": job_id, "url": spec.url, "on": list(spec.on), "created_at": now}
        for job_id, spec in watched
    ]


# One row per outcome (its id names it): the same outcome projected twice is stored once.
_NOTIFICATIONS = Many.insert_ignoring(notifications_table, "id")


@cache
def _hooks_of(dialect: str) -> Select:
    """The webhooks of a list of jobs (built once: every job that ends asks, db.one_of)."""
    n = job_notify_table.c
    return select(n.job_id, n.url, n.on).where(one_of(n.job_id, dialect))


def _body(job: JobRecord, delivery_id: str) -> dict[str, Any]:
    return {
        "delivery": delivery_id,
        "event": f"job.{job.status}",
        "at": iso(job.updated_at),
        "job": {
            "id": job.id,
            "type": job.type,
            "queue": job.queue,
            "status": job.status,
            "attempt": job.attempt,
            "max_attempts": job.max_attempts,
            "generation": job.generation,
            "labels": job.labels,
            "error": job.error,
            "finished_at": iso(job.finished_at),
        },
    }


class Notifier:
    """Enqueues (projector hook) and delivers (supervised rounds) job webhooks."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        secret: bytes | None,
        *,
        timeout_s: float = 10.0,
        backoff_max_s: float = 300.0,
        max_tries: int = 20,
    ) -> None:
        self.sessions, self.secret = sessions, secret
        self.timeout_s, self.backoff_max_s, self.max_tries = timeout_s, backoff_max_s, max_tries
        self.wake = asyncio.Event()
        self.name = f"{socket.gethostname()}-{os.getpid()}"[:64]
        self._http: httpx.AsyncClient | None = None

    # -- enqueue (in the projector's transaction) -------------------------------------------------
    async def enqueue(self, session: AsyncSession, moved: list[JobRecord]) -> int:
        """Rows for jobs that just reached an outcome their webhook asked for."""
        reached = {job.id: job for job in moved if job.status in OUTCOMES}
        if not reached:
            return 0
        dialect = session.get_bind().dialect.name
        hooks = await session.execute(_hooks_of(dialect), {"ids": listed(reached, dialect)})
        now, rows = time.time(), []
        for job_id, url, on in hooks:
            job = reached[job_id]
            if job.status not in on:
                continue
            delivery_id = f"{job.id}:{job.generation}:{job.resume}:{job.status}"
            rows.append(
                {
                    "id": delivery_id,
                    "job_id": job.id,
                    "outcome": job.status,
                    "url": url,
                    "body": _body(job, delivery_id),
                    "status": "pending",
                    "attempts": 0,
                    "next_at": now,
                    "deliveries": [],
                    "created_at": now,
                }
            )
        if rows:
            await _NOTIFICATIONS.run(session, rows)
        return len(rows)

    # -- deliver ----------------------------------------------------------------------------------
    async def deliver_due(self) -> int:
        """One round: claim due rows (a conditional UPDATE each), POST them, record the answers."""
        now = time.time()
        due = (
            select(Notification.id)
            .where(
                or_(
                    (Notification.status == "pending") & (Notification.next_at <= now),
                    (Notification.status == "delivering") & (Notification.claimed_until < now),
                )
            )
            .order_by(Notification.next_at)
            .limit(ROUND_ROWS)
        )
        async with self.sessions() as session:
            ids = list(await session.scalars(due))
        claimed = [row for row_id in ids if (row := await self._claim(row_id, now)) is not None]
        gate = asyncio.Semaphore(PARALLEL)

        async def one(row: Notification) -> None:
            async with gate:
                await self._deliver(row)

        await asyncio.gather(*(one(row) for row in claimed))
        return len(claimed)

    async def _claim(self, row_id: str, now: float) -> Notification | None:
        """Ours if this UPDATE changed the row: another process's claim makes it match nothing."""
        claim = (
            update(Notification)
            .where(
                Notification.id == row_id,
                or_(
                    (Notification.status == "pending") & (Notification.next_at <= now),
                    (Notification.status == "delivering") & (Notification.claimed_until < now),
                ),
            )
            .values(status="delivering", claimed_until=now + CLAIM_S, claimed_by=self.name)
        )
        async with self.sessions() as session:
            won = await session.execute(claim)
            row = await session.get(Notification, row_id) if getattr(won, "rowcount", 0) == 1 else None
            await session.commit()
        return row

    async def _deliver(self, row: Notification) -> None:
        import httpx

        body = json.dumps(row.body, separators=(",", ":")).encode()
        t = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "taskyard-webhook/1",
            "Taskyard-Delivery": row.id,
            "Taskyard-Event": f"job.{row.outcome}",
            "Taskyard-Signature": signature(self.secret or b"", t, body),
        }
        began = time.monotonic()
        code: int | None = None
        error: str | None = None
        try:
            answer = await self._client().post(row.url, content=body, headers=headers)
            code = answer.status_code
            if not 200 <= code < 300:
                error = f"HTTP {code}: {answer.text[:200]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
        tried = {
            "at": iso(time.time()),
            "status_code": code,
            "error": error,
            "ms": round((time.monotonic() - began) * 1000),
        }
        tries = row.attempts + 1
        values: dict[str, Any] = {
            "attempts": tries,
            "deliveries": [*row.deliveries, tried][-KEEP_TRIES:],
            "claimed_until": None,
        }
        if error is None:
            values.update(status="delivered", delivered_at=time.time())
        elif tries >= self.max_tries:
            values.update(status="failed")
            log.warning("webhook %s to %s given up after %d tries: %s", row.id, row.url, tries, error)
        else:
            values.update(status="pending", next_at=time.time() + backoff_s(tries, self.backoff_max_s))
        async with self.sessions() as session:
            # Only while the claim is still ours (a stalled round whose claim expired writes nothing).
            await session.execute(
                update(Notification)
                .where(Notification.id == row.id, Notification.claimed_by == self.name)
                .where(Notification.status == "delivering")
                .values(**values)
            )
            await session.commit()

    def _client(self) -> "httpx.AsyncClient":
        if self._http is None:
            import httpx

            self._http = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False)
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()


def notification_out(row: Notification) -> dict[str, Any]:
    return {
        "id": row.id,
        "outcome": row.outcome,
        "url": row.url,
        "status": row.status,
        "attempts": row.attempts,
        "next_at": iso(row.next_at) if row.status == "pending" else None,
        "delivered_at": iso(row.delivered_at),
        "created_at": iso(row.created_at),
        "deliveries": row.deliveries,
    }


async def job_notifications(session: AsyncSession, job_id: str) -> dict[str, Any]:
    """A job's webhook and each delivery with its tries and answers."""
    hook = await session.get(JobNotify, job_id)
    rows = await session.scalars(
        select(Notification).where(Notification.job_id == job_id).order_by(Notification.created_at)
    )
    return {
        "notify": {"url": hook.url, "on": hook.on} if hook else None,
        "notifications": [notification_out(r) for r in rows],
    }
