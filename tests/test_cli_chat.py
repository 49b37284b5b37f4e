"""`taskyard chat`: rendering without a server, then following and answering a real job's thread
from a subprocess whose stdin is a pipe (as a person typing)."""

import os
import queue
import subprocess
import sys
import threading
import time

import pytest

from taskyard._calls import messages, post_message
from taskyard._render_chat import clock, message_line, question_prompt

from .test_cli_checkpoints import cli, transcript
from .test_conversations import submit

pytestmark = pytest.mark.one_database(
    "sqlite", why="CLI and SDK rendering over the REST API, whose SQL the API tests run on both databases"
)


def test_requests_and_lines():
    assert messages("J/1", 7).path == "/api/v1/jobs/J%2F1/messages"
    assert messages("J", 7).params == [("after", "7"), ("limit", "500")]
    assert post_message("J", "hi").body == {"text": "hi"}
    assert post_message("J", "hi", "ck_1").body == {"text": "hi", "reply_to": "ck_1"}
    asked: set[str] = set()
    q = {"author": "converse", "author_kind": "job", "text": "Which?", "checkpoint_id": "ck_1",
         "created_at": "2026-12-06T02:31:07.123Z"}  # fmt: skip
    assert message_line(q, asked) == "02:31:07 converse (job) asks: Which?"
    a = {**q, "author": "ann", "author_kind": "person", "text": "that\none"}
    assert message_line(a, asked) == "02:31:07 ann (person) answers: that\n    one"
    assert clock(None) == "--:--:--"
    prompt = question_prompt({"name": "q1", "choices": ["a", "b"], "approvers": ["admin"]})
    assert "'q1'" in prompt and "one of: a, b" in prompt and "admin" in prompt


def _reader(stream, lines: "queue.Queue[str]") -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))


def _until(lines: "queue.Queue[str]", seen: list[str], text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in seen):
        left = deadline - time.monotonic()
        assert left > 0, f"{text!r} never printed; got {seen}"
        try:
            seen.append(lines.get(timeout=left))
        except queue.Empty:
            continue


def test_chat_follows_a_job_and_answers_its_questions_from_stdin(stack, tmp_path):
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests")
    with stack.http() as c:
        job = submit(
            c, "converse", {"answers_file": str(tmp_path / "a"), "questions": ["Library?", "Version?"]}
        )
    env = {**os.environ, "TASKYARD_URL": stack.api.url, "TASKYARD_API_KEY": stack.admin_key}
    args = ["chat", job["id"], "--interval", "0.2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskyard", *args],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        _until(lines, seen, "waiting for an answer to 'q1'")
        proc.stdin.write("httpx\n")
        proc.stdin.flush()
        _until(lines, seen, "waiting for an answer to 'q2'")
        proc.stdin.write("0.28\n")
        proc.stdin.flush()
        _until(lines, seen, "the conversation is closed")
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    while not lines.empty():
        seen.append(lines.get())
    print("\n".join([f"$ taskyard {' '.join(args)}", *seen]))  # the transcript (pytest -s)
    said = [line.split(" ", 1)[1] for line in seen if not line.startswith(("> ", "-- "))]
    assert said == [
        "converse (job): Starting: I will ask three things.",
        "converse (job) asks: Library?",
        "admin (person) answers: httpx",
        "converse (job): Noted answer 1: httpx",
        "converse (job) asks: Version?",
        "admin (person) answers: 0.28",
        "converse (job): Noted answer 2: 0.28",
    ]
    assert seen[-1] == f"-- job {job['id']} succeeded: the conversation is closed"
    # --say on the finished job: refused (409, exit 3), and the thread is unchanged.
    out = cli(stack, "chat", job["id"], "--say", "thanks!")
    print(transcript(["chat", job["id"], "--say", "thanks!"], out))
    assert out.returncode == 3 and "409" in out.stderr and "ended (succeeded)" in out.stderr
    again = cli(stack, "chat", job["id"], "--no-follow")
    assert again.returncode == 0 and len(again.stdout.splitlines()) == 7 and "thanks" not in again.stdout


def test_chat_say_sends_one_message_and_unknown_jobs_are_refused(stack, tmp_path):
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests")
    with stack.http() as c:
        job = submit(c, "deploy", {"counter_file": str(tmp_path / "c")})
    stack.wait_status(job["id"], "waiting")
    out = cli(stack, "chat", job["id"], "--say", "On it after lunch.")
    assert out.returncode == 0 and out.stdout.endswith("admin (person): On it after lunch.\n"), out
    out = cli(stack, "chat", job["id"], "--no-follow", "--json")
    assert out.returncode == 0 and '"text": "On it after lunch."' in out.stdout
    out = cli(stack, "chat", "01JZZZZZZZZZZZZZZZZZZZZZZZ", "--say", "hello")
    assert out.returncode == 3 and "404" in out.stderr
