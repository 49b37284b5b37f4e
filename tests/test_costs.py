"""Costs end to end: real executor, nats-server and database (SQLite, and PostgreSQL when
TASKYARD_TEST_DATABASE_URL is set). Jobs fail once and then succeed; a batch's totals must be the
sum over every attempt the executor reported, retries included."""

import json
import math
import time
from collections.abc import Callable

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from taskyard_api import costs

from .invariants import query
from .stack import Service, Stack, run_async, wait_until
from .test_cli_work import cli_in
from .test_observability import Prometheus, needs_prometheus, prometheus_for  # noqa: F401 (fixture)

HANDLERS = "handlers_for_tests"
# A script that burns CPU on every attempt and fails its first one: real process figures per attempt.
FAIL_ONCE = (
    "import os, time\n"
    "t = time.process_time()\n"
    "while time.process_time() - t < 0.15: pass\n"
    "raise SystemExit(1 if os.environ['TASKYARD_ATTEMPT'] == '1' else 0)\n"
)
QUICK_RETRY = {"base_s": 0.05, "factor": 1, "max_s": 0.05}


def _outcomes(job: dict) -> list[dict]:
    """The timeline's outcome entries that carry usage: what the executor reported per attempt."""
    return [e for e in job["timeline"] if "usage" in e["data"]]


def _spent(entries: list[dict], unit: str) -> float:
    return sum(c["amount"] for e in entries for c in e["data"].get("costs", []) if c["unit"] == unit)


def _spending_batch(n: int = 6) -> list[dict]:
    """`n` jobs that fail once and then succeed, each attempt spending 0.01 × (i + 1) usd;
    odd ones are team=ml, even ones team=ops."""
    return [
        {
            "type": "spends",
            "payload": {"usd": 0.01 * (i + 1), "tokens": 100 * (i + 1), "succeed_on": 2},
            "labels": {"team": "ml" if i % 2 else "ops"},
            "backoff": QUICK_RETRY,
        }
        for i in range(n)
    ]


def test_a_batch_costs_the_sum_of_its_attempts_retries_included(stack):
    stack.start_api()
    stack.start_executor(handlers=HANDLERS, slots=4)
    jobs = _spending_batch() + [
        {"type": "python", "payload": {"script": FAIL_ONCE}, "labels": {"team": "ml"}, "backoff": QUICK_RETRY}
        for _ in range(2)
    ]
    with stack.http() as c:
        created = c.post("/api/v1/batches", json={"jobs": jobs, "name": "costly"})
        assert created.status_code == 201, created.text
        batch_id = created.json()["batch_id"]
        ids = [j["id"] for j in created.json()["jobs"]]
        wait_until(lambda: c.get(f"/api/v1/batches/{batch_id}").json()["done"] == 8, 60, "the batch to end")
        assert c.get(f"/api/v1/batches/{batch_id}").json()["succeeded"] == 8

        # Every job ran twice; the timeline's outcome events are what the executor reported.
        reported: list[dict] = []
        for job_id in ids:
            job = c.get(f"/api/v1/jobs/{job_id}").json()
            entries = _outcomes(job)
            assert [e["type"] for e in entries] == ["retrying", "succeeded"], job["timeline"]
            attempts = c.get(f"/api/v1/jobs/{job_id}/costs").json()["attempts"]
            assert [(a["attempt"], a["outcome"]) for a in attempts] == [(1, "retrying"), (2, "succeeded")]
            assert [a["cpu_s"] for a in attempts] == [e["data"]["usage"]["cpu_s"] for e in entries]
            if job["type"] == "python":
                assert all(a["measured"] == "process" and a["cpu_s"] >= 0.14 for a in attempts), attempts
                assert all(a["peak_rss_bytes"] > 5_000_000 for a in attempts), attempts
            else:
                assert all(a["measured"] == "loop" for a in attempts)
            reported += entries
        assert len(reported) == 16

        def group(by: str, key: str) -> dict:
            answer = c.get("/api/v1/costs", params={"since": "1h", "by": by})
            assert answer.status_code == 200, answer.text
            return next(g for g in answer.json()["groups"] if g["key"] == key)

        wait_until(lambda: group("batch", batch_id)["attempts"] == 16, 10, "the costs projected")
        batch = group("batch", batch_id)
        assert (batch["attempts"], batch["jobs"]) == (16, 8)
        # Each attempt reported its spend: 2 × (0.01 + … + 0.06) usd and 2 × (100 + … + 600) tokens.
        usd = next(x["amount"] for x in batch["costs"] if x["unit"] == "usd")
        tokens = next(x["amount"] for x in batch["costs"] if x["unit"] == "tokens")
        assert math.isclose(usd, _spent(reported, "usd")) and math.isclose(usd, 0.42)
        assert math.isclose(tokens, _spent(reported, "tokens")) and math.isclose(tokens, 4200)
        cpu = sum(e["data"]["usage"]["cpu_s"] for e in reported)
        wall = sum(e["data"]["usage"]["wall_s"] for e in reported)
        assert math.isclose(batch["cpu_s"], cpu, abs_tol=1e-5) and batch["cpu_s"] >= 4 * 0.14
        assert math.isclose(batch["wall_s"], wall, abs_tol=1e-5)

        # By label: ml has jobs 1, 3, 5 (0.02 + 0.04 + 0.06, twice) and both python jobs.
        ml, ops = group("label:team", "ml"), group("label:team", "ops")
        assert (ml["jobs"], ml["attempts"], ops["jobs"], ops["attempts"]) == (5, 10, 3, 6)
        assert math.isclose(next(x["amount"] for x in ml["costs"] if x["unit"] == "usd"), 0.24)
        assert math.isclose(next(x["amount"] for x in ops["costs"] if x["unit"] == "usd"), 0.18)
        assert group("type", "python")["cpu_s"] >= 4 * 0.14
        assert (group("type", "spends")["attempts"], group("queue", "default")["attempts"]) == (12, 16)

        # The estimate learns from the type's history: two attempts per job, 0.07 usd per job on average.
        est = c.get("/api/v1/costs/estimate", params={"type": "spends", "count": 10}).json()
        assert est["basis"]["jobs"] == 6 and est["per_job"]["attempts"] == 2.0
        assert (
            math.isclose(est["total"]["costs"][1]["amount"], 0.7)
            and est["total"]["costs"][1]["unit"] == "usd"
        )
        none = c.get("/api/v1/costs/estimate", params={"type": "never.ran", "count": 10}).json()
        assert none["basis"]["jobs"] == 0 and none["total"] is None

        # Retention deletes an attempt's rows from both tables (here: every attempt ended before now).
        async def prune() -> int:
            engine = create_async_engine(stack.db_url)
            try:
                return await costs.prune(async_sessionmaker(engine), time.time() + 1)
            finally:
                await engine.dispose()

        assert run_async(prune()) == 16
        assert query(stack.db_url, "SELECT count(*) FROM attempt_spend")[0][0] == 0
        assert c.get("/api/v1/costs", params={"by": "batch"}).json()["groups"] == []


