"""Terminal sessions as a person sees them, on the real stack (nats-server, database, api,
executors, the `taskyard` CLI, the bash + curl worker of docs/rest-workers.md): a conversation
followed with `taskyard chat` across two executor kills, and the bash worker claiming, asking,
completing, killed mid-job and its job finished by a Python executor.

Each test checks what the session shows. With TASKYARD_TRANSCRIPTS=DIR set it also writes the
session to DIR (relative to the repository) as chat.txt and bash-worker.txt: the transcripts in
docs/transcripts/ are these files, recorded by `TASKYARD_TRANSCRIPTS=docs/transcripts pytest
tests/test_transcripts.py`.
"""

import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .stack import ROOT, Stack, wait_until
from .test_rest_workers import rest_worker, start_bash_worker

pytestmark = pytest.mark.one_database("sqlite", why="CLI and worker sessions over the REST API")
OUT = os.environ.get("TASKYARD_TRANSCRIPTS")
JQ_TIMELINE = "[.timeline[] | [.type, .attempt, .worker_id]]"


class Session:
    """A terminal transcript: commands with their output, and lines from long-running programs,
    in the order they happened. The test's temp dir is shown as $TMP."""

    def __init__(self, stack: Stack, tmp: Path) -> None:
        self.stack, self.tmp, self.lines = stack, str(tmp), []
        self.env = {**os.environ, "TASKYARD_URL": stack.api.url, "TASKYARD_API_KEY": stack.admin_key}

    def note(self, line: str) -> None:
        self.lines.append(line.replace(self.tmp, "$TMP"))

    def cli(self, *args: str, jq: str | None = None) -> subprocess.CompletedProcess:
        """`taskyard ARGS` (piped through `jq JQ`), shown and returned."""
        cmd = shlex.join([sys.executable, "-m", "taskyard", *args])
        shown = shlex.join(["taskyard", *args])
        if jq is not None:
            cmd += f" | jq -c {shlex.quote(jq)}"
            shown += f" | jq -c {shlex.quote(jq)}"
        out = subprocess.run(cmd, shell=True, env=self.env, capture_output=True, text=True, timeout=60)
        self.note(f"$ {shown}")
        for line in (out.stdout + out.stderr).splitlines():
            self.note(line)
        if out.returncode:
            self.note(f"[exit {out.returncode}]")
        return out

    def write(self, name: str, header: str) -> None:
        if OUT:
            target = Path(OUT) if Path(OUT).is_absolute() else ROOT / OUT
            target.mkdir(parents=True, exist_ok=True)
            (target / name).write_text(header + "\n\n" + "\n".join(self.lines) + "\n")


def _follow(proc: subprocess.Popen, lines: queue.Queue) -> None:
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.put(line.rstrip("\n"))
    lines.put(None)


