"""The approvals inbox from the `taskyard` CLI and the SDK: rendering without a server, then
`checkpoints`, `status`, `approve`, `reject` and `answer` as subprocesses against the real stack."""

import json
import os
import shlex
import subprocess
import sys

import pytest

from taskyard import AsyncClient, Client, TaskyardError
from taskyard._calls import answer, approve, checkpoints, reject
from taskyard._render_checkpoints import checkpoint_row, decision_line, expires, parse_answer
from taskyard._render_ops import waiting_lines

pytestmark = pytest.mark.one_database(
    "sqlite", why="CLI and SDK rendering over the REST API, whose SQL the API tests run on both databases"
)

CK = "ck_0123456789abcdef01234567"
NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def cli(stack, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TASKYARD_URL": stack.api.url, "TASKYARD_API_KEY": stack.admin_key}
    return subprocess.run(
        [sys.executable, "-m", "taskyard", *args], env=env, capture_output=True, text=True, timeout=60
    )


def transcript(args: list[str], out: subprocess.CompletedProcess) -> str:
    """What a terminal shows for one command: the command, stdout, stderr, exit status."""
    return "\n".join(
        [f"$ {shlex.join(['taskyard', *args])}", *out.stdout.splitlines(), *out.stderr.splitlines(),
         f"[exit {out.returncode}]"]
    )  # fmt: skip


# Without a server


def test_request_descriptions():
    assert checkpoints().params == [("limit", "100"), ("status", "pending")]
    assert checkpoints("all", "J1").params == [("limit", "100"), ("job_id", "J1")]
    assert checkpoints(None).params == [("limit", "100")]
    assert approve("ck/1").path == "/api/v1/checkpoints/ck%2F1/approve" and approve("c").body == {}
    assert approve("c", "ok").body == {"reason": "ok"}
    assert reject("c", "no").body == {"reason": "no"}
    assert answer("c", None).body == {"answer": None}
    assert answer("c", ["a"], "because").body == {"answer": ["a"], "reason": "because"}


def test_answers_parse_as_json_when_they_can():
    assert parse_answer("us-east") == "us-east"
    assert parse_answer("42") == 42 and parse_answer('"42"') == "42"
    assert parse_answer('{"n": [1, true]}') == {"n": [1, True]} and parse_answer("null") is None


def test_checkpoint_rows_and_decision_lines():
    ck = {
        "id": CK, "job_id": "01JOB", "kind": "approval", "name": "apply-migration", "status": "pending",
        "message": "Apply the\nschema migration? " + "x" * 80, "approvers": ["admin", "vera"],
        "expires_at": "2027-01-16T07:59:00Z", "decided_by": None, "reason": None,
    }  # fmt: skip
    row = checkpoint_row(ck, now=NOW)
    assert row[:7] == [CK, "approval", "apply-migration", "01JOB", "pending", "admin,vera", "in 23h59m"]
    assert row[7].startswith("Apply the schema migration? xx") and row[7].endswith("…") and len(row[7]) == 50
    assert expires({**ck, "expires_at": "2027-01-15T07:00:00Z"}, now=NOW) == "due"
    assert expires({**ck, "status": "approved"}, now=NOW) == "-"

    ck.update(status="approved", decided_by="admin")
    assert decision_line(ck) == f"approved {CK} (apply-migration) by admin"
    assert (
        decision_line({**ck, "reason": "looks good"})
        == f"approved {CK} (apply-migration) by admin: looks good"
    )
    ck.update(status="rejected", reason="not now")
    assert decision_line(ck) == f"rejected {CK} (apply-migration) by admin: not now"
    question = {**ck, "kind": "question", "name": "Which region?", "status": "answered", "answer": "us-east"}
    assert decision_line({**question, "reason": None}) == f'answered {CK} (Which region?) by admin: "us-east"'
    assert decision_line(question).endswith(': "us-east" (not now)')


def test_status_of_a_job_waiting_on_a_person_names_the_checkpoint():
    reason = {"code": "waiting_approval", "message": "Waiting for approval of `apply-migration` by admin.",
              "evidence": {"checkpoint_id": CK, "name": "apply-migration"}}  # fmt: skip
    job = {"id": "01J", "status": "waiting", "waiting_reason": reason, "checkpoint": None}
    assert waiting_lines(job) == [
        "01J · waiting",
        "  why: Waiting for approval of `apply-migration` by admin.",
        f"  checkpoint: {CK} · apply-migration · approve with: taskyard approve {CK}",
    ]
    reason = {"code": "waiting_answer", "message": "Waiting for an answer.", "evidence": {}}
    job = {"id": "01J", "status": "waiting", "waiting_reason": reason,
           "checkpoint": {"id": CK, "name": "Which region?", "choices": ["eu-west", "us-east"]}}  # fmt: skip
    assert waiting_lines(job)[2] == (
        f"  checkpoint: {CK} · Which region? · answer with: taskyard answer {CK} ANSWER (one of eu-west, us-east)"
    )


# Against the real stack


def test_cli_lists_approves_and_rejects_checkpoints(stack, tmp_path):
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests")
    shown = []
    first = cli(stack, "submit", "deploy", "--payload", json.dumps({"counter_file": str(tmp_path / "a")}))
    assert first.returncode == 0, first.stderr
    job_id = first.stdout.strip()
    ck_id = stack.wait_status(job_id, "waiting")["checkpoint"]["id"]

    listed = cli(stack, "checkpoints")
    shown.append(transcript(["checkpoints"], listed))
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "KIND", "NAME", "JOB", "STATUS", "APPROVERS", "EXPIRES", "MESSAGE"]
    assert [r.split()[:5] for r in rows] == [[ck_id, "approval", "apply-migration", job_id, "pending"]]
    assert rows[0].split()[5:8] == ["admin", "in", "23h59m"]  # the handler's 24h timeout
    assert rows[0].rstrip().endswith("Apply the schema migration?")
    assert (
        json.loads(cli(stack, "checkpoints", "--json", "--job", job_id).stdout)["checkpoints"][0]["id"]
        == ck_id
    )

    status = cli(stack, "status", job_id)
    shown.append(transcript(["status", job_id], status))
    assert status.returncode == 0 and status.stdout.splitlines()[0] == f"{job_id} · waiting"
    assert (
        f"  checkpoint: {ck_id} · apply-migration · approve with: taskyard approve {ck_id}" in status.stdout
    )

    args = ["approve", ck_id, "--reason", "looks good"]
    approved = cli(stack, *args)
    shown.append(transcript(args, approved))
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout == f"approved {ck_id} (apply-migration) by admin: looks good\n"
    done = stack.wait_status(job_id, "succeeded")
    assert done["result"] == {"artifact": "app-v1", "approved": True, "by": "admin", "reason": "looks good"}

    args = ["approve", ck_id]
    again = cli(stack, *args)
    shown.append(transcript(args, again))
    assert again.returncode == 3 and again.stdout == ""
    assert again.stderr.startswith(f"error: 409 checkpoint {ck_id} was already approved by admin")
    assert len(again.stderr.splitlines()) == 1
    assert cli(stack, "checkpoints").stderr == "no pending checkpoints\n"
    approved_rows = cli(stack, "checkpoints", "--status", "approved").stdout.splitlines()[1:]
    assert [r.split()[4] for r in approved_rows] == ["approved"]

    second = cli(stack, "submit", "deploy", "--payload", json.dumps({"counter_file": str(tmp_path / "b")}))
    other_job = second.stdout.strip()
    other_ck = stack.wait_status(other_job, "waiting")["checkpoint"]["id"]
    args = ["reject", other_ck]
    missing = cli(stack, *args)
    shown.append(transcript(args, missing))
    assert missing.returncode == 2 and "Missing option '--reason'" in missing.stderr
    assert cli(stack, "reject", other_ck, "--reason", " ").returncode == 2
    assert stack.wait_status(other_job, "waiting")["checkpoint"]["status"] == "pending"

    args = ["reject", other_ck, "--reason", "not now"]
    rejected = cli(stack, *args)
    shown.append(transcript(args, rejected))
    assert rejected.returncode == 0, rejected.stderr
    assert rejected.stdout == f"rejected {other_ck} (apply-migration) by admin: not now\n"
    failed = stack.wait_status(other_job, "failed")
    assert failed["error"]["type"] == "CheckpointRejected" and "not now" in failed["error"]["message"]
    status = cli(stack, "status", other_job)
    shown.append(transcript(["status", other_job], status))
    assert "not now" in status.stdout
    print("\n\n".join(["", *shown]))


