"""The job pipeline end to end: REST submit → JetStream → executor → events → database."""


def test_noop_job_runs_and_has_a_timeline(stack):
    stack.start_api()
    stack.start_executor()
    with stack.http() as c:
        r = c.post("/api/v1/jobs", json={"type": "noop", "payload": {"x": 1}})
        assert r.status_code == 201, r.text
        job = r.json()
        assert job["status"] == "queued" and job["stream_seq"] >= 1
    done = stack.wait_status(job["id"], "succeeded")
    assert done["result"] == {"ok": True, "payload": {"x": 1}} or done["result"]["ok"] is True
    types = [e["type"] for e in done["timeline"]]
    assert types[:3] == ["queued", "started", "succeeded"], types
    assert done["attempt"] == 1 and done["worker_id"]


def test_shell_job_streams_stdout_and_stderr_as_logs(stack):
    stack.start_api()
    stack.start_executor()
    with stack.http() as c:
        payload = {"command": ["sh", "-c", "echo out-line; echo err-line >&2; echo second"]}
        job = c.post("/api/v1/jobs", json={"type": "shell", "payload": payload}).json()
        done = stack.wait_status(job["id"], "succeeded")
        assert done["result"]["exit_code"] == 0
        lines = c.get(f"/api/v1/jobs/{job['id']}/logs").json()["lines"]
    by_stream = {(line["stream"], line["line"]) for line in lines}
    assert ("stdout", "out-line") in by_stream and ("stderr", "err-line") in by_stream
    assert [line["line"] for line in lines if line["stream"] == "stdout"] == ["out-line", "second"]
