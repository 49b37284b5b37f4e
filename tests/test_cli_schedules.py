"""`taskyard schedules` as subprocesses against the real stack: create, list, show, trigger,
pause, resume, delete, and the exit codes of bad input and refusals."""

import json
import os
import subprocess
import sys

import pytest

from .test_cli_checkpoints import transcript

pytestmark = pytest.mark.one_database(
    "sqlite", why="CLI and SDK rendering over the REST API, whose SQL the API tests run on both databases"
)


def cli(stack, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TASKYARD_URL": stack.api.url, "TASKYARD_API_KEY": stack.admin_key}
    return subprocess.run(
        [sys.executable, "-m", "taskyard", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_schedules_from_the_cli(stack):
    stack.start_api()
    args = ["schedules", "create", "--cron", "30 2 * * *", "--tz", "Europe/Berlin", "--type", "noop",
            "--payload", '{"report": "daily"}', "--queue", "reports", "--overlap", "skip",
            "--catch-up", "none", "--name", "nightly-report"]  # fmt: skip
    out = cli(stack, *args)
    print(transcript(args, out))
    assert out.returncode == 0, out.stderr
    schedule_id = out.stdout.split()[1]
    assert (
        "next fires:" in out.stdout and out.stdout.count("T02:30:00+0") + out.stdout.count("T03:00:00") == 5
    )

    listed = cli(stack, "schedules", "list")
    print(transcript(["schedules", "list"], listed))
    assert schedule_id in listed.stdout and "cron 30 2 * * *" in listed.stdout and "active" in listed.stdout

    fired = cli(stack, "schedules", "trigger", schedule_id)
    assert fired.returncode == 0 and fired.stdout.startswith("fired: job "), fired
    skipped = cli(stack, "schedules", "trigger", schedule_id)
    assert skipped.stdout.startswith("skipped: previous job"), skipped  # overlap skip: not final yet

    shown = cli(stack, "schedules", "show", schedule_id)
    print(transcript(["schedules", "show", schedule_id], shown))
    assert "recent fires:" in shown.stdout and "created" in shown.stdout and "skipped" in shown.stdout
    assert "overlap:   skip" in shown.stdout

    assert cli(stack, "schedules", "pause", schedule_id).stdout.strip() == f"paused {schedule_id}"
    shown = json.loads(cli(stack, "schedules", "show", schedule_id, "--json").stdout)
    assert shown["paused"] is True and shown["next_fires"] == []
    assert cli(stack, "schedules", "resume", schedule_id).stdout.startswith(
        f"resumed {schedule_id}; next fire 20"
    )
    assert cli(stack, "schedules", "delete", schedule_id).returncode == 0
    gone = cli(stack, "schedules", "show", schedule_id)
    assert gone.returncode == 3 and gone.stderr.startswith("error: 404")


def test_schedule_bad_input_exit_codes(stack):
    stack.start_api()
    both = cli(stack, "schedules", "create", "--type", "noop")
    assert (both.returncode, both.stderr.strip()) == (2, "error: give --cron or --every (one of them)")
    bad_json = cli(stack, "schedules", "create", "--every", "60", "--type", "noop", "--payload", "{")
    assert bad_json.returncode == 2 and "--payload: invalid JSON" in bad_json.stderr
    bad_cron = cli(stack, "schedules", "create", "--cron", "61 * * * *", "--type", "noop")
    assert bad_cron.returncode == 3 and bad_cron.stderr.startswith("error: 422 cron:"), bad_cron.stderr
    bad_tz = cli(
        stack, "schedules", "create", "--cron", "0 3 * * *", "--tz", "Nowhere/Else", "--type", "noop"
    )
    assert bad_tz.returncode == 3 and "timezone: unknown time zone" in bad_tz.stderr, bad_tz.stderr
    assert len(bad_tz.stderr.strip().splitlines()) == 1
    assert json.loads(cli(stack, "schedules", "list", "--json").stdout) == {"schedules": []}
