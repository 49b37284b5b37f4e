"""The `taskyard` CLI and the Python SDK against the real stack."""

import json
import os
import subprocess
import sys

import pytest

from taskyard import AsyncClient, Client, TaskyardError

from .stack import free_port

pytestmark = pytest.mark.one_database(
    "sqlite", why="CLI and SDK rendering over the REST API, whose SQL the API tests run on both databases"
)


def cli(stack, *args: str, key: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TASKYARD_URL": stack.api.url, "TASKYARD_API_KEY": key or stack.admin_key}
    return subprocess.run(
        [sys.executable, "-m", "taskyard", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_cli_submit_run_logs_status_and_keys(stack):
    stack.start_api()
    stack.start_executor()
    run = cli(stack, "run", "--max-attempts", "1", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert run.returncode == 7, run.stderr
    assert run.stdout.splitlines() == ["out"] and "err" in run.stderr
    job_id = run.stderr.split()[1]
    logs = cli(stack, "logs", job_id)
    assert logs.returncode == 0 and "out" in logs.stdout and "err" in logs.stderr
    status = cli(stack, "status", job_id)
    assert "dead" in status.stdout and "exit 7" in status.stdout

    submitted = cli(
        stack, "submit", "sleep", "--payload", '{"seconds": 0.2}', "--priority", "high", "--label", "t=1"
    )
    assert submitted.returncode == 0, submitted.stderr
    new_id = submitted.stdout.strip()
    assert cli(stack, "wait", new_id).returncode == 0
    listed = cli(stack, "list", "--json")
    assert {j["id"] for j in json.loads(listed.stdout)["jobs"]} >= {job_id, new_id}

    bad = cli(stack, "submit", "noop", "--payload", "{not json")
    assert bad.returncode == 2 and "--payload" in bad.stderr
    refused = cli(stack, "submit", "shell", "--payload", "{}")
    assert (
        refused.returncode == 3 and "payload.command" in refused.stderr and "Traceback" not in refused.stderr
    )

    created = cli(stack, "keys", "create", "viewer-1", "--role", "viewer")
    assert created.returncode == 0
    viewer_key = created.stdout.strip().split()[-1]
    assert cli(stack, "submit", "noop", key=viewer_key).returncode == 3


def test_cli_unreachable_api_is_exit_4_with_one_line(stack):
    stack.start_api()
    stack.api.terminate()
    out = cli(stack, "list")
    assert out.returncode == 4 and len(out.stderr.strip().splitlines()) == 1


async def test_sdk_sync_and_async(stack):
    stack.start_api()
    stack.start_executor()
    with Client(stack.api.url, stack.admin_key) as client:
        job = client.submit("noop", {"n": 1}, labels={"via": "sdk"})
        done = client.wait(job["id"], timeout=30)
        assert done["status"] == "succeeded"
        try:
            client.submit("noop", priority="urgent")
        except TaskyardError as err:
            assert err.status_code == 422 and "priority" in err.detail
        else:
            raise AssertionError("bad priority accepted")
    async with AsyncClient(stack.api.url, stack.admin_key) as client:
        jobs = await client.submit_batch([{"type": "noop"}, {"type": "noop"}])
        finals = [await client.wait(j["id"], timeout=30) for j in jobs]
        assert {j["status"] for j in finals} == {"succeeded"}


def test_cli_unreachable_exits_4_with_one_line_and_no_traceback():
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.run(
        [sys.executable, "-m", "taskyard", "--url", url, "--api-key", "k", "status", "01J"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 4
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"error: cannot reach Taskyard API at {url}: ")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
