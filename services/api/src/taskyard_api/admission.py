"""Admission under concurrency and rate keys: throttled jobs get their place (docs/gates.md).

`admit` runs inside its caller's transaction (a submit's, a retry's, the projector's settle): it
locks the gate_keys row of every key it admits in (inserted if missing, `FOR UPDATE` on
PostgreSQL, in one global order so two api processes never wait in a circle; SQLite has one
writer), counts the jobs that hold a place (KEY_HOLDING_STATES), and moves up to `limit − held`
throttled jobs to `queued` through the lifecycle core (`Admitted`). A job with both a concurrency
and a rate key is admitted only when both allow, so both rows are locked first. What it decides
is in key_rules; this module reads and writes the rows.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Select, and_, case, func, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from .db import listed, one_of
from .driver_sql import Many
from .http_metrics import GATE_ADMISSIONS, GATE_KEY_CANCELS
from .job_store import JobStore, record_of
from .key_rules import (
    PRIORITY_RANK,
    Bucket,
    Gate,
    concurrency_gate,
    gates_of_columns,
    in_progress_to_stop,
    keep_latest,
    lock_order,
    round_robin,
)
from .lifecycle import KEY_HOLDING_STATES, Admitted, Cancel, JobRecord, transition
from .models import gate_keys_table, jobs_table

_HOLDING = sorted(KEY_HOLDING_STATES)
# Waiting jobs read beyond a key's free places: ones a rate token holds back are skipped, not waited for.
SLACK = 20
# Most waiting jobs of one key a strategy that cancels looks at in one admission.
SWEEP = 1000

j = jobs_table.c
g = gate_keys_table.c
# A key's row is created by the first job that names it; racing creators store it once.
_GATE_KEYS_ONCE = Many.insert_ignoring(gate_keys_table, "kind", "key")
RANK = case({"high": 0, "normal": 1}, value=j.priority, else_=2)


@dataclass
class Admission:
    """What one admission moved: `released` are queued and due in the outbox (publish them after
    the commit); `ended` were cancelled by their key's strategy; `stopped` (before, after) are
    holding jobs `cancel_in_progress` replaced: their executors must be told after the commit."""

    released: list[JobRecord] = field(default_factory=list)
    ended: list[JobRecord] = field(default_factory=list)
    stopped: list[tuple[JobRecord, JobRecord]] = field(default_factory=list)
    by_kind: dict[str, int] = field(default_factory=dict)
    cancels: dict[str, int] = field(default_factory=dict)

    def count(self) -> None:
        """Into the api's metrics once committed: totals only (a label per key is unbounded)."""
        for kind, n in self.by_kind.items():
            GATE_ADMISSIONS.labels(kind).inc(n)
        for strategy, n in self.cancels.items():
            GATE_KEY_CANCELS.labels(strategy).inc(n)


async def _first_waiting(session: AsyncSession, where: Any, n: int) -> list[JobRecord]:
    """The first `n` waiting jobs of a key in admission order (priority, submit time, id): one
    query per priority, each a range of ix_jobs_*_key_waiting in submit order, so an admission
    reads `n` rows however long the key's backlog is (one ORDER BY over the priority rank would
    sort the whole backlog at every admission)."""
    out: list[JobRecord] = []
    for priority in PRIORITY_RANK:
        if len(out) >= n:
            break
        query = (
            select(jobs_table)
            .where(where, j.status == "throttled", j.priority == priority)
            .order_by(j.created_at, j.id)
            .limit(n - len(out))
        )
        out += await _rows(session, query)
    return out


def _group_is(group: str) -> Any:
    return j.concurrency["group"].as_string() == group


def _where(gate: Gate) -> Any:
    kind, key = gate
    if kind == "rate":
        return j.rate_key == key
    if kind == "group":
        return and_(j.concurrency_key.is_not(None), _group_is(key))
    return j.concurrency_key == key


async def _rows(session: AsyncSession, query: Select[Any]) -> list[JobRecord]:
    return [record_of(row) for row in await session.execute(query)]


async def _partners(session: AsyncSession, gates: set[Gate]) -> set[Gate]:
    """`gates` and the other keys of their waiting jobs (a rate key's jobs' concurrency keys, and
    back): locked together, so a job with both keys can be admitted by either. One unsorted
    DISTINCT per gate (most keys have no partner: the answer is empty)."""
    out = set(gates)
    for gate in gates:
        if gate[0] == "rate":
            rows = await session.execute(
                select(j.concurrency_key, j.concurrency)
                .where(_where(gate), j.status == "throttled", j.concurrency_key.is_not(None))
                .distinct()
                .limit(SLACK)
            )
            out |= gates_of_columns((key, spec, None) for key, spec in rows)
        else:
            keys = await session.scalars(
                select(j.rate_key)
                .where(_where(gate), j.status == "throttled", j.rate_key.is_not(None))
                .distinct()
                .limit(SLACK)
            )
            out |= {("rate", key) for key in keys}
    return out


