"""Supervised background work in the real api: a projector that dies is named in /readyz, counted
and restarted, and the jobs that finished meanwhile are projected once it is back."""

import asyncio
import threading

import httpx
import nats
import pytest
from nats.js.errors import NotFoundError
from prometheus_client.parser import text_string_to_metric_families

from taskyard_common.settings import NatsSettings
from taskyard_common.topology import Topology

from .stack import wait_until

pytestmark = pytest.mark.one_database("sqlite", why="the api's task supervisor restarting a dying task")


def _keep_deleting_consumer(url: str, prefix: str, stop: threading.Event) -> threading.Thread:
    """Delete the projector's durable consumer whenever it exists, until `stop`: what an operator
    (or a server that lost its store) does to it. Each restart re-creates it; this takes it again,
    so the projector keeps dying, with a growing backoff, until the test lets it live."""
    topo = Topology(NatsSettings(prefix=prefix))

    async def run() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            while not stop.is_set():
                try:
                    await js.delete_consumer(topo.events_stream, topo.projector_durable)
                except NotFoundError:
                    pass  # not re-created yet: the projector is in its backoff
                await asyncio.sleep(0.05)
        finally:
            await nc.close()

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    return thread


def _restarts(c: httpx.Client, task: str) -> float:
    for family in text_string_to_metric_families(c.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "taskyard_api_task_restarts_total" and sample.labels == {"task": task}:
                return sample.value
    raise AssertionError(f"no restart counter for {task}")


def test_a_dying_projector_shows_in_readyz_is_restarted_and_projects_again(stack):
    stack.start_api()
    stack.start_executor()
    with stack.http() as c:
        first = c.post("/api/v1/jobs", json={"type": "noop"}).json()
        stack.wait_status(first["id"], "succeeded")
        assert c.get("/readyz").json()["checks"]["task:projector"] == "ok"
        assert _restarts(c, "projector") == 0

        stop = threading.Event()
        deleter = _keep_deleting_consumer(stack.nats.url, stack.prefix, stop)
        try:
            down = wait_until(
                lambda: (r := c.get("/readyz")).status_code == 503 and r.json(), 60, "projector down"
            )
            check = down["checks"]["task:projector"]
            assert check.startswith("down: ") and ", restarting in " in check, check
            assert down["checks"]["nats"] == "ok" and down["checks"]["db"] == "ok"
            # Runs while nothing projects (or little): its events wait in EVENTS.
            during = c.post("/api/v1/jobs", json={"type": "noop"}).json()
        finally:
            stop.set()
            deleter.join(10)

        wait_until(lambda: c.get("/readyz").status_code == 200, 60, "projector back")
        assert c.get("/readyz").json()["checks"]["task:projector"] == "ok"
        assert _restarts(c, "projector") >= 1
        done = stack.wait_status(during["id"], "succeeded", timeout=60)
        assert [e["type"] for e in done["timeline"]].count("succeeded") == 1
        after = c.post("/api/v1/jobs", json={"type": "noop"}).json()
        stack.wait_status(after["id"], "succeeded", timeout=60)
    assert "task projector died" in stack.api.output()
