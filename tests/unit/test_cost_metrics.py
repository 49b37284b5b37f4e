"""The metrics service's cost counters and budgets (taskyard_metrics.costs), and the wire format
they read (taskyard_common.usage)."""

import pytest
from prometheus_client import CollectorRegistry

from taskyard_common.schemas import JobEvent
from taskyard_common.usage import usage_of
from taskyard_metrics.costs import Budget, CostMetrics, parse_budgets, parse_labels
from taskyard_metrics.events import record_event
from taskyard_metrics.registry import Metrics


def _outcome(kind: str, labels: dict, cpu: float, costs: list) -> JobEvent:
    data = {
        "usage": {"cpu_s": cpu, "wall_s": 1.0, "peak_rss_bytes": 1000, "measured": "loop"},
        "labels": labels,
    }
    if costs:
        data["costs"] = costs
    return JobEvent(job_id="j", type=kind, queue="q", job_type="t", data=data)


def test_budgets_parse_and_bad_entries_are_named() -> None:
    assert parse_budgets(" team=ml:50usd/1d, team=ops:7200cpu_s/1h ,") == [
        Budget("team", "ml", "usd", 50.0, "1d"),
        Budget("team", "ops", "cpu_s", 7200.0, "1h"),
    ]
    for bad in ("team=ml:50usd", "team=ml:usd/1d", "team:50usd/1d", "team=ml:50usd/2d", "team=ml:-5usd/1d"):
        with pytest.raises(ValueError, match=repr(bad).replace("[", r"\[")):
            parse_budgets(bad)
    assert parse_labels("team, project") == ("team", "project")
    with pytest.raises(ValueError, match="'a b'"):
        parse_labels("a b")


def test_spend_is_counted_per_label_value_and_budgets_are_exported() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(
        registry=registry, cost_labels=("team",), budgets=[Budget("team", "ml", "usd", 1.0, "1d")]
    )
    # The budgeted series exists at 0 before any spend (increase() must see the first one).
    assert (
        registry.get_sample_value(
            "taskyard_label_spend_total", {"label": "team", "value": "ml", "unit": "usd"}
        )
        == 0
    )
    usd = {"amount": 0.25, "unit": "usd", "kind": "llm_tokens"}
    record_event(metrics, _outcome("retrying", {"team": "ml"}, 0.5, [usd]))
    record_event(metrics, _outcome("succeeded", {"team": "ml", "x": "y"}, 0.25, [usd]))
    record_event(metrics, _outcome("succeeded", {"other": "z"}, 1.0, []))
    record_event(metrics, _outcome("started", {"team": "ml"}, 9.0, [usd]))  # not an outcome: ignored

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("taskyard_label_spend_total", label="team", value="ml", unit="usd") == 0.5
    assert value("taskyard_label_spend_total", label="team", value="ml", unit="cpu_s") == 0.75
    assert value("taskyard_label_spend_total", label="other", value="z", unit="cpu_s") is None
    assert value("taskyard_job_cpu_seconds_total", queue="q", type="t") == 1.75
    assert value("taskyard_job_spend_total", queue="q", unit="usd", kind="llm_tokens") == 0.5
    assert value("taskyard_label_budget", label="team", value="ml", unit="usd", window="1d") == 1.0


def test_malformed_usage_is_ignored_not_fatal() -> None:
    assert usage_of({}) is None
    assert usage_of({"usage": {"cpu_s": "x", "wall_s": 1}}) is None
    assert usage_of({"usage": {"cpu_s": -1, "wall_s": 1}}) is None
    parsed = usage_of(
        {
            "usage": {"cpu_s": 1, "wall_s": 2, "measured": "alien"},
            "costs": [{"amount": -3, "unit": "usd", "kind": "k"}, "x"],
        }
    )
    assert (
        parsed is not None
        and parsed.costs == {}
        and parsed.measured == "loop"
        and parsed.peak_rss_bytes is None
    )
    CostMetrics(CollectorRegistry(), (), []).record(_outcome("succeeded", {}, 1.0, []), "q", "t")


def test_a_rest_workers_reported_spend_counts_toward_its_labels_budget() -> None:
    """A REST lease's outcome (taskyard_api.lease_usage) carries the job's labels and what the
    worker reported, as an executor's does: the metrics service counts it alike."""
    from taskyard_api.lease_usage import Reported, figures
    from taskyard_common.schemas import JobSpec

    spec = JobSpec.model_validate({"id": "j", "type": "agent.review", "queue": "q", "labels": {"team": "ml"}})
    data = figures(spec, 10.0, Reported(cpu_s=2.0, costs=[(0.3, "usd", "llm_tokens")]), now=14.0)
    registry = CollectorRegistry()
    metrics = Metrics(registry=registry, cost_labels=("team",), budgets=[])
    record_event(
        metrics, JobEvent(job_id="j", type="succeeded", queue="q", job_type="agent.review", data=data)
    )
    spend = {"label": "team", "value": "ml"}
    assert registry.get_sample_value("taskyard_label_spend_total", {**spend, "unit": "usd"}) == 0.3
    assert registry.get_sample_value("taskyard_label_spend_total", {**spend, "unit": "cpu_s"}) == 2.0