BAD = [
    ("/api/v1/costs", {"since": "7x"}, "since"),
    ("/api/v1/costs", {"since": "0d"}, "since"),
    ("/api/v1/costs", {"since": "401d"}, "since"),
    ("/api/v1/costs", {"by": "colour"}, "by"),
    ("/api/v1/costs", {"by": "label:"}, "by"),
    ("/api/v1/costs", {"by": "label:a b"}, "by"),
    ("/api/v1/costs/estimate", {"type": "spends", "count": 0}, "count"),
    ("/api/v1/costs/estimate", {"count": 3}, "type"),
    ("/api/v1/costs/estimate", {"type": "a b"}, "type"),
]


def test_bad_cost_queries_are_a_422_naming_the_field(stack):
    stack.start_api()
    with stack.http() as c:
        for path, params, field in BAD:
            answer = c.get(path, params=params)
            assert answer.status_code == 422, (params, answer.text)
            assert answer.json()["detail"].startswith(f"{field}: "), (params, answer.json())


@needs_prometheus
@pytest.mark.one_database(
    "sqlite", why="the metrics service counts spend from NATS; the alert is Prometheus's"
)
def test_crossing_a_labels_budget_fires_the_alert_on_a_real_prometheus(
    stack: Stack,
    prometheus_for: Callable[[Service], Prometheus],  # noqa: F811 (the fixture)
) -> None:
    """The metrics service counts the executor's reported spend per team; with team=ml's budget at
    0.20 usd an hour, the batch's 0.24 usd for ml fires TaskyardLabelBudgetExceeded for ml only
    (ops spends 0.18 of its 1 usd)."""
    stack.start_api()
    stack.start_executor(handlers=HANDLERS, slots=4)
    metrics = stack.wait_ready(
        stack.spawn(
            "metrics",
            "taskyard_metrics",
            [],
            "TASKYARD_METRICS_PORT",
            TASKYARD_METRICS_COST_BUDGETS="team=ml:0.2usd/1h, team=ops:1usd/1h",
        )
    )
    prom = prometheus_for(metrics)
    spent = 'taskyard_label_spend_total{label="team",value="%s",unit="usd"}'
    # The budgeted series are scraped at 0 before anything is spent, so increase() sees it all.
    wait_until(
        lambda: (prom.scalar(f"count_over_time({spent % 'ml'}[1m])") or 0) >= 2, 30, "two scrapes at 0"
    )
    assert prom.scalar(spent % "ml") == 0
    with stack.http() as c:
        created = c.post("/api/v1/batches", json={"jobs": _spending_batch(), "name": "budget"})
        assert created.status_code == 201, created.text
        batch_id = created.json()["batch_id"]
        wait_until(lambda: c.get(f"/api/v1/batches/{batch_id}").json()["done"] == 6, 60, "the batch to end")
        by_team = {g["key"]: g for g in c.get("/api/v1/costs", params={"by": "label:team"}).json()["groups"]}
    wait_until(lambda: math.isclose(prom.scalar(spent % "ml") or 0, 0.24), 30, "ml's spend in Prometheus")
    # Prometheus counts what the API stored: the same executor reports, two paths.
    for team in ("ml", "ops"):
        api_usd = next(x["amount"] for x in by_team[team]["costs"] if x["unit"] == "usd")
        assert math.isclose(prom.scalar(spent % team) or 0, api_usd), team

    firing = wait_until(
        lambda: prom.alerts("TaskyardLabelBudgetExceeded"), 60, "TaskyardLabelBudgetExceeded to fire"
    )
    assert [(a["labels"]["value"], a["labels"]["unit"], a["labels"]["window"]) for a in firing] == [
        ("ml", "usd", "1h")
    ]
    assert firing[0]["annotations"]["summary"] == "Budget crossed: team=ml in usd over 1h"


