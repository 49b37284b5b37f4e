"""Grafana dashboards and a real Prometheus against the metrics service.

- every PromQL expression of the dashboards passes `promtool check rules` and uses only metrics that
  some Taskyard process exports (or that our recording rules produce);
- a real `prometheus` scrapes the metrics service during a real run: the finished-job count matches,
  and TaskyardJobsQueuedNoWorkers fires for a queue nobody serves;
- the metrics service counts a killed worker as lost and a drained one not.

promtool/prometheus come with Debian's `prometheus` package; without them those tests skip.
"""

import asyncio
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from taskyard_common.schemas import Heartbeat

from .stack import Service, Stack, free_port

pytestmark = pytest.mark.one_database(
    "sqlite", why="the metrics service and Prometheus read NATS, not the database"
)

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
RULES = ROOT / "deploy" / "prometheus" / "rules" / "taskyard.rules.yml"
DATASOURCE_UID = "taskyard-prometheus"
DATASOURCE_VARIABLE = {"type": "prometheus", "uid": "${datasource}"}

# Series Prometheus makes itself, not any exporter.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS", "ALERTS_FOR_STATE"}
# Grafana's interval variables, resolved as Grafana would with a 15 s scrape interval.
GRAFANA_INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not on PATH: install Debian's prometheus package (apt-get install -y prometheus)",
)
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus not on PATH: install Debian's prometheus package (apt-get install -y prometheus)",
)


# ---------------------------------------------------------------------------------------------
# Dashboards: reading them, their queries, the metric names in a query


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def all_panels(panels: list[dict]) -> Iterator[dict]:
    """Every panel, rows' nested (collapsed) panels included."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_queries(dashboard: dict) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target."""
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"{dashboard['uid']} / {panel['title']} / {target['refId']}", target["expr"]


def variable_metrics(dashboard: dict) -> Iterator[tuple[str, str]]:
    """(variable, metric) for template variables of the form label_values(metric, label)."""
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        m = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*\w+\s*\)\s*", query)
        if var.get("type") == "query":
            assert m, f"{dashboard['uid']}: variable {var['name']} has an unexpected query {query!r}"
            yield var["name"], m.group(1)


def resolve(expr: str) -> str:
    """A dashboard expression as Prometheus would get it: interval variables and `$var`s replaced."""
    for var, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(var, value)
    # Template variables are only used inside regex matchers (`queue=~"$queue"`): any regex fits.
    expr = re.sub(r'=~"\$\{?\w+\}?"', '=~".*"', expr)
    assert "$" not in expr, f"unresolved variable in {expr!r}"
    return expr


PROMQL_WORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords and label names left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        name, call = m.group(1), m.group(2)
        if not call and name.lower() not in PROMQL_WORDS:
            names.add(name)
    return names


def test_metric_names_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (queue, le) (rate(taskyard_job_queue_wait_seconds_bucket{queue=~"a|b"}[5m])))'
        " / on (queue) group_left queue:taskyard_queue_depth:sum offset 1m > bool 2e3"
        ' or count(up{job="x"} == 0) or vector(0)'
    )
    assert metric_names(expr) == {
        "taskyard_job_queue_wait_seconds_bucket",
        "queue:taskyard_queue_depth:sum",
        "up",
    }


# ---------------------------------------------------------------------------------------------
# What Taskyard exports, listed from the code


