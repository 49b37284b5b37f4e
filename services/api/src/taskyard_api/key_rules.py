"""Concurrency and rate keys decided from plain values: no database, no clock (docs/gates.md).

admission.py reads and locks the rows; every choice it makes from them is made here, so each rule
(who goes first, when the next token is due, what a key template expands to, what a strategy
cancels) is checked by hand in tests/unit/test_key_rules.py.
"""

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .lifecycle import JobRecord

PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}
# A key's unit of admission: ("concurrency", key), ("group", group) for round_robin, ("rate", key).
Gate = tuple[str, str]
# Lock order: every admission locks its units' rows in this order, so two never wait in a circle.
KIND_ORDER = {"concurrency": 0, "group": 1, "rate": 2}


def order(job: JobRecord) -> tuple[int, float, str]:
    """Who goes first within a key: priority (high, normal, low), then submit time, then id."""
    return PRIORITY_RANK.get(job.priority, 1), job.created_at, job.id


def concurrency_gate(job: JobRecord) -> Gate | None:
    """The unit a job's concurrency key is admitted in: its group under round_robin, else the key."""
    return _unit(job.concurrency_key, job.concurrency)


def _unit(key: str | None, spec: Mapping[str, Any] | None) -> Gate | None:
    if key is None:
        return None
    spec = spec or {}
    if spec.get("strategy") == "round_robin" and spec.get("group"):
        return ("group", spec["group"])
    return ("concurrency", key)


def gates_of(jobs: Iterable[JobRecord]) -> set[Gate]:
    """The units to admit in after `jobs` moved (ended: they freed places; throttled: they wait)."""
    return gates_of_columns((job.concurrency_key, job.concurrency, job.rate_key) for job in jobs)


def gates_of_columns(rows: Iterable[tuple[str | None, Mapping[str, Any] | None, str | None]]) -> set[Gate]:
    """gates_of from the three columns (concurrency_key, concurrency, rate_key) of each job."""
    out: set[Gate] = set()
    for key, spec, rate_key in rows:
        if (gate := _unit(key, spec)) is not None:
            out.add(gate)
        if rate_key is not None:
            out.add(("rate", rate_key))
    return out


def lock_order(gates: Iterable[Gate]) -> list[Gate]:
    return sorted(gates, key=lambda g: (KIND_ORDER[g[0]], g[1]))


# --- rate keys: a token bucket kept as its theoretical arrival time (GCRA) ---------------------


@dataclass(frozen=True, slots=True)
class Bucket:
    """`per_s` jobs a second, up to `burst` at once. `tat` is when the bucket is next empty-handed
    ("theoretical arrival time"): a job may go when `tat - (burst - 1) / per_s <= now`, and each
    job moves `tat` on by 1 / per_s. One float is the whole state: it survives a restart in
    gate_keys.refilled_at, and `tokens` is derived from it."""

    per_s: float
    burst: int
    tat: float = 0.0

    @property
    def interval(self) -> float:
        return 1.0 / self.per_s

    def next_at(self) -> float:
        """The earliest time the next job of the key may be admitted."""
        return self.tat - (self.burst - 1) * self.interval

    def tokens(self, now: float) -> float:
        """Jobs that could be admitted at `now` (for display: gate_keys.tokens)."""
        return max(0.0, min(float(self.burst), (now - self.tat) / self.interval + self.burst))

    def take(self, now: float, since: float) -> "Bucket | None":
        """The bucket after admitting one job that has waited since `since`; None if it must wait.

        A job that waited while its token came due is charged at that due time, not at `now`, as
        long as it is less than one interval late: a timer that fires a little late, or admissions
        that take part of the interval, do not slow the key down (20/s stays 20/s, not
        1 / (50 ms + lateness)), and no two jobs beyond `burst` go together. Later than that (a
        stall, an api that was down) the schedule starts again from `now`: a rate is a promise of
        "no faster", so lost time is not made up with a burst."""
        base = max(since, self.tat if self.tat > now - self.interval else now)
        if base - (self.burst - 1) * self.interval > now + 1e-9:
            return None
        return replace(self, tat=base + self.interval)


# --- concurrency strategies -------------------------------------------------------------------


def round_robin(heads: Mapping[str, Sequence[JobRecord]], turns: Mapping[str, int]) -> list[JobRecord]:
    """The group's waiting jobs in the order they get places: one job of each key per round, the
    key served longest ago (never: first) first, ties by its first job's order. `heads` holds
    each key's waiting jobs in `order`; `turns` each key's last turn number."""
    keys = sorted(heads, key=lambda k: (turns.get(k, -1), order(heads[k][0]) if heads[k] else (9, 0, "")))
    out: list[JobRecord] = []
    depth = max((len(v) for v in heads.values()), default=0)
    for i in range(depth):
        out += [heads[k][i] for k in keys if i < len(heads[k])]
    return out


def keep_latest(waiting: Sequence[JobRecord]) -> tuple[JobRecord | None, list[JobRecord]]:
    """`keep_latest`: of the jobs still waiting after admission, the newest stays; the rest go."""
    if not waiting:
        return None, []
    newest = max(waiting, key=lambda j: (j.created_at, j.id))
    return newest, [j for j in waiting if j.id != newest.id]


def in_progress_to_stop(
    holding: Sequence[JobRecord], waiting: Sequence[JobRecord], limit: int
) -> tuple[list[JobRecord], list[JobRecord]]:
    """`cancel_in_progress`: the newest `limit` of the key's holding and waiting jobs keep (or get)
    places. Returns (holding jobs to stop, waiting jobs replaced before they started)."""
    everyone = sorted([*holding, *waiting], key=lambda j: (j.created_at, j.id), reverse=True)
    keep = {j.id for j in everyone[:limit]}
    return [j for j in holding if j.id not in keep], [j for j in waiting if j.id not in keep]


# --- defaults from the api's configuration ----------------------------------------------------

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)\}")


class Unfilled(Exception):
    """A key template names a field the job does not have."""


def expand(template: str, job: Mapping[str, Any]) -> str:
    """`tenant:{labels.tenant}` with the job's fields filled in (dotted paths into dicts: labels,
    payload; plain fields: type, queue, priority). Unfilled if a field is missing or not a
    scalar: a key made of "None" would throttle unrelated jobs together."""

    def value(match: re.Match[str]) -> str:
        node: Any = job
        for part in match.group(1).split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise Unfilled(match.group(1))
            node = node[part]
        if node is None or isinstance(node, (dict, list)):
            raise Unfilled(match.group(1))
        return str(node)

    return _FIELD.sub(value, template)


def default_limit(spec: Mapping[str, Any], key: str) -> int:
    """A configured default's limit for `key`: its entry in `limits`, else `limit`."""
    return int((spec.get("limits") or {}).get(key, spec.get("limit", 1)))
