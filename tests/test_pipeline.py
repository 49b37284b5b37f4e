"""The job pipeline end to end: REST submit → JetStream → executor → events → database."""

import json

from .stack import run_async


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


def test_queued_is_stored_before_anything_an_idle_executor_reports(stack):
    # An idle executor's armed pull gets each job as soon as JetStream stores it, before the api has
    # its publish ack: the `queued` event must still be in EVENTS first.
    stack.start_api()
    stack.start_executor()
    with stack.http() as c:
        ids = [c.post("/api/v1/jobs", json={"type": "noop"}).json()["id"] for _ in range(40)]
    for job_id in ids:
        stack.wait_status(job_id, "succeeded")

    async def event_types_in_stream_order() -> dict[str, list[str]]:
        import nats

        from taskyard_common.settings import NatsSettings
        from taskyard_common.topology import Topology

        topo = Topology(NatsSettings(prefix=stack.prefix))
        nc = await nats.connect(stack.nats.url)
        try:
            sub = await nc.jetstream().subscribe(topo.event_subject(">"), ordered_consumer=True)
            by_job: dict[str, list[str]] = {}
            while True:  # every event in the stream, in stream order
                msg = await sub.next_msg(timeout=10)
                event = json.loads(msg.data)
                by_job.setdefault(event["job_id"], []).append(event["type"])
                if msg.metadata.num_pending == 0:
                    return by_job
        finally:
            await nc.close()

    by_job = run_async(event_types_in_stream_order())
    out_of_order = {
        job_id: by_job[job_id] for job_id in ids if by_job[job_id] != ["queued", "started", "succeeded"]
    }
    assert not out_of_order and len(by_job) == len(ids), out_of_order
