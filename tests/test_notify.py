"""Job webhooks against a real receiver (the example in docs/): signed, retried, delivered once."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from taskyard_api.notify import signature
from tests.stack import wait_until

from .stack import free_port

ROOT = Path(__file__).resolve().parents[1]
SECRET = "whsec-test-0123456789abcdef"


class Receiver:
    """docs/webhook_receiver.py as its own process."""

    def __init__(self, tmp: Path, port: int, secret: str = SECRET) -> None:
        self.port, self.log = port, tmp / f"deliveries-{port}.jsonl"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "docs" / "webhook_receiver.py"),
                "--port",
                str(port),
                "--log",
                str(self.log),
            ],
            env={**os.environ, "TASKYARD_WEBHOOK_SECRET": secret},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._listening, 20, "the receiver to listen")

    def _listening(self) -> bool:
        try:
            httpx.get(f"http://127.0.0.1:{self.port}/", timeout=1)
            return True
        except httpx.HTTPError:
            return False

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def receiver_port():
    return free_port()


def test_the_receiver_example_refuses_a_wrong_secret_and_an_old_timestamp(tmp_path, receiver_port):
    receiver = Receiver(tmp_path, receiver_port)
    try:
        body = json.dumps({"event": "job.failed", "job": {"id": "J"}, "delivery": "d1"}).encode()
        url = f"http://127.0.0.1:{receiver_port}/"

        def post(secret: str, t: int) -> httpx.Response:
            headers = {"Taskyard-Signature": signature(secret.encode(), t, body), "Taskyard-Delivery": "d1"}
            return httpx.post(url, content=body, headers=headers)

        now = int(time.time())
        wrong = post("not-the-secret", now)
        assert wrong.status_code == 401 and "signature" in wrong.text
        old = post(SECRET, now - 600)
        assert old.status_code == 401 and "timestamp" in old.text
        altered = httpx.post(
            url, content=body + b" ", headers={"Taskyard-Signature": signature(SECRET.encode(), now, body)}
        )
        assert altered.status_code == 401
        assert receiver.events() == []
        assert post(SECRET, now).status_code == 200
        assert [e["delivery"] for e in receiver.events()] == ["d1"]
    finally:
        receiver.stop()


def test_a_receiver_down_for_30_s_gets_the_notification_once_it_is_back(stack, tmp_path, receiver_port):
    env = {"TASKYARD_API_WEBHOOK_SECRET": SECRET, "TASKYARD_API_NOTIFY_BACKOFF_MAX_S": "4"}
    stack.start_api(**env)
    stack.start_api(**env)  # two api processes: each delivery still goes out once
    stack.start_executor(handlers="handlers_for_tests")
    url = f"http://127.0.0.1:{receiver_port}/hook"
    with stack.http() as c:
        failing = c.post(
            "/api/v1/jobs",
            json={
                "type": "always_fails",
                "max_attempts": 1,
                "notify": {"url": url, "on": ["failed", "dead"]},
            },
        ).json()
        quiet = c.post(
            "/api/v1/jobs", json={"type": "noop", "notify": {"url": url}}
        ).json()  # failed/dead only
        stack.wait_status(failing["id"], {"failed", "dead"})
        stack.wait_status(quiet["id"], "succeeded")
        time.sleep(30)  # the receiver is down all this time
        down = c.get(f"/api/v1/jobs/{failing['id']}/notifications").json()
        [pending] = down["notifications"]
        assert pending["status"] == "pending" and pending["attempts"] >= 3, pending
        assert all(d["status_code"] is None and "Connect" in d["error"] for d in pending["deliveries"])
        receiver = Receiver(tmp_path, receiver_port)
        try:

            def delivered() -> dict:
                return c.get(f"/api/v1/jobs/{failing['id']}/notifications").json()["notifications"][0]

            wait_until(
                lambda: delivered()["status"] == "delivered", 30, "the delivery once the receiver is back"
            )
            last = delivered()["deliveries"][-1]
            assert last["status_code"] == 200 and last["error"] is None
            [event] = receiver.events()
            assert event["job"]["id"] == failing["id"] and event["event"] in ("job.failed", "job.dead")
            assert c.get(f"/api/v1/jobs/{quiet['id']}/notifications").json()["notifications"] == []

            # Many at once through two apis: every delivery claimed and sent by exactly one of them.
            jobs = c.post(
                "/api/v1/jobs:batch",
                json={"jobs": [{"type": "noop", "notify": {"url": url, "on": ["succeeded"]}}] * 20},
            ).json()["jobs"]

            def all_delivered() -> list[dict]:
                rows = [c.get(f"/api/v1/jobs/{j['id']}/notifications").json()["notifications"] for j in jobs]
                return [r[0] for r in rows if r and r[0]["status"] == "delivered"]

            wait_until(lambda: len(all_delivered()) == 20, 60, "20 deliveries")
            assert all(r["attempts"] == 1 and len(r["deliveries"]) == 1 for r in all_delivered())
            assert len(receiver.events()) == 21
        finally:
            receiver.stop()


@pytest.mark.one_database("sqlite", why="a settings check at submit, before any SQL")
def test_notify_needs_a_signing_secret(stack):
    stack.start_api()
    with stack.http() as c:
        r = c.post("/api/v1/jobs", json={"type": "noop", "notify": {"url": "http://127.0.0.1:9/"}})
        assert r.status_code == 422 and r.json()["detail"].startswith("notify:"), r.text
        bad = c.post("/api/v1/jobs", json={"type": "noop", "notify": {"url": "ftp://x", "on": ["failed"]}})
        assert bad.status_code == 422 and "notify.url" in bad.json()["detail"]


def test_a_batch_and_a_workflow_notify_each_member(stack, tmp_path, receiver_port):
    stack.start_api(TASKYARD_API_WEBHOOK_SECRET=SECRET)
    stack.start_executor()
    url = f"http://127.0.0.1:{receiver_port}/hook"
    receiver = Receiver(tmp_path, receiver_port)
    try:
        with stack.http() as c:
            notify = {"url": url, "on": ["succeeded"]}
            batch = c.post("/api/v1/batches", json={"jobs": [{"type": "noop"}] * 3, "notify": notify})
            assert batch.status_code == 201, batch.text
            flow = c.post(
                "/api/v1/workflows",
                json={"nodes": [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop", "needs": ["a"]}],
                      "notify": notify},
            )  # fmt: skip
            assert flow.status_code == 201, flow.text
        wait_until(lambda: len(receiver.events()) == 5, 60, "a delivery per member")
        members = {j["id"] for j in batch.json()["jobs"]} | {n["job_id"] for n in flow.json()["nodes"]}
        assert {e["job"]["id"] for e in receiver.events()} == members
    finally:
        receiver.stop()


def test_an_outcome_the_api_decides_is_notified_too(stack, tmp_path, receiver_port):
    stack.start_api(TASKYARD_API_WEBHOOK_SECRET=SECRET)
    stack.start_executor(handlers="handlers_for_tests")
    url = f"http://127.0.0.1:{receiver_port}/hook"
    receiver = Receiver(tmp_path, receiver_port)
    try:
        with stack.http() as c:
            job = c.post(
                "/api/v1/jobs",
                json={"type": "deploy", "payload": {"counter_file": str(tmp_path / "n")},
                      "notify": {"url": url, "on": ["failed"]}},
            ).json()  # fmt: skip
            ck = stack.wait_status(job["id"], "waiting")["checkpoint"]
            assert c.post(f"/api/v1/checkpoints/{ck['id']}/reject", json={"reason": "no"}).status_code == 200
            stack.wait_status(job["id"], "failed")
        wait_until(lambda: len(receiver.events()) == 1, 30, "the rejection's webhook")
        [event] = receiver.events()
        assert (event["job"]["id"], event["event"]) == (job["id"], "job.failed")
    finally:
        receiver.stop()
