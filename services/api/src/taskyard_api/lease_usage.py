"""What a REST worker's attempt used and spent, in the outcome event an executor would send.

An executor measures each attempt itself (taskyard_common.usage); the api cannot see a REST
worker's process, so it measures what it can and takes the rest from the worker:

- ``wall_s``: from the claim to the outcome (the lease's life), always, by the api;
- ``cpu_s`` and ``peak_rss_bytes``: as the worker reports them on complete/fail (``usage``);
  unreported, CPU is 0 and RSS unknown, and ``measured`` says which: ``worker`` (the worker
  reported its CPU) or ``lease`` (only the wall time is known);
- ``costs``: what the worker reports spending (``costs``, as ``ctx.cost``), summed per (unit, kind).

An attempt whose lease expired reports nothing, as an executor that died does (docs/costs.md).
"""

import time
from dataclasses import dataclass, field
from typing import Any

from taskyard_common.schemas import JobSpec


@dataclass(frozen=True)
class Reported:
    """What the worker said its attempt used (None: not said) and spent."""

    cpu_s: float | None = None
    peak_rss_bytes: int | None = None
    costs: list[tuple[float, str, str]] = field(default_factory=list)  # (amount, unit, kind)


NOTHING = Reported()


def figures(spec: JobSpec, started: float, reported: Reported, now: float | None = None) -> dict[str, Any]:
    """The outcome's `usage`, `costs` and `labels` (the shape taskyard_common.usage reads)."""
    wall = max(0.0, (time.time() if now is None else now) - started)
    data: dict[str, Any] = {
        "usage": {
            "cpu_s": round(reported.cpu_s or 0.0, 6),
            "wall_s": round(wall, 6),
            "peak_rss_bytes": reported.peak_rss_bytes,
            "measured": "worker" if reported.cpu_s is not None else "lease",
        }
    }
    summed: dict[tuple[str, str], float] = {}
    for amount, unit, kind in reported.costs:
        summed[(unit, kind)] = summed.get((unit, kind), 0.0) + amount
    if summed:
        data["costs"] = [
            {"amount": round(amount, 9), "unit": unit, "kind": kind}
            for (unit, kind), amount in sorted(summed.items())
        ]
    if spec.labels:  # the metrics service counts spend per label without the database
        data["labels"] = spec.labels
    return data
