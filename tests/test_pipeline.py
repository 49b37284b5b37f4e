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


def test_queued_comes_first_on_every_timeline_and_is_no_event_of_its_own(stack):
    # An idle executor's armed pull gets each job as soon as JetStream stores it, before the api has
    # its publish ack and writes the job's `queued` row: the timeline must still begin with it. On
    # EVENTS a job has only what executors report; the api announces each publish burst once.
    stack.start_api()
    stack.start_executor()
    with stack.http() as c:
        ids = [c.post("/api/v1/jobs", json={"type": "noop"}).json()["id"] for _ in range(40)]
        for job_id in ids:
            stack.wait_status(job_id, "succeeded")
        timelines = {
            job_id: [e["type"] for e in c.get(f"/api/v1/jobs/{job_id}").json()["timeline"]] for job_id in ids
        }

    async def events_in_stream_order() -> tuple[dict[str, list[str]], list[str]]:
        import nats

        from taskyard_common.coalesce import parts
        from taskyard_common.schemas import message_events
        from taskyard_common.settings import NatsSettings
        from taskyard_common.topology import Topology

        topo = Topology(NatsSettings(prefix=stack.prefix))
        nc = await nats.connect(stack.nats.url)
        try:
            sub = await nc.jetstream().subscribe(topo.event_subject(">"), ordered_consumer=True)
            by_job: dict[str, list[str]] = {}
            announced: list[str] = []
            while True:  # every event in the stream, in stream order
                msg = await sub.next_msg(timeout=10)
                if msg.subject == topo.queued_subject:
                    body = json.loads(msg.data)
                    announced += [e["job_id"] for e in body["events"] if e["type"] == "queued"]
                else:
                    # An executor batches several jobs' events in one message, and a quick job's
                    # outcome carries its `started`: read each as the events it stands for.
                    for sent in message_events(msg.data, topo.is_batch_subject(msg.subject)):
                        for event in parts(sent):
                            by_job.setdefault(event.job_id, []).append(event.type)
                if msg.metadata.num_pending == 0:
                    return by_job, announced
        finally:
            await nc.close()

    by_job, announced = run_async(events_in_stream_order())
    assert {job_id: t for job_id, t in timelines.items() if t != ["queued", "started", "succeeded"]} == {}
    assert {job_id: e for job_id, e in by_job.items() if e != ["started", "succeeded"]} == {}
    assert sorted(announced) == sorted(ids)  # each publish announced once, for the metrics service