async def test_cli_and_sdk_answer_questions(stack):
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests")
    with Client(stack.api.url, stack.admin_key) as ty:
        job = ty.submit("pick_region", {})
        ck_id = stack.wait_status(job["id"], "waiting")["checkpoint"]["id"]
        assert [c["id"] for c in ty.checkpoints(job_id=job["id"])] == [ck_id]
        assert ty.checkpoint(ck_id)["choices"] == ["eu-west", "us-east"]
    hint = f"answer with: taskyard answer {ck_id} ANSWER (one of eu-west, us-east)"
    assert hint in cli(stack, "status", job["id"]).stdout

    bad = cli(stack, "answer", ck_id, "mars")
    assert bad.returncode == 3 and bad.stderr.startswith("error: 422 answer: must be one of")
    wrong_kind = cli(stack, "approve", ck_id)
    assert (
        wrong_kind.returncode == 3
        and wrong_kind.stderr == f"error: 409 checkpoint {ck_id} is a question: answer it\n"
    )
    answered = cli(stack, "answer", ck_id, "us-east")
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout == f'answered {ck_id} (Which region?) by admin: "us-east"\n'
    assert stack.wait_status(job["id"], "succeeded")["result"] == {"region": "us-east"}

    async with AsyncClient(stack.api.url, stack.admin_key) as ty:
        assert await ty.checkpoints() == []
        [decided] = await ty.checkpoints(status="all", job_id=job["id"])
        assert decided["status"] == "answered" and decided["answer"] == "us-east"
        assert (await ty.checkpoint(ck_id))["decided_by"] == "admin"
        try:
            await ty.reject(ck_id, "too late")
        except TaskyardError as exc:
            assert exc.status_code == 409 and "already answered" in exc.detail
        else:
            raise AssertionError("a decided checkpoint was rejected again")
