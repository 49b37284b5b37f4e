"""Usage and spend from the attempts' outcome events, and budgets per label (docs/costs.md).

Counters: CPU seconds and reported spend per queue and type, and spend per value of the label
names an operator chose (TASKYARD_METRICS_COST_LABELS, default `team`; each value of such a
label is a series, so choose names with few values). Measured CPU counts there as unit `cpu_s`.
Budgets (TASKYARD_METRICS_COST_BUDGETS) are exported as a gauge; the alert rule
TaskyardLabelBudgetExceeded compares the spend over the budget's window with it.
"""

import re
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from taskyard_common.schemas import JobEvent
from taskyard_common.usage import CPU_UNIT, NAME, usage_of

from .label_children import Children

WINDOWS = ("1h", "1d", "7d")
"""The budget windows the alert rules know (one rule per window, deploy/prometheus/rules)."""
_BUDGET = re.compile(
    r"^(?P<label>[A-Za-z0-9_.-]{1,63})=(?P<value>[^:=,\s]{1,256}):"
    r"(?P<amount>\d+(?:\.\d+)?)\s*(?P<unit>[A-Za-z_][A-Za-z0-9_.:-]{0,63})/(?P<window>1h|1d|7d)$"
)


@dataclass(frozen=True)
class Budget:
    label: str
    value: str
    unit: str
    amount: float
    window: str


def parse_budgets(text: str) -> list[Budget]:
    """`"team=ml:50usd/1d, team=ops:7200cpu_s/1d"` -> budgets; ValueError naming the bad entry."""
    budgets = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        match = _BUDGET.match(entry)
        if match is None or not NAME.fullmatch(match["unit"]):
            raise ValueError(
                f"{entry!r} is not LABEL=VALUE:AMOUNT UNIT/WINDOW (e.g. team=ml:50usd/1d; window 1h, 1d or 7d)"
            )
        budgets.append(
            Budget(match["label"], match["value"], match["unit"], float(match["amount"]), match["window"])
        )
    return budgets


def parse_labels(text: str) -> tuple[str, ...]:
    """`"team, project"` -> ("team", "project"); ValueError naming a bad name."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,63}", name):
            raise ValueError(f"{name!r} is not a label name")
    return names


class CostMetrics:
    def __init__(self, registry: CollectorRegistry, labels: tuple[str, ...], budgets: list[Budget]) -> None:
        self.labels = tuple(dict.fromkeys((*labels, *(b.label for b in budgets))))
        self.child = Children()
        self.cpu = Counter(
            "taskyard_job_cpu_seconds_total",
            "CPU seconds attempts used, as the executor measured them (docs/costs.md).",
            ["queue", "type"],
            registry=registry,
        )
        self.spend = Counter(
            "taskyard_job_spend_total",
            "What attempts' handlers reported spending (ctx.cost), per unit and kind.",
            ["queue", "unit", "kind"],
            registry=registry,
        )
        self.label_spend = Counter(
            "taskyard_label_spend_total",
            "Spend per value of the labels in TASKYARD_METRICS_COST_LABELS: reported costs per unit, "
            "and measured CPU as unit cpu_s.",
            ["label", "value", "unit"],
            registry=registry,
        )
        self.budget = Gauge(
            "taskyard_label_budget",
            "Budgets per label value (TASKYARD_METRICS_COST_BUDGETS): the most that may be spent in `window`.",
            ["label", "value", "unit", "window"],
            registry=registry,
        )
        for b in budgets:
            self.budget.labels(b.label, b.value, b.unit, b.window).set(b.amount)
            # Exported at 0 from the start: increase() cannot see the first increment of a series
            # that appears with a value, and a budget's first spend may be the one that crosses it.
            self.label_spend.labels(b.label, b.value, b.unit)

    def record(self, event: JobEvent, queue: str, job_type: str) -> None:
        """Count one outcome's usage and costs (events without `usage` count nothing)."""
        usage = usage_of(event.data)
        if usage is None:
            return
        child = self.child
        child(self.cpu, queue, job_type).inc(usage.cpu_s)
        for (unit, kind), amount in usage.costs.items():
            child(self.spend, queue, unit, kind).inc(amount)
        labels = event.data.get("labels")
        if not isinstance(labels, dict) or not self.labels:
            return
        for name in self.labels:
            value = labels.get(name)
            if not isinstance(value, str):
                continue
            child(self.label_spend, name, value, CPU_UNIT).inc(usage.cpu_s)
            for (unit, _kind), amount in usage.costs.items():
                child(self.label_spend, name, value, unit).inc(amount)
