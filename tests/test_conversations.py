"""Conversations: a job's thread (GET/POST /api/v1/jobs/{id}/messages), ctx.say and follow-up
questions on real processes (nats-server, the api, executors killed with SIGKILL)."""

from .conftest import create_key
from .stack import wait_until

QUESTIONS = ["Which library?", "Which version?", "Ship today?"]


def submit(c, type_: str, payload: dict) -> dict:
    r = c.post("/api/v1/jobs", json={"type": type_, "payload": payload})
    assert r.status_code == 201, r.text
    return r.json()


def thread(c, job_id: str, after: int = 0) -> list[dict]:
    r = c.get(f"/api/v1/jobs/{job_id}/messages", params={"after": after})
    assert r.status_code == 200, r.text
    return r.json()["messages"]


def open_question(stack, c, job_id: str, name: str) -> dict:
    """Wait until the job waits on question `name` and its message is on the thread."""

    def asked():
        body = c.get(f"/api/v1/jobs/{job_id}/messages").json()
        q = body["open_question"]
        return q if q and q["name"] == name and body["messages"][-1]["checkpoint_id"] == q["id"] else None

    return wait_until(asked, timeout=30, what=f"question {name} on the thread")


def test_three_questions_across_an_executor_kill9_each_answer_once_thread_in_order(stack, tmp_path):
    """Two kills: one of the executor while the job waits on its 2nd question (parked), one of the
    next executor mid-run, after the 2nd answer reached the job and before it asks the 3rd (the
    delivery comes back after ack_wait and the job replays up to there from its journal)."""
    answers_file, linger = tmp_path / "answers.txt", tmp_path / "lingered"
    stack.extra_env["TASKYARD_NATS_ACK_WAIT_S"] = "2"
    stack.start_api()
    first = stack.start_executor(handlers="handlers_for_tests", slots=1)
    with stack.http() as c:
        payload = {"answers_file": str(answers_file), "linger_file": str(linger), "linger_at": 2}
        job = submit(c, "converse", payload)
        q1 = open_question(stack, c, job["id"], "q1")
        # A plain text answers the open question (the checkpoint path decides it).
        r = c.post(f"/api/v1/jobs/{job['id']}/messages", json={"text": "httpx"})
        assert r.status_code == 201, r.text
        assert r.json()["author_kind"] == "person" and r.json()["checkpoint_id"] == q1["id"]
        q2 = open_question(stack, c, job["id"], "q2")
        first.kill9()  # the job waits on the 2nd question; its executor dies
        r = c.post(f"/api/v1/jobs/{job['id']}/messages", json={"text": "0.28", "reply_to": q2["id"]})
        assert r.status_code == 201, r.text
        # The same question again: it was answered (409), nothing is added.
        again = c.post(f"/api/v1/jobs/{job['id']}/messages", json={"text": "0.27", "reply_to": q2["id"]})
        assert again.status_code == 409 and "already answered" in again.json()["detail"]
        second = stack.start_executor(handlers="handlers_for_tests", slots=1)
        # The 2nd answer reached the job (recorded, said); it lingers before asking the 3rd: kill it.
        wait_until(lambda: linger.exists(), 30, "the job holding after the 2nd answer")
        assert answers_file.read_text().splitlines() == ["q1=httpx", "q2=0.28"]
        second.kill9()
        stack.start_executor(handlers="handlers_for_tests")
        q3 = open_question(stack, c, job["id"], "q3")
        # The inbox's own answer route puts its answer on the thread too.
        assert c.post(f"/api/v1/checkpoints/{q3['id']}/answer", json={"answer": "yes"}).status_code == 200
        done = stack.wait_status(job["id"], "succeeded")
        messages = thread(c, job["id"])
        tail = thread(c, job["id"], after=messages[6]["id"])
    assert done["result"] == {"answers": ["httpx", "0.28", "yes"]}
    # Each answer reached the job once: the step that records it ran once per answer, though the
    # job ran five times (start, after each answer, and again after the kill mid-run).
    assert answers_file.read_text().splitlines() == ["q1=httpx", "q2=0.28", "q3=yes"]
    kinds = [e["type"] for e in done["timeline"]]
    assert kinds.count("started") == 5 and kinds.count("worker_lost") == 1, kinds
    said = [(m["author_kind"], m["author"], m["text"]) for m in messages]
    assert said == [
        ("job", "converse", "Starting: I will ask three things."),
        ("job", "converse", QUESTIONS[0]),
        ("person", "admin", "httpx"),
        ("job", "converse", "Noted answer 1: httpx"),
        ("job", "converse", QUESTIONS[1]),
        ("person", "admin", "0.28"),
        ("job", "converse", "Noted answer 2: 0.28"),
        ("job", "converse", QUESTIONS[2]),
        ("person", "admin", "yes"),
        ("job", "converse", "Noted answer 3: yes"),
    ]
    qa = [m for m in messages if m["checkpoint_id"]]
    assert (
        len(qa) == 6 and [m["checkpoint_id"] for m in qa] == [q1["id"]] * 2 + [q2["id"]] * 2 + [q3["id"]] * 2
    )
    assert [m["id"] for m in messages] == sorted(m["id"] for m in messages)
    assert tail == messages[7:]  # following with `after` gives what came next


