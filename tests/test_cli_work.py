"""`taskyard workflow ...` and `taskyard batch ...` as real processes against the real stack."""

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from .test_cli import cli

pytestmark = pytest.mark.one_database(
    "sqlite", why="CLI and SDK rendering over the REST API, whose SQL the API tests run on both databases"
)

HANDLERS = "handlers_for_tests"


def cli_in(stack, cwd, *args: str) -> subprocess.CompletedProcess:
    """The CLI run from `cwd` (a relative --glob and the jobs' directory are relative to it)."""
    env = {**os.environ, "TASKYARD_URL": stack.api.url, "TASKYARD_API_KEY": stack.admin_key}
    return subprocess.run(
        [sys.executable, "-m", "taskyard", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def in_a_terminal(stack, *args: str, timeout: float = 90) -> tuple[int, str]:
    """Run the CLI with its stdout on a pseudo-terminal (what a person at a shell sees)."""
    master, slave = pty.openpty()
    env = {
        **os.environ,
        "TASKYARD_URL": stack.api.url,
        "TASKYARD_API_KEY": stack.admin_key,
        "TERM": "xterm-256color",
        "COLUMNS": "140",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskyard", *args], env=env, stdout=slave, stderr=slave, close_fds=True
    )
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, b"".join(chunks).decode(errors="replace")


def test_workflow_run_watch_fail_retry_node_and_status(stack, tmp_path):
    stack.start_api()
    stack.start_executor(handlers=HANDLERS)
    flag = tmp_path / "fixed"
    spec = tmp_path / "flow.yaml"
    spec.write_text(
        f"""
name: nightly
on_failure: continue
nodes:
  scan: {{type: echo, payload: {{findings: [a, b]}}}}
  check:
    type: fails_until_file
    payload: {{path: "{flag}"}}
    max_attempts: 1
    needs: [scan]
  report: {{type: echo, needs: [check, scan], inputs: {{found: scan/findings/1}}}}
"""
    )
    run = cli(stack, "workflow", "run", str(spec), "--watch")
    assert run.returncode == 1, run.stderr
    lines = run.stdout.splitlines()
    assert "check: dead · JobError: RuntimeError:" in run.stdout, run.stdout
    assert "report: skipped · ParentNotDone: parent" in run.stdout, run.stdout
    skipped_at = next(i for i, line in enumerate(lines) if line.startswith("report: skipped"))
    assert lines.index("scan: succeeded") < skipped_at
    workflow_id = run.stderr.split()[1]
    summary = next(line for line in lines if line.startswith("workflow "))
    assert summary == f"workflow {workflow_id} nightly · failed · 1 succeeded · 1 dead · 1 skipped"

    flag.write_text("ok")
    retried = cli(stack, "workflow", "retry", workflow_id, "--node", "check")
    assert retried.returncode == 0 and retried.stdout.startswith("check: queued"), retried.stdout
    watched = cli(stack, "workflow", "status", workflow_id, "--watch", "--json")
    assert watched.returncode == 0, watched.stderr
    done = json.loads(watched.stdout)
    assert done["status"] == "succeeded"
    report = next(n for n in done["nodes"] if n["id"] == "report")
    assert report["result"] == {"found": "b"}

    missing = cli(stack, "workflow", "status", "01JXXXXXXXXXXXXXXXXXXXXXXX")
    assert missing.returncode == 3 and "404" in missing.stderr and "not found" in missing.stderr
    bad = tmp_path / "cycle.json"
    bad.write_text(json.dumps({"nodes": [{"id": "a", "type": "noop", "needs": ["a"]}]}))
    refused = cli(stack, "workflow", "run", str(bad))
    assert refused.returncode == 3 and "nodes[0].needs" in refused.stderr, refused.stderr


def test_batch_run_over_a_glob_reports_failures_then_retry_failed_in_a_terminal(stack, tmp_path):
    stack.start_api()
    stack.start_executor(slots=8)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(12):
        (data / f"part-{i:02}.csv").write_text("bad\n" if i in (3, 8) else "ok\n")
    (data / "notes.txt").write_text("not matched\n")
    # A relative glob, and a relative path in each job: they run in the directory the CLI ran in.
    run = cli_in(stack, tmp_path, "batch", "run", "--glob", "data/*.csv", "--name", "csvs",
                 "--max-attempts", "1", "--watch", "--", "grep", "-q", "ok", "{}")  # fmt: skip
    assert run.returncode == 1, run.stderr
    # stderr: the estimate (docs/costs.md), then "batch ID: 12 jobs submitted".
    assert run.stderr.startswith("estimate for 12 shell job(s): "), run.stderr
    submitted = next(line for line in run.stderr.splitlines() if line.startswith("batch "))
    batch_id = submitted.split()[1].rstrip(":")
    assert submitted.endswith("12 jobs submitted")
    last = [line for line in run.stdout.splitlines() if line.startswith("batch ")][-1]
    assert last == f"batch {batch_id} csvs · 12/12 done (100.0%) · 10 succeeded · 2 dead · complete", last
    assert "  2 × ShellCommandFailed" in run.stdout or "  2 × " in run.stdout, run.stdout

    status = json.loads(cli(stack, "batch", "status", batch_id, "--json").stdout)
    [group] = status["failures"]
    failed_ids = {e["id"] for e in group["examples"]}
    assert group["count"] == 2 and len(failed_ids) == 2

    for i in (3, 8):
        (data / f"part-{i:02}.csv").write_text("ok\n")
    retried = cli(stack, "batch", "retry", batch_id, "--failed")
    assert retried.returncode == 0 and retried.stdout.strip() == "retried 2", retried.stdout
    code, screen = in_a_terminal(stack, "batch", "status", batch_id, "--watch")
    assert code == 0, screen
    assert "━" in screen and "12/12" in screen and "12 succeeded" in screen, screen

    empty = cli(stack, "batch", "run", "--glob", str(data / "*.parquet"), "--", "cat", "{}")
    assert empty.returncode == 2 and empty.stderr.startswith("error: --glob: no file matches")


def test_batch_and_workflow_cancel_what_has_not_run(stack, tmp_path):
    stack.start_api()  # no executor serves `held`: everything waits
    for i in range(3):
        (tmp_path / f"{i}.txt").write_text("x")
    created = cli(stack, "batch", "run", "--glob", str(tmp_path / "*.txt"), "--queue", "held", "--json",
                  "--", "cat")  # fmt: skip
    assert created.returncode == 0, created.stderr
    body = json.loads(created.stdout)
    assert {j["payload"]["cwd"] for j in body["jobs"]} == {os.getcwd()}  # the CLI's directory
    assert [j["payload"]["command"] for j in body["jobs"]] == [
        ["cat", str(tmp_path / f"{i}.txt")] for i in range(3)
    ]
    cancelled = cli(stack, "batch", "cancel", body["batch_id"])
    assert cancelled.stdout.strip() == "cancelled 3", cancelled.stdout + cancelled.stderr
    status = cli(stack, "batch", "status", body["batch_id"])
    assert "3/3 done (100.0%) · 3 cancelled · complete" in status.stdout, status.stdout

    spec = tmp_path / "wf.json"
    spec.write_text(json.dumps({"nodes": [
        {"id": "first", "type": "noop", "queue": "held"},
        {"id": "second", "type": "noop", "queue": "held", "needs": ["first"]},
    ]}))  # fmt: skip
    workflow_id = cli(stack, "workflow", "run", str(spec)).stdout.strip()
    shown = cli(stack, "workflow", "status", workflow_id)
    assert "second  blocked" in shown.stdout and "waits for its parents" in shown.stdout, shown.stdout
    # Cancelling `first` may skip `second` (its edge asks for success) before its own turn comes.
    assert cli(stack, "workflow", "cancel", workflow_id).stdout.startswith("cancelled ")
    final = json.loads(cli(stack, "workflow", "status", workflow_id, "--json").stdout)
    assert final["status"] == "cancelled"
    statuses = {n["id"]: n["status"] for n in final["nodes"]}
    assert statuses["first"] == "cancelled" and statuses["second"] in ("cancelled", "skipped"), statuses


async def _stored_object_names(stack) -> list[str]:
    """Every object in the stack's artifacts bucket, read from JetStream itself (not the api)."""
    import nats

    from taskyard_common.settings import NatsSettings
    from taskyard_common.topology import Topology

    nc = await nats.connect(stack.nats.url)
    try:
        store = await nc.jetstream().object_store(
            Topology(NatsSettings(prefix=stack.prefix)).artifacts_bucket
        )
        return sorted(info.name for info in await store.list())
    finally:
        await nc.close()


def test_batch_run_stages_each_file_and_batch_download_gets_every_output(stack, tmp_path):
    """batch run --glob with --input/--output: each file staged where `{}` names it, a shared input
    and two files of equal contents stored once; batch download puts each member's outputs under
    its own folder with the right bytes and sha256."""
    import hashlib

    from taskyard import Client

    from .stack import run_async

    stack.start_api()
    stack.start_executor(slots=3)
    work = tmp_path / "laptop"
    (work / "data").mkdir(parents=True)
    (work / "shared.cfg").write_text("header\n")
    contents = {"a.csv": "1,2\n", "b.csv": "3,4\n", "c.csv": "1,2\n"}  # a and c: the same bytes
    for name, text in contents.items():
        (work / "data" / name).write_text(text)
    script = "mkdir -p out && cat shared.cfg {} | tr a-z A-Z > out/r.txt && echo {} > out/which.txt"
    run = cli_in(stack, work, "batch", "run", "--glob", "data/*.csv", "--input", "shared.cfg",
                 "--output", "out/**", "--watch", "--", "sh", "-c", script)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "inputs: 1 files" in run.stderr and "batch files: 3 matched, 2 distinct" in run.stderr
    submitted = next(line for line in run.stderr.splitlines() if line.endswith("jobs submitted"))
    batch_id = submitted.split()[1].rstrip(":")

    listing = Client(stack.api.url, stack.admin_key).batch_artifacts(batch_id)
    members = listing["members"]
    assert len(members) == 3 and {m["status"] for m in members} == {"succeeded"}
    shared = {i["sha256"] for m in members for i in m["inputs"] if i["path"] == "shared.cfg"}
    assert len(shared) == 1  # every member names the one stored copy
    objects = run_async(_stored_object_names(stack))
    inputs = [o for o in objects if o.startswith("in/")]
    assert len(inputs) == 3, objects  # shared.cfg, a.csv == c.csv, b.csv
    assert len([o for o in objects if o.startswith("out/")]) == 6, objects

    dest = tmp_path / "got"
    down = cli(stack, "batch", "download", batch_id, "--to", str(dest))
    assert down.returncode == 0, down.stderr
    assert "6 files from 3 of 3 members" in down.stderr
    by_member = {m["job_id"]: {o["name"]: o for o in m["outputs"]} for m in members}
    seen = set()
    for job_id, outputs in by_member.items():
        folder = dest / job_id / "out"
        staged = (folder / "which.txt").read_text().strip()  # where the job saw its file: `{}`
        seen.add(staged)
        assert (folder / "r.txt").read_text() == ("header\n" + contents[staged.split("/")[1]]).upper()
        for name, item in outputs.items():
            data = (dest / job_id / name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == item["sha256"] and len(data) == item["size"]
    assert seen == {"data/a.csv", "data/b.csv", "data/c.csv"}

    listed = cli(stack, "batch", "download", batch_id, "--list")
    assert listed.returncode == 0 and listed.stdout.count("out/r.txt") == 3, listed.stdout
    missing = cli(stack, "batch", "download", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert missing.returncode != 0 and "not found" in missing.stderr