def test_the_cli_shows_costs_by_team_and_estimates_a_batch_before_it_runs(stack, tmp_path):
    stack.start_api()
    stack.start_executor(handlers=HANDLERS, slots=4)
    with stack.http() as c:
        created = c.post("/api/v1/batches", json={"jobs": _spending_batch(), "name": "cli"})
        batch_id = created.json()["batch_id"]
        wait_until(lambda: c.get(f"/api/v1/batches/{batch_id}").json()["done"] == 6, 60, "the batch to end")

    def team_rows() -> dict[str, list[str]]:
        out = cli_in(stack, tmp_path, "cost", "--since", "1h", "--by", "label:team")
        assert out.returncode == 0, out.stderr
        print(out.stdout)  # the sample in the report
        return {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:]}

    rows = wait_until(lambda: (r := team_rows()) and r.get("TOTAL", [""] * 3)[2] == "12" and r, 10, "costs")
    assert rows["ml"][1:3] == ["3", "6"] and "$0.2400" in rows["ml"]
    assert rows["ops"][1:3] == ["3", "6"] and "$0.1800" in rows["ops"]
    assert "$0.4200" in rows["TOTAL"] and "4,200" in rows["TOTAL"]

    # A workflow's two nodes each fail once, spending 0.5 usd per attempt: 2 usd over 4 attempts.
    node = {"type": "spends", "payload": {"usd": 0.5, "succeed_on": 2}, "backoff": QUICK_RETRY}
    spec = {"nodes": [{"id": "a", **node}, {"id": "b", **node, "needs": ["a"]}]}
    with stack.http() as c:
        workflow_id = c.post("/api/v1/workflows", json=spec).json()["id"]
        wait_until(lambda: c.get(f"/api/v1/workflows/{workflow_id}").json()["status"] == "succeeded", 30)

    def workflow_group() -> dict | None:
        out = cli_in(stack, tmp_path, "cost", "--since", "1h", "--by", "workflow", "--json")
        assert out.returncode == 0, out.stderr
        return next((g for g in json.loads(out.stdout)["groups"] if g["key"] == workflow_id), None)

    flow = wait_until(
        lambda: (g := workflow_group()) and g["attempts"] == 4 and g, 10, "the workflow's costs"
    )
    assert flow["jobs"] == 2 and flow["costs"] == [
        {"unit": "tokens", "kind": "llm_tokens", "amount": 400.0},  # `spends` reports 100 by default
        {"unit": "usd", "kind": "llm_tokens", "amount": 2.0},
    ]

    bad = cli_in(stack, tmp_path, "cost", "--by", "colour")
    assert bad.returncode == 3 and "by: String should match pattern" in bad.stderr, bad.stderr

    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text("x\n")
    first = cli_in(stack, tmp_path, "batch", "run", "--glob", "*.txt", "--estimate", "--", "cat", "{}")
    assert first.returncode == 0 and first.stdout == "", first
    assert "estimate for 2 shell job(s): no history of this type yet" in first.stderr, first.stderr
    ran = cli_in(stack, tmp_path, "batch", "run", "--glob", "*.txt", "--watch", "--", "cat", "{}")
    assert ran.returncode == 0, ran.stderr
    again = cli_in(stack, tmp_path, "batch", "run", "--glob", "*.txt", "--estimate", "--", "cat", "{}")
    assert "estimate for 2 shell job(s): ~2 attempts" in again.stderr, again.stderr
    assert "(from its last 2 job(s))" in again.stderr
    with stack.http() as c:  # --estimate submitted nothing: only the one batch of two ran
        assert len(c.get("/api/v1/jobs", params={"type": "shell"}).json()["jobs"]) == 2