def test_bad_messages_are_refused_with_a_clear_4xx_and_change_nothing(stack, tmp_path):
    stack.start_api(TASKYARD_API_MESSAGE_MAX_CHARS="50")
    stack.start_executor(handlers="handlers_for_tests")
    viewer = create_key(stack.db_url, "vera", "viewer")
    with stack.http() as c:
        # A job parked at an approval (no question open): a person's message is a plain message.
        parked = submit(c, "deploy", {"counter_file": str(tmp_path / "c")})
        stack.wait_status(parked["id"], "waiting")
        r = c.post(f"/api/v1/jobs/{parked['id']}/messages", json={"text": "Looking at it after lunch."})
        assert r.status_code == 201 and r.json()["checkpoint_id"] is None
        before = thread(c, parked["id"])
        assert [m["text"] for m in before] == ["Looking at it after lunch."]

        too_long = c.post(f"/api/v1/jobs/{parked['id']}/messages", json={"text": "x" * 51})
        assert too_long.status_code == 413
        assert too_long.json()["detail"].startswith("text: 51 characters; the limit is 50")
        empty = c.post(f"/api/v1/jobs/{parked['id']}/messages", json={"text": ""})
        assert empty.status_code == 422 and empty.json()["detail"].startswith("text")
        extra = c.post(
            f"/api/v1/jobs/{parked['id']}/messages", json={"text": "hi", "author_kind": "taskyard"}
        )
        assert extra.status_code == 422 and "author_kind" in extra.json()["detail"]
        approval = c.get(f"/api/v1/jobs/{parked['id']}").json()["checkpoint"]["id"]
        r = c.post(f"/api/v1/jobs/{parked['id']}/messages", json={"text": "yes", "reply_to": approval})
        assert r.status_code == 409 and "approval" in r.json()["detail"]
        with stack.http(viewer) as v:  # not the owner, not an admin
            r = v.post(f"/api/v1/jobs/{parked['id']}/messages", json={"text": "me too"})
            assert r.status_code == 403 and "owner" in r.json()["detail"]
            assert v.get(f"/api/v1/jobs/{parked['id']}/messages").status_code == 200  # viewers read
        assert thread(c, parked["id"]) == before

        # A question only its approvers may answer (the checkpoint rules).
        job = submit(c, "converse", {"answers_file": str(tmp_path / "a"), "questions": ["Pick one"]})
        q = open_question(stack, c, job["id"], "q1")
        with stack.http(viewer) as v:
            r = v.post(f"/api/v1/jobs/{job['id']}/messages", json={"text": "mine"})
            assert r.status_code == 403 and "admin" in r.json()["detail"]
        assert c.get(f"/api/v1/checkpoints/{q['id']}").json()["status"] == "pending"
        assert c.post(f"/api/v1/jobs/{job['id']}/messages", json={"text": "ok"}).status_code == 201
        stack.wait_status(job["id"], "succeeded")
        finished = thread(c, job["id"])
        assert [m["text"] for m in finished][-1] == "Noted answer 1: ok"

        # A reply to a finished job: 409, nothing stored.
        r = c.post(f"/api/v1/jobs/{job['id']}/messages", json={"text": "one more thing"})
        assert r.status_code == 409 and "succeeded" in r.json()["detail"]
        assert thread(c, job["id"]) == finished

        # Unknown jobs: 404 for a well-formed id that does not exist and for a malformed one.
        for bad in ("01JZZZZZZZZZZZZZZZZZZZZZZZ", "nope"):
            assert c.get(f"/api/v1/jobs/{bad}/messages").status_code == 404
            r = c.post(f"/api/v1/jobs/{bad}/messages", json={"text": "hello"})
            assert r.status_code == 404 and "not found" in r.json()["detail"]
        other = c.post(f"/api/v1/jobs/{parked['id']}/messages", json={"text": "x", "reply_to": q["id"]})
        assert other.status_code == 404 and other.json()["detail"].startswith("reply_to")
        assert thread(c, parked["id"]) == before


