"""`taskyard status` (position, ETA, why), `workers`, `queues` and `doctor`: rendering without a
server, then the commands as subprocesses against the real stack."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from taskyard._render_ops import check_lines, duration, queue_row, span, waiting_lines, worker_row

pytestmark = pytest.mark.one_database(
    "sqlite", why="CLI and SDK rendering over the REST API, whose SQL the API tests run on both databases"
)

# Rendering


def test_waiting_line_with_position_eta_and_busy_slots():
    job = {
        "id": "01J", "status": "queued", "queue_position": 37, "eta_seconds": 40.2, "eta_range": [25, 60],
        "waiting_reason": {"code": "all_busy", "message": "All 3 slots are busy.",
                           "evidence": {"slots": 3, "busy": 3, "workers": 1, "position": 37}},
    }  # fmt: skip
    assert waiting_lines(job) == [
        "01J · queued · position 37 · ETA ~40s (25–60s) · 3/3 slots busy",
        "  why: All 3 slots are busy.",
    ]


def test_waiting_line_omits_unknowns_and_says_no_live_workers():
    job = {
        "id": "01J", "status": "queued", "queue_position": None, "eta_seconds": None, "eta_range": None,
        "waiting_reason": {"code": "no_workers", "message": "No worker is serving queue `etl`.\n",
                           "evidence": {}},
    }  # fmt: skip
    assert waiting_lines(job) == [
        "01J · queued · no live workers",
        "  why: No worker is serving queue `etl`.",
    ]
    job.update(queue_position=0, eta_seconds=0.0, eta_range=[0.0, 0.0])
    assert waiting_lines(job)[0] == "01J · queued · position 0 · ETA ~0.0s · no live workers"


def test_non_waiting_jobs_keep_the_status_line():
    assert waiting_lines({"id": "J", "status": "running", "waiting_reason": None}) is None
    assert waiting_lines({"id": "J", "status": "succeeded"}) is None
    assert waiting_lines({"id": "J", "status": "queued", "waiting_reason": None}) is None


def test_durations_and_spans():
    assert [duration(s) for s in (0.42, 12.4, 60.2, 125, 3900, 97200)] == [
        "0.4s", "12s", "60s", "2m05s", "1h05m", "1d03h",
    ]  # fmt: skip
    assert span(25, 60) == "25–60s" and span(0.3, 0.5) == "0.3–0.5s" and span(50, 130) == "50s–2m10s"


def test_worker_and_queue_rows_and_check_lines():
    worker = {
        "id": "w1", "state": "healthy", "host": "h", "pid": 42, "queues": ["default", "etl"], "slots": 4,
        "slots_used": 4, "jobs_done": 9, "jobs_failed": 1, "last_heartbeat_age_s": 1.234,
        "running": [{"id": f"01JAAAAAAAAAAAAAAAAAAAAAA{i}"} for i in range(4)],
    }  # fmt: skip
    assert worker_row(worker) == [
        "w1", "healthy", "h", "42", "default,etl", "4/4", "…AAAAAAA0,…AAAAAAA1,…AAAAAAA2,+1", "9", "1",
        "1.2s ago",
    ]  # fmt: skip
    rest = {**worker, "id": "rest-admin-py", "host": "rest via api-0", "via": "0a1b2c3d"}
    assert worker_row(rest)[2] == "rest via api-0 (api 0a1b2c3d)"
    queue = {
        "queue": "default", "paused": True, "depth": 12, "running": 2, "jobs_per_s_in": 1.5,
        "jobs_per_s_out": 0, "workers": ["w1"], "slots": 4, "slots_used": 2,
        "priorities": {"high": {"depth": 1, "oldest_waiting_s": 3.0},
                       "normal": {"depth": 8, "oldest_waiting_s": 75.0}, "low": {"depth": 3}},
    }  # fmt: skip
    assert queue_row(queue) == [
        "default",
        "yes",
        "12 (h1 n8 l3)",
        "2",
        "75s",
        "1.50",
        "0.00",
        "1",
        "2/4",
        "-",
        "-",
    ]
    queue["counts"] = {
        "1h": {"succeeded": 5, "failed": 1, "dead": 0},
        "24h": {"succeeded": 9, "failed": 2, "dead": 1},
    }
    assert queue_row(queue)[-2:] == ["5/1/0", "9/2/1"]
    checks = [
        {"name": "nats", "ok": True, "detail": "connected", "fix": ""},
        {"name": "workers for etl", "ok": False, "detail": "0 live", "fix": "start one"},
    ]
    assert check_lines(checks) == [
        "✓ nats             connected",
        "✗ workers for etl  0 live  → fix: start one",
    ]


def test_doctor_without_an_api_says_how_to_fix_it():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    out = subprocess.run(
        [sys.executable, "-m", "taskyard", "--url", url, "--api-key", "k", "doctor"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1, out
    assert out.stdout.startswith(f"✗ api  cannot reach {url}: ")
    assert out.stdout.rstrip().endswith("→ fix: start it (./taskw up) or set TASKYARD_URL")
    assert "Traceback" not in out.stderr


# Against the stack

CACHES = {"TASKYARD_API_QUEUE_STATE_CACHE_S": "0.1", "TASKYARD_API_WORKERS_CACHE_S": "0.1"}


def cli(stack, *args: str, key: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TASKYARD_URL": stack.api.url, "TASKYARD_API_KEY": key or stack.admin_key}
    return subprocess.run(
        [sys.executable, "-m", "taskyard", *args], env=env, capture_output=True, text=True, timeout=60
    )


def poll_cli(stack, *args: str, until, timeout: float = 10) -> subprocess.CompletedProcess:
    """Run the command until `until(result)` holds (the API's views refresh every 0.1 s)."""
    deadline = time.monotonic() + timeout
    while True:
        out = cli(stack, *args)
        if until(out) or time.monotonic() > deadline:
            return out
        time.sleep(0.1)


def submit(stack, *args: str) -> str:
    out = cli(stack, "submit", *args)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_status_explains_the_wait_and_workers_lists_the_executor(stack):
    stack.start_api(**CACHES)
    ids = [submit(stack, "sleep", "--payload", '{"seconds": 1}') for _ in range(3)]
    status = poll_cli(stack, "status", ids[-1], until=lambda o: "position 2" in o.stdout)
    assert status.returncode == 0, status.stderr
    first, why = status.stdout.splitlines()
    assert first.startswith(f"{ids[-1]} · queued · position 2") and "no live workers" in first, first
    assert why.startswith("  why: ") and "--queues default" in why, why

    worker = stack.start_executor(slots=1)
    listed = poll_cli(stack, "workers", until=lambda o: "healthy" in o.stdout)
    header, row = listed.stdout.splitlines()
    assert header.split()[:4] == ["ID", "STATE", "HOST", "PID"]
    assert row.split()[1:4:2] == ["healthy", str(worker.process.pid)], row
    [w] = json.loads(cli(stack, "workers", "--json").stdout)["workers"]
    assert w["pid"] == worker.process.pid and w["slots"] == 1

    done = cli(stack, "wait", ids[-1], "--timeout", "30")
    assert done.returncode == 0 and "succeeded" in done.stdout, done


def test_queues_list_pause_and_resume(stack):
    stack.start_api(**CACHES)
    job_id = submit(stack, "noop", "--priority", "high")
    listed = poll_cli(stack, "queues", until=lambda o: "default" in o.stdout)
    header, row = listed.stdout.splitlines()
    assert header.split()[:3] == ["QUEUE", "PAUSED", "DEPTH"]
    assert row.split()[:5] == ["default", "no", "1", "(h1", "n0"], row

    paused = cli(stack, "queues", "pause", "default")
    assert paused.returncode == 0 and "queue default paused" in paused.stdout, paused
    listed = poll_cli(stack, "queues", "list", until=lambda o: "yes" in o.stdout)
    assert listed.stdout.splitlines()[1].split()[:2] == ["default", "yes"], listed.stdout
    [q] = json.loads(cli(stack, "queues", "--json").stdout)["queues"]
    assert q["queue"] == "default" and q["paused"] is True
    status = poll_cli(stack, "status", job_id, until=lambda o: "queue paused" in o.stdout)
    assert "queue paused" in status.stdout and "why: Queue `default` is paused" in status.stdout, status

    resumed = cli(stack, "queues", "resume", "default")
    assert resumed.returncode == 0 and "queue default resumed" in resumed.stdout
    missing = cli(stack, "queues", "pause", "nope")
    assert missing.returncode == 3 and "404" in missing.stderr and missing.stderr.count("\n") == 1


def test_doctor_passes_with_a_worker_and_fails_for_an_unserved_queue(stack):
    stack.start_api(**CACHES)
    stack.start_executor()
    healthy = cli(stack, "doctor")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert healthy.stdout.startswith("✓ api ") and "✗" not in healthy.stdout

    submit(stack, "noop", "--queue", "etl")
    sick = poll_cli(stack, "doctor", until=lambda o: o.returncode == 1)
    assert sick.returncode == 1, sick.stdout + sick.stderr
    [line] = [x for x in sick.stdout.splitlines() if "workers for etl" in x]
    assert line.startswith("✗ workers for etl") and "→ fix:" in line and "--queues etl" in line

    viewer = cli(stack, "keys", "create", "viewer-1", "--role", "viewer").stdout.strip()
    refused = cli(stack, "doctor", key=viewer)
    assert refused.returncode == 3 and refused.stderr.startswith("error: 403"), refused
    assert refused.stderr.count("\n") == 1
