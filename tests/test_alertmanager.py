"""Alert delivery with the real Alertmanager and deploy/alertmanager/alertmanager.yml.

- `amtool check-config` accepts the shipped config and `amtool config routes test` routes each kind
  of alert to the receiver the docs name;
- inhibition: while TaskyardNatsDown fires, a dead-jobs alert reaches nobody; once NATS is back it
  does;
- end to end: a real Prometheus fires TaskyardJobsQueuedNoWorkers for a queue nobody serves, the
  real Alertmanager delivers it to a webhook receiver in this process (and to the Slack route, whose
  URL also points here), then delivers its resolution once an executor serves the queue.

Alertmanager comes with Debian's `prometheus-alertmanager` package (binary `prometheus-alertmanager`,
plus `amtool`); without it these tests skip and say so. The test copy of the config keeps routes,
receivers and inhibition as shipped and changes only the receivers' URLs and the group timings
(30 s / 5 min in production), as the Prometheus test shortens the alert's `for:`.
"""

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .stack import Service, Stack, free_port
from .test_observability import Prometheus, prometheus_for, start_metrics, wait_for  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")

needs_alertmanager = pytest.mark.skipif(
    ALERTMANAGER is None or shutil.which("amtool") is None,
    reason="alertmanager/amtool not on PATH: apt-get install -y prometheus-alertmanager",
)
pytestmark = [
    needs_alertmanager,
    pytest.mark.one_database(
        "sqlite", why="alert routing and delivery; the metrics service reads NATS, not the database"
    ),
]