def test_a_conversation_followed_on_a_terminal_across_two_executor_kills(stack, tmp_path):
    stack.extra_env["TASKYARD_NATS_ACK_WAIT_S"] = "2"
    stack.start_api()
    first = stack.start_executor(handlers="handlers_for_tests", slots=1)
    s = Session(stack, tmp_path)
    linger = tmp_path / "lingered"
    payload = {
        "answers_file": str(tmp_path / "answers.txt"),
        "linger_file": str(linger),
        "linger_at": 2,  # its first run to get the 2nd answer holds there (to be killed)
    }
    job_id = s.cli("submit", "converse", "--payload", json.dumps(payload)).stdout.strip()
    args = ["chat", job_id, "--interval", "0.2"]
    s.note(f"$ {shlex.join(['taskyard', *args])}")
    chat = subprocess.Popen(
        [sys.executable, "-m", "taskyard", *args],
        env=s.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_follow, args=(chat, lines), daemon=True).start()

    def until(text: str, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            assert line is not None, f"chat ended before {text!r}"
            s.note(line)
            if text in line:
                return
        raise TimeoutError(f"no {text!r} from taskyard chat")

    def type_(text: str) -> None:
        s.note(text)  # what the person typed, as the terminal echoes it
        chat.stdin.write(text + "\n")  # type: ignore[union-attr]
        chat.stdin.flush()  # type: ignore[union-attr]

    def elsewhere(command: str) -> None:
        s.note(f"    [another terminal] $ {command}")

    executor = "python -m taskyard_executor --queues default --slots 1 -A handlers_for_tests &"
    try:
        until("waiting for an answer to 'q1'")
        type_("httpx")
        until("waiting for an answer to 'q2'")
        elsewhere(f"kill -9 {first.process.pid}   # the executor, while the job waits on q2")
        first.kill9()
        type_("0.28")
        until("admin (person) answers: 0.28")
        second = stack.start_executor(handlers="handlers_for_tests", slots=1)
        elsewhere(executor)
        until("Noted answer 2: 0.28")
        wait_until(linger.exists, 30, "the job holding after the 2nd answer")
        elsewhere(f"kill -9 {second.process.pid}   # the new executor, mid-run, before the job asks q3")
        second.kill9()
        stack.start_executor(handlers="handlers_for_tests")
        elsewhere(executor.replace("--slots 1", "--slots 4"))
        until("waiting for an answer to 'q3'")
        type_("yes")
        until("the conversation is closed")
        assert chat.wait(timeout=30) == 0
    finally:
        chat.kill()
    thread = s.cli("chat", job_id, "--no-follow")
    said = [line.split(" ", 1)[1] for line in thread.stdout.splitlines()]
    assert said == [
        "converse (job): Starting: I will ask three things.",
        "converse (job) asks: Which library?",
        "admin (person) answers: httpx",
        "converse (job): Noted answer 1: httpx",
        "converse (job) asks: Which version?",
        "admin (person) answers: 0.28",
        "converse (job): Noted answer 2: 0.28",
        "converse (job) asks: Ship today?",
        "admin (person) answers: yes",
        "converse (job): Noted answer 3: yes",
    ]
    assert (tmp_path / "answers.txt").read_text().splitlines() == ["q1=httpx", "q2=0.28", "q3=yes"]
    got = s.cli("get", job_id, jq=f".status, .result, {JQ_TIMELINE}")
    status, result, timeline = got.stdout.splitlines()
    assert (json.loads(status), json.loads(result)) == ("succeeded", {"answers": ["httpx", "0.28", "yes"]})
    kinds = [row[0] for row in json.loads(timeline)]
    assert kinds.count("started") == 5 and kinds.count("worker_lost") == 1, kinds
    s.write(
        "chat.txt",
        "# taskyard chat: a job asks three follow-up questions; its executor is killed (-9) while it\n"
        "# waits on the 2nd, and the next one mid-run after the 2nd answer. Recorded by\n"
        "# tests/test_transcripts.py on the real stack; lines after `> waiting` are what was typed.",
    )


def test_the_bash_worker_on_a_terminal_claims_asks_completes_and_hands_back_when_killed(stack, tmp_path):
    stack.start_api()
    types = '["agent.review", "echo"]'
    bash = start_bash_worker(stack, tmp_path, "bash1", "agents", lease_s=5, types=types)
    s = Session(stack, tmp_path)
    s.note(f"$ QUEUE=agents WORKER=bash1 TYPES='{types}' LEASE_S=5 bash rest-worker.sh &   # pid {bash.pid}")
    try:
        with stack.http() as c:
            wait_until(lambda: rest_worker(c, "bash1") is not None, 15, "the bash worker's first claim")
            payload = {"question": "Which HTTP library?", "choices": ["httpx", "requests"], "work_s": 3}
            payload["cost_usd"] = 0.02
            job = s.cli("submit", "agent.review", "--queue", "agents", "--payload", json.dumps(payload))
            job_id = job.stdout.strip()
            wait_until(lambda: rest_worker(c, "bash1")["running"], 15, "the job on the worker's heartbeat")
            workers = s.cli("workers")
            row = next(line for line in workers.stdout.splitlines() if line.startswith("rest-admin-bash1"))
            assert "healthy" in row and "1/1" in row, workers.stdout
            s.cli("status", job_id)

            def pending() -> list:
                got = c.get("/api/v1/checkpoints", params={"status": "pending", "job_id": job_id})
                return got.json()["checkpoints"]

            (ck,) = wait_until(pending, 20, "the worker's question")
            s.cli("checkpoints")
            assert s.cli("answer", ck["id"], "httpx").returncode == 0
            stack.wait_status(job_id, "succeeded")
            assert s.cli("logs", job_id).stdout.splitlines() == [
                f"bash worker bash1 took job {job_id}",
                "the answer was httpx",
            ]
            s.cli("chat", job_id, "--no-follow")
            got = s.cli("get", job_id, jq=f".status, .result, {JQ_TIMELINE}")
            assert got.stdout.splitlines()[:2] == ['"succeeded"', '{"answer":"httpx","by":"bash1"}']

            long_id = s.cli(
                "submit", "echo", "--queue", "agents", "--payload", '{"work_s": 60}'
            ).stdout.strip()
            wait_until(lambda: stack.wait_status(long_id, {"queued", "running"})["status"] == "running", 20)
            wait_until(lambda: rest_worker(c, "bash1")["running"], 5, "the heartbeat listing it")
            time.sleep(1.5)  # a heartbeat or two
            s.cli("status", long_id)
            s.note(f"$ kill -9 {bash.pid}   # the bash worker, mid-job")
            os.killpg(bash.pid, signal.SIGKILL)  # the script and its `sleep`
            bash.wait(10)
            stack.start_executor(queues="agents", handlers="handlers_for_tests", slots=1)
            s.note("$ python -m taskyard_executor --queues agents --slots 1 -A handlers_for_tests &")
            s.cli("status", long_id)
            done = stack.wait_status(long_id, "succeeded", timeout=40)
            s.cli("status", long_id)
            got = s.cli("get", long_id, jq=f".status, .result, {JQ_TIMELINE}")
            timeline = json.loads(got.stdout.splitlines()[2])
            assert ["worker_lost", 1, "rest-admin-bash1"] in timeline and done["attempt"] == 2

            # What it cost: both types ran; the lost attempt reported nothing.
            def types_costed() -> set:
                groups = c.get("/api/v1/costs", params={"since": "1h", "by": "type"}).json()["groups"]
                return {g["key"] for g in groups}

            wait_until(lambda: types_costed() == {"agent.review", "echo"}, 10, "both types' costs")
            cost = s.cli("cost", "--since", "1h", "--by", "type")
            review = next(line for line in cost.stdout.splitlines() if line.startswith("agent.review"))
            assert review.split()[1:3] == ["1", "1"] and "$0.0200" in review, cost.stdout
    finally:
        if bash.poll() is None:
            os.killpg(bash.pid, signal.SIGKILL)
    out = (tmp_path / "bash1.out").read_text()
    assert f"claimed job {job_id} (attempt 1)" in out and 'answered: "httpx"' in out
    assert f"completed job {job_id}" in out and f"claimed job {long_id} (attempt 1)" in out
    s.note("")
    s.note("# the bash worker's own output meanwhile:")
    for line in out.splitlines():
        s.note(line)
    s.write(
        "bash-worker.txt",
        "# The bash + curl worker of docs/rest-workers.md on queue `agents` (lease 5 s), the CLI\n"
        "# beside it: a job that asks a question and completes, then a job killed mid-run (kill -9)\n"
        "# that goes back after the lease and succeeds on a Python executor. Recorded by\n"
        "# tests/test_transcripts.py on the real stack.",
    )