def test_a_job_killed_mid_run_does_not_say_twice_and_an_unanswered_question_closes_the_thread(
    stack, tmp_path
):
    stack.extra_env["TASKYARD_NATS_ACK_WAIT_S"] = "2"
    stack.start_api(TASKYARD_API_CHECKPOINT_EXPIRY_INTERVAL_S="0.3")
    first = stack.start_executor(handlers="handlers_for_tests")
    linger = tmp_path / "lingered"
    with stack.http() as c:
        job = submit(
            c,
            "converse",
            {
                "answers_file": str(tmp_path / "a"),
                "questions": ["Proceed?"],
                "linger_file": str(linger),
                "timeout": "3s",
            },
        )
        wait_until(lambda: linger.exists() and thread(c, job["id"]), 30, "the first say")
        first.kill9()  # mid-run, after it said "Starting" and before it asked
        stack.start_executor(handlers="handlers_for_tests")
        q = open_question(stack, c, job["id"], "q1")  # redelivered after ack_wait, run again
        failed = stack.wait_status(job["id"], "failed", timeout=30)  # nobody answers within 3 s
        messages = thread(c, job["id"])
        r = c.post(f"/api/v1/jobs/{job['id']}/messages", json={"text": "sorry, yes", "reply_to": q["id"]})
        assert r.status_code == 409 and "failed" in r.json()["detail"]
        assert thread(c, job["id"]) == messages
    assert "worker_lost" in [e["type"] for e in failed["timeline"]]
    assert [(m["author_kind"], m["text"]) for m in messages] == [
        ("job", "Starting: I will ask three things."),  # once, though the job ran twice
        ("job", "Proceed?"),
        ("taskyard", "Nobody answered “Proceed?” in time."),
    ]
    assert messages[2]["checkpoint_id"] == q["id"] and "expired" in failed["error"]["message"]


def test_a_shell_script_says_and_asks_on_its_thread(stack):
    stack.start_api()
    stack.start_executor()
    script = (
        'echo "::taskyard::say Preparing the release"; '
        '"$TASKYARD_PYTHON" -m taskyard_executor.checkpoint_cli channel --question --message "Which channel?" '
        "--choices beta,stable || exit 1; "
        'echo "::taskyard::say Released"'
    )
    with stack.http() as c:
        job = submit(c, "shell", {"command": script, "shell": True})
        q = open_question(stack, c, job["id"], "channel")
        assert q["choices"] == ["beta", "stable"]
        wrong = c.post(f"/api/v1/jobs/{job['id']}/messages", json={"text": "nightly"})
        assert wrong.status_code == 422 and wrong.json()["detail"].startswith("text: ")
        assert c.post(f"/api/v1/jobs/{job['id']}/messages", json={"text": "stable"}).status_code == 201
        stack.wait_status(job["id"], "succeeded")
        texts = [m["text"] for m in thread(c, job["id"])]
        lines = [x["line"] for x in c.get(f"/api/v1/jobs/{job['id']}/logs").json()["lines"]]
    assert texts == ["Preparing the release", "Which channel?", "stable", "Released"]  # said once
    assert lines == ["stable"]  # the protocol lines are not log lines; the script ran twice
