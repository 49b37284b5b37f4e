"""CLI: worker control, pause all, the audit log, webhooks, --json everywhere, a talkative wait."""

import json
import os
import pty
import subprocess
import sys

import pytest

from tests.stack import wait_until
from tests.test_cli import cli

pytestmark = pytest.mark.one_database(
    "sqlite", why="CLI and SDK rendering over the REST API, whose SQL the API tests run on both databases"
)


def test_cli_drains_a_worker_pauses_all_and_reads_the_audit_log(stack):
    stack.start_api()
    worker = stack.start_executor()
    wait_until(lambda: json.loads(cli(stack, "workers", "--json").stdout)["workers"], 30, "a worker")
    [listed] = json.loads(cli(stack, "workers", "--json").stdout)["workers"]
    paused = cli(stack, "queues", "pause", "--all")
    assert paused.returncode == 0 and "paused" in paused.stdout, paused.stderr
    assert cli(stack, "queues", "pause").returncode == 2  # a queue or --all
    assert cli(stack, "queues", "resume", "--all").returncode == 0
    drained = cli(stack, "workers", "drain", listed["id"])
    assert drained.returncode == 0, drained.stderr
    wait_until(lambda: not worker.alive(), 30, "the drained worker to exit")
    assert cli(stack, "workers", "stop", "no-such-worker").returncode == 3

    audit = json.loads(cli(stack, "audit", "--json").stdout)["events"]
    assert [e["action"] for e in audit][:3] == ["worker.drain", "queues.resume_all", "queues.pause_all"]
    table = cli(stack, "audit", "--action", "worker.")
    assert "worker.drain" in table.stdout and listed["id"] in table.stdout

    assert json.loads(cli(stack, "whoami", "--json").stdout)["role"] == "admin"
    keys = json.loads(cli(stack, "keys", "list", "--json").stdout)["keys"]
    assert [k["name"] for k in keys] == ["admin"]
    doctor = cli(stack, "doctor", "--json")
    assert "checks" in json.loads(doctor.stdout), doctor.stdout


@pytest.mark.serial  # a bound on time: run alone, after the parallel pass
def test_cli_status_json_and_wait_shows_each_state_on_a_terminal(stack):
    stack.start_api()
    stack.start_executor()
    submitted = cli(stack, "submit", "sleep", "--payload", '{"seconds": 1.5}')
    job_id = submitted.stdout.strip()
    # stderr on a pseudo-terminal, as in an interactive shell.
    leader, follower = pty.openpty()
    env = {**os.environ, "TASKYARD_URL": stack.api.url, "TASKYARD_API_KEY": stack.admin_key}
    proc = subprocess.run(
        [sys.executable, "-m", "taskyard", "wait", job_id],
        env=env, stdout=subprocess.PIPE, stderr=follower, text=True, timeout=60,
    )  # fmt: skip
    os.close(follower)
    said = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        said += chunk
    os.close(leader)
    assert proc.returncode == 0 and "succeeded" in proc.stdout
    assert "running" in said.decode(), said
    status = json.loads(cli(stack, "status", job_id, "--json").stdout)
    assert (status["id"], status["status"], status["attempt"]) == (job_id, "succeeded", 1)
    assert "timeline" not in status
    quiet = cli(stack, "wait", job_id)  # not a terminal: only the final line
    assert quiet.stderr == "" and "succeeded" in quiet.stdout
