"""What attempts used and spent: stored by the projector, totalled for GET /api/v1/costs, and the
estimate of a batch before it runs (docs/costs.md).

Every outcome an executor reports after running a handler carries the attempt's `usage` and
`costs` (taskyard_common.usage). The projector stores one `attempt_costs` row per such outcome,
and one `attempt_spend` row per (unit, kind) it reported, keyed like the outcome's timeline row,
so a replay stores nothing twice. Outcomes of a run the projector records as `duplicate_run`
are stored too: that run used the machine as much as any other.
"""

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, delete, distinct, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskyard_common.schemas import JobEvent
from taskyard_common.usage import usage_of

from .driver_sql import Many
from .failures import Invalid
from .lifecycle import JobRecord
from .models import costs_table, spend_table
from .schemas import LABEL_NAME, iso

log = logging.getLogger("taskyard.api.costs")
# Attempts per transaction when pruning: SQLite statements run on the api's event loop.
PRUNE_BATCH = 1000

# --- projection ------------------------------------------------------------------------------

_ATTEMPTS = Many.insert_ignoring(costs_table, "key")
_SPEND = Many.insert_ignoring(spend_table, "key", "unit", "kind")


def rows_of(
    events: Sequence[tuple[int, JobEvent]], jobs: dict[str, JobRecord]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The attempt_costs and attempt_spend rows of a batch's events (pure). An event of a job the
    database no longer has (pruned) is skipped: its queue, type and labels are unknown."""
    attempts: list[dict[str, Any]] = []
    spend: list[dict[str, Any]] = []
    for key, event in events:
        usage = usage_of(event.data)
        job = jobs.get(event.job_id)
        if usage is None or job is None:
            continue
        attempts.append(
            {
                "key": key,
                "job_id": job.id,
                "generation": event.generation,
                "attempt": event.attempt,
                "outcome": event.type,
                "at": event.at,
                "queue": job.queue,
                "type": job.type,
                "batch_id": job.batch_id,
                "workflow_id": job.workflow_id,
                "labels": job.labels or {},
                "cpu_s": usage.cpu_s,
                "wall_s": usage.wall_s,
                "peak_rss_bytes": usage.peak_rss_bytes,
                "measured": usage.measured,
            }
        )
        spend += [
            {"key": key, "unit": unit, "kind": kind, "amount": amount}
            for (unit, kind), amount in usage.costs.items()
        ]
    return attempts, spend


async def store(
    session: AsyncSession, events: Sequence[tuple[int, JobEvent]], jobs: dict[str, JobRecord]
) -> None:
    """Insert the batch's cost rows, ignoring those already stored (a replay)."""
    attempts, spend = rows_of(events, jobs)
    await _ATTEMPTS.run(session, attempts)
    await _SPEND.run(session, spend)


async def prune(sessions: async_sessionmaker[AsyncSession], before: float) -> int:
    """Delete the cost rows of attempts that ended before `before` (epoch s), in batches; returns
    how many attempts went. Kept apart from the jobs' retention: totals outlive the jobs."""
    c, s = costs_table.c, spend_table.c
    pruned = 0
    while True:
        async with sessions() as session:
            oldest = select(c.key).where(c.at < before).order_by(c.at).limit(PRUNE_BATCH).scalar_subquery()
            keys = list(await session.scalars(delete(costs_table).where(c.key.in_(oldest)).returning(c.key)))
            if keys:
                await session.execute(delete(spend_table).where(s.key.in_(keys)))
            await session.commit()
        pruned += len(keys)
        if len(keys) < PRUNE_BATCH:
            if pruned:
                log.info("retention: deleted the costs of %d attempts", pruned)
            return pruned


# --- queries ---------------------------------------------------------------------------------

SINCE = r"^(\d{1,6}(?:\.\d{1,3})?)([smhdw])$"
"""A duration like 30m, 24h, 7d, 2w; more than 0 and at most MAX_SINCE_S (a rule in words)."""
BY = r"^(label:[A-Za-z0-9_.-]{1,63}|queue|type|batch|workflow)$"
_SINCE = re.compile(SINCE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_SINCE_S = 400 * 86400
BY_HELP = "label:<name>, queue, type, batch or workflow"
_BY_COLUMN = {"queue": "queue", "type": "type", "batch": "batch_id", "workflow": "workflow_id"}


def parse_since(text: str) -> float:
    """Seconds back from now: `30m`, `24h`, `7d`, `2w` (at most 400 days); Invalid names `since`."""
    match = _SINCE.match(text.strip())
    if not match:
        raise Invalid(f"since: {text!r} is not a duration like 30m, 24h, 7d or 2w")
    seconds = float(match[1]) * _UNIT_S[match[2]]
    if not 0 < seconds <= MAX_SINCE_S:
        raise Invalid(f"since: must be more than 0 and at most 400d, got {text!r}")
    return seconds


@dataclass(frozen=True)
class Grouping:
    """What `by` names: a column of attempt_costs, or one label's value."""

    text: str
    label: str | None = None
    column: str | None = None

    def expression(self) -> ColumnElement[Any]:
        if self.label is not None:
            return costs_table.c.labels[self.label].as_string()
        assert self.column is not None
        return costs_table.c[self.column]


def parse_by(text: str) -> Grouping:
    """`label:team`, `queue`, `type`, `batch` or `workflow`; Invalid names `by`."""
    if text.startswith("label:"):
        name = text.removeprefix("label:")
        if not re.fullmatch(LABEL_NAME, name):
            raise Invalid(f"by: label name {name!r} must match {LABEL_NAME}")
        return Grouping(text, label=name)
    if text not in _BY_COLUMN:
        raise Invalid(f"by: {text!r} is not one of {BY_HELP}")
    return Grouping(text, column=_BY_COLUMN[text])


def _blank() -> dict[str, Any]:
    return {"attempts": 0, "jobs": 0, "cpu_s": 0.0, "wall_s": 0.0, "peak_rss_bytes": None, "costs": []}


async def totals(
    session: AsyncSession, by: Grouping, since_s: float, now: float | None = None
) -> dict[str, Any]:
    """Totals per group over the attempts that ended in the last `since_s` seconds: attempts,
    distinct jobs, CPU and wall seconds, the largest peak RSS, and reported costs per unit/kind.
    Groups are ordered by their `usd` spend, then CPU seconds, largest first."""
    now = time.time() if now is None else now
    start = now - since_s
    c = costs_table.c
    group = by.expression().label("group")
    usage_rows = await session.execute(
        select(
            group,
            func.count(),
            func.count(distinct(c.job_id)),
            func.sum(c.cpu_s),
            func.sum(c.wall_s),
            func.max(c.peak_rss_bytes),
        )
        .where(c.at >= start)
        .group_by(group)
    )
    groups: dict[Any, dict[str, Any]] = {}
    for key, attempts, jobs, cpu, wall, rss in usage_rows:
        groups[key] = {
            "key": key,
            "attempts": attempts,
            "jobs": jobs,
            "cpu_s": round(cpu or 0.0, 6),
            "wall_s": round(wall or 0.0, 6),
            "peak_rss_bytes": rss,
            "costs": [],
        }
    s = spend_table.c
    spend_rows = await session.execute(
        select(group, s.unit, s.kind, func.sum(s.amount))
        .select_from(spend_table.join(costs_table, s.key == c.key))
        .where(c.at >= start)
        .group_by(group, s.unit, s.kind)
        .order_by(s.unit, s.kind)
    )
    for key, unit, kind, amount in spend_rows:
        groups[key]["costs"].append({"unit": unit, "kind": kind, "amount": round(amount, 9)})
    ordered = sorted(groups.values(), key=lambda g: (-_usd(g), -g["cpu_s"], str(g["key"])))
    return {
        "by": by.text,
        "since": iso(start),
        "until": iso(now),
        "groups": ordered,
        "total": _sum(ordered),
    }


def _usd(group: dict[str, Any]) -> float:
    return sum(item["amount"] for item in group["costs"] if item["unit"] == "usd")


def _sum(groups: list[dict[str, Any]]) -> dict[str, Any]:
    total = _blank()
    spend: dict[tuple[str, str], float] = {}
    for g in groups:
        total["attempts"] += g["attempts"]
        total["jobs"] += g["jobs"]  # a job is in one group: per label value, queue, type, …
        total["cpu_s"] = round(total["cpu_s"] + g["cpu_s"], 6)
        total["wall_s"] = round(total["wall_s"] + g["wall_s"], 6)
        if g["peak_rss_bytes"] is not None:
            total["peak_rss_bytes"] = max(total["peak_rss_bytes"] or 0, g["peak_rss_bytes"])
        for item in g["costs"]:
            spend[(item["unit"], item["kind"])] = (
                spend.get((item["unit"], item["kind"]), 0.0) + item["amount"]
            )
    total["costs"] = [{"unit": u, "kind": k, "amount": round(a, 9)} for (u, k), a in sorted(spend.items())]
    return total


# --- estimate --------------------------------------------------------------------------------

ESTIMATE_SAMPLE = 200
"""How many of the type's most recent jobs an estimate learns from."""


async def estimate(
    session: AsyncSession, job_type: str, count: int, queue: str | None = None
) -> dict[str, Any]:
    """What `count` jobs of `job_type` will likely use and cost: the mean per job over its most
    recent finished jobs (up to ESTIMATE_SAMPLE; every attempt of those jobs counts, so retries
    are in the mean) times `count`. `basis.jobs` = 0 means no history: the figures are null."""
    c = costs_table.c
    recent = select(c.job_id, func.max(c.at).label("last")).where(c.type == job_type)
    if queue is not None:
        recent = recent.where(c.queue == queue)
    sample = recent.group_by(c.job_id).order_by(func.max(c.at).desc()).limit(ESTIMATE_SAMPLE).subquery()
    jobs_in = select(sample.c.job_id)
    row = (
        await session.execute(
            select(
                func.count(),
                func.count(distinct(c.job_id)),
                func.sum(c.cpu_s),
                func.sum(c.wall_s),
                func.min(c.at),
                func.max(c.at),
            ).where(c.job_id.in_(jobs_in), c.type == job_type)
        )
    ).one()
    attempts, jobs, cpu, wall, first, last = row
    basis = {"jobs": jobs, "attempts": attempts, "from": iso(first), "to": iso(last)}
    answer: dict[str, Any] = {"type": job_type, "queue": queue, "count": count, "basis": basis}
    if not jobs:
        answer.update(per_job=None, total=None)
        return answer
    s = spend_table.c
    spend = await session.execute(
        select(s.unit, s.kind, func.sum(s.amount))
        .select_from(spend_table.join(costs_table, s.key == c.key))
        .where(c.job_id.in_(jobs_in), c.type == job_type)
        .group_by(s.unit, s.kind)
        .order_by(s.unit, s.kind)
    )
    per_job_costs = [{"unit": u, "kind": k, "amount": a / jobs} for u, k, a in spend]
    per_job = {
        "attempts": round(attempts / jobs, 3),
        "cpu_s": round(cpu / jobs, 6),
        "wall_s": round(wall / jobs, 6),
        "costs": [dict(item, amount=round(item["amount"], 9)) for item in per_job_costs],
    }
    answer["per_job"] = per_job
    answer["total"] = {
        "attempts": round(attempts / jobs * count, 1),
        "cpu_s": round(cpu / jobs * count, 3),
        "wall_s": round(wall / jobs * count, 3),
        "costs": [dict(item, amount=round(item["amount"] * count, 9)) for item in per_job_costs],
    }
    return answer
