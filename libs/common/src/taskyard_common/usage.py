"""What one attempt used and spent, as its outcome event carries it (docs/costs.md).

An executor puts two keys in the data of every outcome it reports after running a handler
(`succeeded`, `failed`, `retrying`, `dead`, `cancelled`, `waiting`):

- ``usage``: ``{"cpu_s", "wall_s", "peak_rss_bytes", "measured"}``, measured by the executor;
  ``measured`` says how (``process``: the job's own processes, from wait4; ``thread``,
  ``loop``, ``pool``: an in-process handler, see docs/costs.md for each approximation;
  ``worker``, ``lease``: a REST worker's attempt, CPU as the worker reported it or not at all,
  wall time by the api: taskyard_api.lease_usage);
- ``costs``: ``[{"amount", "unit", "kind"}]``, what the handler reported with ``ctx.cost``,
  summed per (unit, kind); absent when it reported nothing.

The API's projector stores them per attempt and the metrics service counts them; both read them
here, so a malformed value from an older or foreign executor is ignored, never fatal.
"""

import math
import re
from dataclasses import dataclass, field
from typing import Any

NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
"""What a cost's unit and kind may be (they become Prometheus label values and column values)."""
MEASURED = frozenset({"process", "thread", "loop", "pool", "worker", "lease"})
CPU_UNIT, CPU_KIND = "cpu_s", "cpu"
"""Measured CPU seconds, counted beside reported costs where budgets apply (the metrics service)."""


@dataclass(frozen=True)
class AttemptUsage:
    cpu_s: float
    wall_s: float
    peak_rss_bytes: int | None
    measured: str
    # (unit, kind) -> amount
    costs: dict[tuple[str, str], float] = field(default_factory=dict)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def check_cost(amount: Any, unit: Any, kind: Any) -> tuple[float, str, str]:
    """A valid cost, or ValueError naming what is wrong (ctx.cost and the wire share this rule)."""
    value = _number(amount)
    if value is None:
        raise ValueError(f"amount must be a finite number >= 0, got {amount!r}")
    for name, text in (("unit", unit), ("kind", kind)):
        if not isinstance(text, str) or not NAME.fullmatch(text):
            raise ValueError(f"{name} must match {NAME.pattern}, got {text!r}")
    return value, unit, kind


def usage_of(data: dict[str, Any]) -> AttemptUsage | None:
    """The usage an outcome's data carries, or None (no `usage`, or not one this code reads)."""
    raw = data.get("usage")
    if not isinstance(raw, dict):
        return None
    cpu, wall = _number(raw.get("cpu_s")), _number(raw.get("wall_s"))
    if cpu is None or wall is None:
        return None
    rss = _number(raw.get("peak_rss_bytes"))
    measured = raw.get("measured") if raw.get("measured") in MEASURED else "loop"
    costs: dict[tuple[str, str], float] = {}
    for item in data.get("costs") or []:
        if not isinstance(item, dict):
            continue
        try:
            amount, unit, kind = check_cost(item.get("amount"), item.get("unit"), item.get("kind"))
        except ValueError:
            continue
        costs[(unit, kind)] = costs.get((unit, kind), 0.0) + amount
    return AttemptUsage(cpu, wall, int(rss) if rss is not None else None, str(measured), costs)