class Receiver:
    """An HTTP server on 127.0.0.1 recording every POSTed JSON body by path (webhook, Slack)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def webhook_alerts(self, alertname: str, status: str) -> list[dict]:
        """Alerts of `alertname` with `status` (firing, resolved) in the webhook posts so far."""
        return [
            alert
            for path, body in list(self.posts)
            if path == "/webhook"
            for alert in body["alerts"]
            if alert["labels"]["alertname"] == alertname and alert["status"] == status
        ]

    def close(self) -> None:
        self.server.shutdown()


def config_for_test(tmp: Path, receiver: Receiver) -> Path:
    """The shipped config with the receivers pointed at `receiver` and second-scale group timings."""
    config = yaml.safe_load(CONFIG.read_text())
    (tmp / "slack-api-url").write_text(receiver.url("/slack"))
    (tmp / "smtp-password").write_text("unused")
    config["global"]["smtp_auth_password_file"] = str(tmp / "smtp-password")
    # Nothing listens there: e-mail fails (and is logged); the routes under test do not use it.
    config["global"]["smtp_smarthost"] = f"127.0.0.1:{free_port()}"
    for rec in config["receivers"]:
        for hook in rec.get("webhook_configs", []):
            hook["url"] = receiver.url("/webhook")
        for slack in rec.get("slack_configs", []):
            slack["api_url_file"] = str(tmp / "slack-api-url")
    config["route"].update(group_wait="1s", group_interval="1s")
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


class Alertmanager:
    """A real Alertmanager on 127.0.0.1 (no cluster gossip)."""

    def __init__(self, tmp: Path, config: Path) -> None:
        assert ALERTMANAGER is not None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "alertmanager.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    ALERTMANAGER,
                    f"--config.file={config}",
                    f"--storage.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--cluster.listen-address=",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        def ready() -> bool:
            assert self.proc.poll() is None, f"alertmanager exited:\n{self.output()}"
            try:
                return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 30, "alertmanager to be ready")

    def post(self, *alerts: dict) -> None:
        r = httpx.post(f"{self.url}/api/v2/alerts", json=list(alerts), timeout=5)
        assert r.status_code == 200, r.text

    def alert_state(self, alertname: str) -> dict:
        found = httpx.get(f"{self.url}/api/v2/alerts", timeout=5).json()
        (alert,) = [a for a in found if a["labels"]["alertname"] == alertname]
        return alert["status"]

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()


@pytest.fixture
def alertmanager(tmp_path: Path, receiver: Receiver) -> Iterator[Alertmanager]:
    home = tmp_path / "alertmanager"
    home.mkdir()
    am = Alertmanager(home, config_for_test(home, receiver))
    yield am
    am.stop()
    print(am.output())  # shown only when the test failed


def amtool(*args: str) -> str:
    proc = subprocess.run(["amtool", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_amtool_accepts_the_shipped_config() -> None:
    out = amtool("check-config", str(CONFIG))
    assert "SUCCESS" in out and "4 inhibit rules" in out and "3 receivers" in out, out


@pytest.mark.parametrize(
    ("labels", "receiver_name"),
    [
        (["alertname=TaskyardJobsQueuedNoWorkers", "severity=critical", "queue=q"], "oncall"),
        (["alertname=TaskyardNatsDown", "severity=critical"], "oncall"),
        (
            ["alertname=TaskyardJobSuccessBudgetBurnSlow", "severity=warning", "slo=success", "queue=q"],
            "team-email",
        ),
        (["alertname=TaskyardDeadJobs", "severity=warning", "queue=q"], "webhook"),
    ],
)
def test_routes_send_each_kind_of_alert_to_its_receiver(labels: list[str], receiver_name: str) -> None:
    out = amtool("config", "routes", "test", f"--config.file={CONFIG}", *labels)
    assert out.strip() == receiver_name


def alert(name: str, ends_in_s: float = 300, **labels: str) -> dict:
    now = datetime.now(UTC)
    return {
        "labels": {"alertname": name, **labels},
        "annotations": {"summary": name},
        "startsAt": (now - timedelta(seconds=60)).isoformat(),
        "endsAt": (now + timedelta(seconds=ends_in_s)).isoformat(),
    }


def test_nats_down_holds_back_the_dead_jobs_alert(alertmanager: Alertmanager, receiver: Receiver) -> None:
    nats_down = alert("TaskyardNatsDown", severity="critical", job="taskyard-metrics")
    dead = alert("TaskyardDeadJobs", severity="warning", queue="default")
    # The cause first, as in an outage; its consequence once Alertmanager has it (and its
    # inhibitor, which learns of alerts asynchronously, has had time to see it).
    alertmanager.post(nats_down)
    wait_for(lambda: receiver.webhook_alerts("TaskyardNatsDown", "firing"), 30, "the NATS page")
    alertmanager.post(dead)
    status = wait_for(
        lambda: (s := alertmanager.alert_state("TaskyardDeadJobs"))["inhibitedBy"] and s, 30, "the inhibition"
    )
    assert status["state"] == "suppressed"
    time.sleep(3)  # three group intervals: time enough to have sent it, had it not been inhibited
    assert receiver.webhook_alerts("TaskyardDeadJobs", "firing") == []

    # NATS back (its alert resolved): the dead jobs are news again and reach the receiver.
    alertmanager.post(
        alert("TaskyardNatsDown", ends_in_s=-1, severity="critical", job="taskyard-metrics"), dead
    )
    wait_for(
        lambda: receiver.webhook_alerts("TaskyardDeadJobs", "firing"), 30, "the dead-jobs alert after NATS"
    )


def test_no_worker_alert_reaches_the_receiver_and_then_its_resolution(
    stack: Stack,
    prometheus_for: Callable[..., Prometheus],  # noqa: F811 (the fixture imported above)
    alertmanager: Alertmanager,
    receiver: Receiver,
) -> None:
    stack.start_api()
    metrics: Service = start_metrics(stack)
    prom = prometheus_for(metrics, alertmanager.port)

    submitted = time.monotonic()
    with stack.http() as c:
        ids = []
        for _ in range(3):
            r = c.post("/api/v1/jobs", json={"type": "noop", "queue": "orphan"})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])

    (firing,) = wait_for(
        lambda: receiver.webhook_alerts("TaskyardJobsQueuedNoWorkers", "firing"),
        90,
        "the no-worker alert at the webhook receiver",
    )
    print(f"no-worker alert at the receiver {time.monotonic() - submitted:.1f} s after the submit")
    assert firing["labels"]["queue"] == "orphan" and firing["labels"]["severity"] == "critical"
    assert firing["annotations"]["summary"] == "Queue orphan: jobs queued but no live worker serves it"
    assert firing["annotations"]["runbook"].startswith("`taskyard workers`")
    # Critical: the on-call route also posted it to Slack (whose URL points at this receiver).
    slack = wait_for(lambda: [b for p, b in list(receiver.posts) if p == "/slack"], 30, "the Slack message")
    assert "[FIRING] Queue orphan: jobs queued but no live worker serves it" in json.dumps(slack[0])

    # An executor for the queue runs the jobs: the alert resolves and the receiver is told.
    stack.start_executor(queues="orphan", slots=4)
    for job_id in ids:
        stack.wait_status(job_id, "succeeded")
    done = time.monotonic()
    (resolved,) = wait_for(
        lambda: receiver.webhook_alerts("TaskyardJobsQueuedNoWorkers", "resolved"),
        90,
        "the no-worker alert's resolution at the webhook receiver",
    )
    print(f"resolution at the receiver {time.monotonic() - done:.1f} s after the last job succeeded")
    assert resolved["labels"]["queue"] == "orphan"
    assert not prom.alerts("TaskyardJobsQueuedNoWorkers")