def family_samples(registry: CollectorRegistry) -> set[str]:
    """The sample names a registry exposes, also for labelled metrics that have no child yet."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
    }
    names = set()
    for family in registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(s.name for s in family.samples)
    return names


def exported_metrics() -> set[str]:
    """Every metric name served on /metrics by the metrics service, the api, the ui and executors."""
    from taskyard_api.http_metrics import REGISTRY as API_REGISTRY
    from taskyard_executor.__main__ import health_app
    from taskyard_metrics.poller import QueueState, Snapshot, SnapshotCollector, WorkerTotals
    from taskyard_metrics.registry import Metrics
    from taskyard_ui.telemetry import REGISTRY as UI_REGISTRY

    metrics = Metrics()
    collector = SnapshotCollector()
    # The queue and worker gauges exist once a poll has happened.
    collector.snapshot = Snapshot(
        queues=(QueueState("default", "normal", 1, 0, 0, 0, 0.0),),
        workers=WorkerTotals(1, 0, 0, 4, 1, {"default": 1}),
    )
    metrics.registry.register(collector)
    names = family_samples(metrics.registry) | family_samples(API_REGISTRY) | family_samples(UI_REGISTRY)

    # The executor builds its registry inside its health app; read it through the app's /metrics route.
    worker = SimpleNamespace(
        settings=SimpleNamespace(slots=2),
        running={},
        finishing={},
        done=0,
        id="w",
        starts_coalesced=0,
        starts_alone=0,
    )
    (route,) = [r for r in health_app(worker).routes if getattr(r, "path", None) == "/metrics"]
    body = asyncio.run(route.endpoint(None)).body.decode()
    names |= {s.name for fam in text_string_to_metric_families(body) for s in fam.samples}
    return names


def recorded_metrics() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


# ---------------------------------------------------------------------------------------------
# Dashboard tests


def test_dashboards_and_provisioning_fit_together() -> None:
    assert {p.stem for p in DASHBOARDS} == {
        "taskyard-overview",
        "taskyard-queue",
        "taskyard-workers",
        "taskyard-slo",
        "taskyard-cost",
    }
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["uid"] == DATASOURCE_UID
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "taskyard.yml").read_text())
    assert providers["providers"][0]["type"] == "file"

    uids = set()
    for path in DASHBOARDS:
        board = load(path)
        assert board["uid"] == path.stem and board["uid"] not in uids
        uids.add(board["uid"])
        ids = [p["id"] for p in all_panels(board["panels"])]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in all_panels(board["panels"]):
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, f"{path.name}: {panel['title']} is wider than the grid"
            assert panel["title"]
            if panel["type"] == "row":
                continue
            # The dashboard's own data-source variable, never a fixed uid: importable into any Grafana.
            assert panel["datasource"] == DATASOURCE_VARIABLE, f"{path.name}: {panel['title']}"
            assert panel["targets"], f"{path.name}: {panel['title']} has no query"
            for target in panel["targets"]:
                assert target["datasource"] == DATASOURCE_VARIABLE, f"{path.name}: {panel['title']}"
                assert target["expr"].strip()
            if panel["type"] == "heatmap":
                assert panel["fieldConfig"]["defaults"]["unit"] == "s", panel["title"]
        variables = board["templating"]["list"]
        assert variables[0] | {"current": {}} == {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "refresh": 1,
            "regex": "",
            "options": [],
        }
        for var in variables[1:]:
            assert var["datasource"] == DATASOURCE_VARIABLE, var["name"]
        assert DATASOURCE_UID not in path.read_text(), f"{path.name} names the provisioned uid"
    for name in ("taskyard-queue", "taskyard-slo"):
        board = load(GRAFANA / "dashboards" / f"{name}.json")
        (queue,) = [v for v in board["templating"]["list"] if v["name"] == "queue"]
        assert queue["includeAll"] and queue["allValue"] == ".*", name
        assert all('queue=~"$queue"' in expr for _, expr in dashboard_queries(board)), name
    overview = load(GRAFANA / "dashboards" / "taskyard-overview.json")
    approvals = [p for p in all_panels(overview["panels"]) if "approvals" in p["title"].lower()]
    assert any(p["type"] == "gauge" for p in approvals)
    assert any("taskyard_checkpoints_pending" in t["expr"] for p in approvals for t in p.get("targets", []))


def test_the_overview_shows_gate_release_moves_and_batches() -> None:
    overview = load(GRAFANA / "dashboards" / "taskyard-overview.json")
    exprs = " ".join(expr for _, expr in dashboard_queries(overview))
    for metric in (
        "taskyard_api_gate_release_seconds_bucket",
        "taskyard_api_gate_moves_total",
        "taskyard_api_batches_completed_total",
        "taskyard_api_batch_duration_seconds_bucket",
    ):
        assert metric in exprs, metric


@needs_promtool
def test_every_dashboard_query_passes_promtool(tmp_path: Path) -> None:
    rules = [
        {"record": f"taskyard_dashboard_check_{i}", "expr": resolve(expr), "labels": {"panel": where}}
        for i, (where, expr) in enumerate(q for board in DASHBOARDS for q in dashboard_queries(load(board)))
    ]
    assert len(rules) > 30
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


def test_every_metric_used_is_exported() -> None:
    exported = exported_metrics()
    known = exported | recorded_metrics() | PROMETHEUS_SERIES
    # The queue and worker figures the dashboards and alerts are built on (a sanity check of the listing).
    assert {"taskyard_queue_depth", "taskyard_queue_workers", "taskyard_workers_lost_total"} <= exported
    assert {
        "taskyard_api_requests_total",
        "taskyard_executor_slots_used",
        "taskyard_ui_requests_total",
    } <= exported

    missing = []
    for board in DASHBOARDS:
        dashboard = load(board)
        for where, expr in dashboard_queries(dashboard):
            names = metric_names(resolve(expr))
            assert names, f"{where}: no metric found in {expr!r}"
            missing += [f"{where}: {name}" for name in sorted(names - known)]
        missing += [f"{board.stem} / ${var}: {m}" for var, m in variable_metrics(dashboard) if m not in known]
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (rule for group in groups for rule in group["rules"]):
        where = f"rule {rule.get('record') or rule.get('alert')}"
        missing += [f"{where}: {name}" for name in sorted(metric_names(rule["expr"]) - known)]
    assert not missing, "metrics nobody exports:\n" + "\n".join(missing)


def test_every_recording_rule_is_used_by_a_dashboard_or_an_alert() -> None:
    used: set[str] = set()
    for board in DASHBOARDS:
        for _, expr in dashboard_queries(load(board)):
            used |= metric_names(resolve(expr))
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (rule for group in groups for rule in group["rules"]):
        used |= metric_names(rule["expr"])
    assert recorded_metrics() - used == set()


# ---------------------------------------------------------------------------------------------
# The per-queue worker gauge (unit)


def test_queue_workers_counts_healthy_workers_per_queue_and_zero_for_unserved_queues() -> None:
    from taskyard_metrics.poller import QueueState, Snapshot, SnapshotCollector, count_workers, split_live

    now = time.time()

    def beat(worker_id: str, queues: list[str], age: float = 0.0, state: str = "running") -> Heartbeat:
        return Heartbeat(
            id=worker_id,
            host="h",
            pid=1,
            version="0",
            queues=queues,
            slots=2,
            started_at=now - 100,
            at=now - age,
            state=state,
        )

    beats = [
        beat("a", ["default", "batch"]),
        beat("b", ["default"]),
        beat("c", ["batch"], state="draining"),  # finishing up: takes no new jobs
        beat("d", ["reports"], age=60),  # stale
    ]
    totals = count_workers(beats, healthy_within_s=10, now=now)
    assert dict(totals.per_queue) == {"default": 2, "batch": 1}
    live, stale = split_live(beats, healthy_within_s=10, now=now)
    assert live == {"a": ("default", "batch"), "b": ("default",), "c": ("batch",)}
    assert stale == {"d"}

    queues = tuple(QueueState(q, "normal", 1, 0, 0, 0, 0.0) for q in ("default", "orphan"))
    collector = SnapshotCollector()
    collector.snapshot = Snapshot(queues=queues, workers=totals)
    (family,) = [f for f in collector.collect() if f.name == "taskyard_queue_workers"]
    assert {s.labels["queue"]: s.value for s in family.samples} == {"batch": 1, "default": 2, "orphan": 0}


# ---------------------------------------------------------------------------------------------
# A real Prometheus against a real run


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except httpx.HTTPError as err:
            last = err
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def scrape(svc: Service) -> dict[tuple[str, frozenset], float]:
    body = httpx.get(f"{svc.url}/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
    }


def start_metrics(stack: Stack, poll_s: str = "0.5") -> Service:
    svc = stack.spawn(
        "metrics", "taskyard_metrics", [], "TASKYARD_METRICS_PORT", TASKYARD_METRICS_POLL_INTERVAL_S=poll_s
    )
    return stack.wait_ready(svc)


def rules_with_short_for(tmp_path: Path) -> Path:
    """The real rules with the no-worker alert's `for:` cut to 2 s, so the test need not wait 2 minutes."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "TaskyardJobsQueuedNoWorkers":
                rule["for"] = "2s"
    path = tmp_path / "taskyard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    return path