async def _lock(session: AsyncSession, gates: list[Gate], now: float) -> dict[Gate, Any]:
    rows = [{"kind": k, "key": key, "settings": {}, "tokens": 0.0, "refilled_at": 0.0} for k, key in gates]
    await _GATE_KEYS_ONCE.run(session, rows)
    query = (
        select(gate_keys_table)
        .where(tuple_(g.kind, g.key).in_([tuple(gate) for gate in gates]))
        .order_by(g.kind, g.key)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    return {(row.kind, row.key): row for row in await session.execute(query)}


async def _held(session: AsyncSession, keys: list[str]) -> dict[str, int]:
    if not keys:
        return {}
    dialect = session.get_bind().dialect.name
    rows = await session.execute(
        select(j.concurrency_key, func.count())
        .where(one_of(j.concurrency_key, dialect), j.status.in_(_HOLDING))
        .group_by(j.concurrency_key),
        {"ids": listed(keys, dialect)},
    )
    return {key: n for key, n in rows}


async def _newest(session: AsyncSession, gate: Gate) -> JobRecord | None:
    """The newest waiting job of the key: its settings are the key's (the latest configuration wins)."""
    row = (
        await session.execute(
            select(jobs_table)
            .where(_where(gate), j.status == "throttled")
            .order_by(j.created_at.desc(), j.id.desc())
            .limit(1)
        )
    ).first()
    return record_of(row) if row is not None else None


def _cancelled(job: JobRecord, now: float, kind: str, message: str) -> JobRecord:
    return replace(transition(job, Cancel(now)), error={"type": kind, "message": message})


class _Round:
    """One admission's state: places left per concurrency unit, buckets per rate key."""

    def __init__(self, session: AsyncSession, now: float) -> None:
        self.session, self.now = session, now
        self.room: dict[Gate, int] = {}
        self.buckets: dict[str, Bucket] = {}
        self.seen: set[str] = set()  # jobs admitted or cancelled in this round
        self.out = Admission()

    async def admit_one(self, job: JobRecord) -> bool:
        """Admit `job` if every key it has allows; False leaves it waiting."""
        if job.id in self.seen:
            return False
        unit = concurrency_gate(job)
        if unit is not None and self.room.get(unit, 0) <= 0:
            return False
        bucket = None
        if job.rate_key is not None:
            if job.rate_key not in self.buckets:
                return False
            bucket = self.buckets[job.rate_key].take(self.now, job.updated_at)
            if bucket is None:
                return False
        new = transition(job, Admitted(self.now))
        if not await JobStore.save(self.session, job, new):
            return False  # cancelled meanwhile: its cancel stands
        self.seen.add(job.id)
        self.out.released.append(new)
        if unit is not None:
            self.room[unit] -= 1
            self.out.by_kind["concurrency"] = self.out.by_kind.get("concurrency", 0) + 1
        if bucket is not None and job.rate_key is not None:
            self.buckets[job.rate_key] = bucket
            self.out.by_kind["rate"] = self.out.by_kind.get("rate", 0) + 1
        return True

    async def cancel(self, job: JobRecord, strategy: str, message: str) -> JobRecord | None:
        if job.id in self.seen:
            return None
        new = _cancelled(job, self.now, "ConcurrencyKey", message)
        if not await JobStore.save(self.session, job, new):
            return None
        self.seen.add(job.id)
        self.out.cancels[strategy] = self.out.cancels.get(strategy, 0) + 1
        return new


async def admit(
    session: AsyncSession, gates: Iterable[Gate], now: float, *, stop_holding: bool = True
) -> Admission:
    """Admit what the keys of `gates` have room for (see the module's doc). `stop_holding`: let
    `cancel_in_progress` cancel holding jobs (the caller tells their executors after the commit)."""
    wanted = set(gates)
    if not wanted:
        return Admission()
    order = lock_order(await _partners(session, wanted))
    rows = await _lock(session, order, now)
    r = _Round(session, now)
    plans: list[tuple[Gate, Any]] = []
    for gate in order:
        row = rows[gate]
        newest = await _newest(session, gate)
        if gate[0] == "rate":
            settings = dict(newest.rate or {}) if newest else dict(row.settings or {})
            if not settings.get("per_s"):
                continue
            tat = row.refilled_at if row.refilled_at > 0 else now
            r.buckets[gate[1]] = Bucket(float(settings["per_s"]), int(settings.get("burst", 1)), tat)
            plans.append((gate, settings))
        else:
            settings = dict(newest.concurrency or {}) if newest else dict(row.settings or {})
            if not settings.get("limit"):
                continue
            plans.append((gate, {**(row.settings or {}), **settings}))
    for gate, settings in plans:
        if gate[0] == "concurrency":
            await _admit_key(r, gate, settings, stop_holding)
        elif gate[0] == "group":
            settings = await _admit_group(r, gate, settings)
        else:
            candidates = await _first_waiting(session, _where(gate), SLACK + r.buckets[gate[1]].burst)
            for job in candidates:
                await r.admit_one(job)
        await _store(session, gate, settings, r, now)
    return r.out


async def _admit_key(r: _Round, gate: Gate, settings: dict[str, Any], stop_holding: bool) -> None:
    session, key = r.session, gate[1]
    limit, strategy = int(settings["limit"]), settings.get("strategy") or "queue"
    held = (await _held(session, [key])).get(key, 0)
    r.room[gate] = limit - held
    if strategy == "cancel_in_progress" and stop_holding:
        waiting = await _first_waiting(session, _where(gate), SWEEP)
        holding_rows = select(jobs_table).where(j.concurrency_key == key, j.status.in_(_HOLDING))
        holding = await _rows(session, holding_rows.order_by(j.created_at, j.id).limit(SWEEP))
        stop, replaced = in_progress_to_stop(holding, waiting, limit)
        newest = max(waiting, key=lambda job: (job.created_at, job.id), default=None)
        why = f"replaced by newer job {newest.id if newest else '?'} (key `{key}`, cancel_in_progress)"
        for job in stop:
            if (new := await r.cancel(job, strategy, why)) is not None:
                r.out.ended.append(new)
                r.out.stopped.append((job, new))
                r.room[gate] += 1
        for job in replaced:
            if (new := await r.cancel(job, strategy, why)) is not None:
                r.out.ended.append(new)
    sweep = strategy in ("cancel_newest", "keep_latest")
    size = SWEEP if sweep else max(0, r.room[gate]) + SLACK
    candidates = await _first_waiting(session, _where(gate), size) if r.room[gate] > 0 or sweep else []
    for job in candidates:
        if r.room[gate] <= 0 and not sweep:
            break
        await r.admit_one(job)
    left = [job for job in candidates if job.id not in r.seen]
    if strategy == "keep_latest":
        newest, extra = keep_latest(left)
        for job in extra:
            why = f"replaced by newer job {newest.id if newest else '?'} (key `{key}`, keep_latest)"
            if (new := await r.cancel(job, strategy, why)) is not None:
                r.out.ended.append(new)
    elif strategy == "cancel_newest" and r.room[gate] <= 0:
        why = f"concurrency key `{key}` is full ({limit}/{limit} running); cancel_newest refuses new jobs"
        for job in left:
            if (new := await r.cancel(job, strategy, why)) is not None:
                r.out.ended.append(new)


async def _admit_group(r: _Round, gate: Gate, settings: dict[str, Any]) -> dict[str, Any]:
    """round_robin: the group's keys share `limit` places, given to its keys in turn."""
    session = r.session
    limit = int(settings["limit"])
    turns: dict[str, int] = dict(settings.get("turns") or {})
    waiting_keys = list(
        await session.scalars(
            select(j.concurrency_key).where(_where(gate), j.status == "throttled").distinct()
        )
    )
    keys = sorted(set(turns) | {k for k in waiting_keys if k is not None})
    held = await _held(session, keys)
    r.room[gate] = limit - sum(held.values())
    if r.room[gate] > 0 and waiting_keys:
        # The keys served longest ago first; each reads as many heads as there are places.
        first = sorted(waiting_keys, key=lambda k: turns.get(k, -1))[: r.room[gate] + SLACK]
        heads = {
            key: await _first_waiting(session, j.concurrency_key == key, r.room[gate] + 1) for key in first
        }
        turn = int(settings.get("next", 0))
        for job in round_robin(heads, turns):
            if r.room[gate] <= 0:
                break
            if await r.admit_one(job) and job.concurrency_key is not None:
                turns[job.concurrency_key] = turn
                turn += 1
        settings["next"] = turn
    # Keys with nothing held or waiting leave the turn table (it stays as big as the live keys).
    live = (
        {k for k, n in held.items() if n}
        | set(waiting_keys)
        | {job.concurrency_key for job in r.out.released if job.concurrency_key}
    )
    settings["turns"] = {k: t for k, t in turns.items() if k in live}
    return settings


async def _store(session: AsyncSession, gate: Gate, settings: dict[str, Any], r: _Round, now: float) -> None:
    values: dict[str, Any] = {"settings": settings}
    if gate[0] == "rate" and (bucket := r.buckets.get(gate[1])) is not None:
        values.update(refilled_at=bucket.tat, tokens=bucket.tokens(now))
    await session.execute(update(gate_keys_table).where(g.kind == gate[0], g.key == gate[1]).values(values))


# --- what a throttled job's reason, the timer and doctor read ----------------------------------


async def ahead_of(session: AsyncSession, job: JobRecord, where: Any) -> int:
    """Waiting jobs of the key that go before `job` (priority, then submit time, then id)."""
    rank = PRIORITY_RANK.get(job.priority, 1)
    before = or_(
        RANK < rank,
        and_(
            RANK == rank,
            or_(j.created_at < job.created_at, and_(j.created_at == job.created_at, j.id < job.id)),
        ),
    )
    return int(await session.scalar(select(func.count()).where(where, j.status == "throttled", before)) or 0)


async def facts(session: AsyncSession, job: JobRecord, now: float) -> dict[str, Any]:
    """What holds a throttled job: {"concurrency": {...}} and/or {"rate": {...}} (reasons.throttled_reason)."""
    out: dict[str, Any] = {}
    unit = concurrency_gate(job)
    if unit is not None and job.concurrency_key is not None:
        spec = job.concurrency or {}
        if unit[0] == "group":  # the group's places are shared: count every key's
            holding = int(
                await session.scalar(select(func.count()).where(_where(unit), j.status.in_(_HOLDING))) or 0
            )
        else:
            holding = (await _held(session, [job.concurrency_key])).get(job.concurrency_key, 0)
        out["concurrency"] = {
            "key": job.concurrency_key,
            "group": spec.get("group") if unit[0] == "group" else None,
            "limit": int(spec.get("limit", 1)),
            "holding": holding,
            "ahead": await ahead_of(session, job, j.concurrency_key == job.concurrency_key),
            "strategy": spec.get("strategy") or "queue",
        }
    if job.rate_key is not None and job.rate:
        tat = await session.scalar(select(g.refilled_at).where(g.kind == "rate", g.key == job.rate_key))
        bucket = Bucket(float(job.rate["per_s"]), int(job.rate.get("burst", 1)), tat or now)
        out["rate"] = {
            "key": job.rate_key,
            "per_s": bucket.per_s,
            "burst": bucket.burst,
            "next_at": bucket.next_at(),
            "ahead": await ahead_of(session, job, j.rate_key == job.rate_key),
        }
    return out


async def waiting_gates(session: AsyncSession, limit: int = 1000) -> set[Gate]:
    """The units of keys that have throttled jobs (the gate sweeper admits in them once more)."""
    rows = await session.execute(
        select(j.concurrency_key, j.concurrency, j.rate_key)
        .where(j.status == "throttled")
        .group_by(j.concurrency_key, j.concurrency, j.rate_key)
        .limit(limit)
    )
    return gates_of_columns(rows)


async def rate_keys_due(session: AsyncSession) -> list[tuple[str, float]]:
    """(rate key, when its next job may go) of every rate key that has throttled jobs."""
    waiting = select(j.rate_key).where(j.status == "throttled", j.rate_key.is_not(None)).distinct()
    rows = await session.execute(
        select(g.key, g.settings, g.refilled_at).where(g.kind == "rate", g.key.in_(waiting))
    )
    out = []
    for key, settings, tat in rows:
        if not (settings or {}).get("per_s"):
            out.append((key, 0.0))  # never admitted yet: due now
            continue
        out.append((key, Bucket(float(settings["per_s"]), int(settings.get("burst", 1)), tat).next_at()))
    # A rate key with throttled jobs but no row yet (a crash before the first admission): due now.
    known = {k for k, _ in out}
    for key in await session.scalars(waiting):
        if key not in known:
            out.append((key, 0.0))
    return out


async def busiest(session: AsyncSession, limit: int = 5) -> list[tuple[str, int, int | None]]:
    """(key, throttled jobs, its limit) of the concurrency keys with the most throttled jobs."""
    rows = await session.execute(
        select(j.concurrency_key, func.count())
        .where(j.status == "throttled", j.concurrency_key.is_not(None))
        .group_by(j.concurrency_key)
        .order_by(func.count().desc())
        .limit(limit)
    )
    out = []
    for key, n in rows:
        newest = await _newest(session, ("concurrency", key))
        out.append((key, int(n), int((newest.concurrency or {}).get("limit", 0)) if newest else None))
    return out