class Prometheus:
    """A `prometheus` process on 127.0.0.1 scraping one target every second."""

    def __init__(
        self, tmp: Path, target_port: int, rules: Path, alertmanager_port: int | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {
                    "job_name": "taskyard-metrics",
                    "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
                }
            ],
        }
        if alertmanager_port is not None:
            targets = [f"127.0.0.1:{alertmanager_port}"]
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": targets}]}]}
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = tmp / "prometheus.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"prometheus exited:\n{self.output()}"
            try:
                return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, timeout, "prometheus to be ready")

    def query(self, promql: str) -> list[dict]:
        resp = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5)
        body = resp.json()
        assert body["status"] == "success", f"{promql}: {body}"
        return body["data"]["result"]

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def alerts(self, name: str, state: str = "firing") -> list[dict]:
        found = httpx.get(f"{self.url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        return [a for a in found if a["labels"]["alertname"] == name and a["state"] == state]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """Starts Prometheus against a service on demand; always stopped at the end of the test."""
    started: list[Prometheus] = []

    def start(svc: Service, alertmanager_port: int | None = None) -> Prometheus:
        home = tmp_path / "prometheus"
        home.mkdir()
        prom = Prometheus(home, svc.port, rules_with_short_for(home), alertmanager_port)
        started.append(prom)
        prom.wait_ready()
        return prom

    yield start
    for prom in started:
        prom.stop()
        print(prom.output())  # shown only when the test failed


@needs_prometheus
def test_prometheus_scrapes_a_real_run_and_fires_the_no_worker_alert(
    stack: Stack, prometheus_for: Callable[[Service], Prometheus]
) -> None:
    stack.start_api()
    stack.start_executor(queues="default", slots=4)
    metrics = start_metrics(stack)
    prom = prometheus_for(metrics)

    n = 6
    with stack.http() as c:
        ids = []
        for i in range(n):
            r = c.post("/api/v1/jobs", json={"type": "noop", "payload": {"i": i}})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
    for job_id in ids:
        stack.wait_status(job_id, "succeeded")

    finished = 'sum(taskyard_jobs_finished_total{status="succeeded"})'
    wait_for(lambda: prom.scalar(finished) == n, 30, f"{finished} == {n} in Prometheus")
    assert prom.scalar('sum(taskyard_jobs_submitted_total{queue="default"})') == n
    assert prom.scalar('sum(taskyard_job_queue_wait_seconds_count{queue="default"})') == n
    assert prom.scalar('taskyard_queue_workers{queue="default"}') == 1
    assert not prom.alerts("TaskyardJobsQueuedNoWorkers", "pending")
    assert not prom.alerts("TaskyardJobsQueuedNoWorkers", "firing")

    # Every dashboard query runs on a real Prometheus (on real data) without an error.
    for board in DASHBOARDS:
        for where, expr in dashboard_queries(load(board)):
            try:
                prom.query(resolve(expr))
            except AssertionError as err:
                raise AssertionError(f"{where}: {err}") from err

    # Jobs for a queue no executor serves stay queued: the alert fires for that queue only.
    with stack.http() as c:
        for _ in range(3):
            r = c.post("/api/v1/jobs", json={"type": "noop", "queue": "orphan"})
            assert r.status_code == 201, r.text
    firing = wait_for(
        lambda: prom.alerts("TaskyardJobsQueuedNoWorkers"), 60, "TaskyardJobsQueuedNoWorkers to fire"
    )
    assert [a["labels"]["queue"] for a in firing] == ["orphan"]
    (alert,) = firing
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["summary"] == "Queue orphan: jobs queued but no live worker serves it"
    assert alert["annotations"]["description"].startswith("3 job(s) are waiting in queue orphan")
    assert prom.scalar('sum(taskyard_queue_depth{queue="orphan"})') == 3


def test_metrics_service_counts_killed_workers_as_lost_and_drained_ones_not(stack: Stack) -> None:
    metrics = start_metrics(stack, poll_s="0.25")

    def value(name: str, **labels: str) -> float | None:
        return scrape(metrics).get((name, frozenset(labels.items())))

    drained = stack.start_executor(queues="lossq", slots=1)
    wait_for(lambda: value("taskyard_queue_workers", queue="lossq") == 1, 20, "the worker to be counted")
    # Exported at 0 as soon as a live worker serves the queue, so increase() sees the first loss.
    assert value("taskyard_workers_lost_total", queue="lossq") == 0
    assert drained.terminate() == 0  # SIGTERM: drains and deletes its heartbeat key
    wait_for(lambda: value("taskyard_queue_workers", queue="lossq") == 0, 20, "the drained worker to leave")
    # Past the heartbeat TTL (3 × 1 s): a deleted key must not count as an expired one.
    time.sleep(4)
    assert value("taskyard_workers_lost_total", queue="lossq") == 0

    killed = stack.start_executor(queues="lossq", slots=1)
    wait_for(lambda: value("taskyard_queue_workers", queue="lossq") == 1, 20, "the second worker")
    killed.kill9()
    wait_for(
        lambda: value("taskyard_workers_lost_total", queue="lossq") == 1,
        20,
        "the killed worker to count as lost",
    )
    assert value("taskyard_queue_workers", queue="lossq") == 0


def test_a_cancelled_running_job_counts_once_with_its_run_time(stack: Stack) -> None:
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests", slots=1)
    metrics = start_metrics(stack)

    def value(name: str, **labels: str) -> float | None:
        return scrape(metrics).get((name, frozenset(labels.items())))

    with stack.http() as c:
        job = c.post("/api/v1/jobs", json={"type": "async_sleep", "payload": {"seconds": 60}}).json()
        stack.wait_status(job["id"], "running")
        assert c.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 200

        # Both the API (the request) and the worker (the attempt stopped) publish `cancelled`.
        def both_cancelled() -> list | None:
            timeline = c.get(f"/api/v1/jobs/{job['id']}").json()["timeline"]
            return timeline if [e["type"] for e in timeline].count("cancelled") == 2 else None

        timeline = wait_for(both_cancelled, 20, "both cancelled events on the timeline")
    wait_for(
        lambda: value("taskyard_events_processed_total") == len(timeline),
        20,
        f"the metrics service to consume all {len(timeline)} events",
    )
    labels = {"queue": "default", "type": "async_sleep"}
    assert value("taskyard_jobs_finished_total", **labels, status="cancelled") == 1
    assert value("taskyard_job_run_duration_seconds_count", queue="default", priority="normal") == 1
