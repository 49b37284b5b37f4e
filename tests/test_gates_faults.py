"""Gates under faults: the api killed mid-workflow, and two api processes settling at once."""

import concurrent.futures
import threading
import time

import httpx
import pytest

from .invariants import query
from .stack import run_async, wait_until

FAST_OUTBOX = {
    "TASKYARD_API_OUTBOX_GRACE_S": "0.5",
    "TASKYARD_API_OUTBOX_INTERVAL_S": "0.5",
    "TASKYARD_API_GATE_SWEEP_INTERVAL_S": "1",
}


def layered_workflow(layers: int = 5, width: int = 10, seconds: float = 0.05) -> dict:
    """`layers` × `width` sleep nodes; each needs three of the layer above (a dense DAG)."""
    nodes = []
    for layer in range(layers):
        for i in range(width):
            needs = sorted({f"n{layer - 1}-{(i + k) % width}" for k in (0, 1, 3)}) if layer else []
            nodes.append(
                {"id": f"n{layer}-{i}", "type": "sleep", "payload": {"seconds": seconds}, "needs": needs}
            )
    return {"nodes": nodes, "name": "layered"}


def _load(url: str, key: str, stop: threading.Event) -> None:
    """Background submits while the test runs; the api may be down for a moment (errors ignored)."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=5) as c:
        while not stop.is_set():
            try:
                c.post("/api/v1/jobs:batch", json={"jobs": [{"type": "noop"}] * 50})
            except httpx.HTTPError:
                time.sleep(0.2)


def test_kill_9_of_the_api_mid_workflow_under_load_runs_every_node_exactly_once(stack):
    api = stack.start_api(**FAST_OUTBOX)
    stack.start_executor(slots=16)
    stop = threading.Event()
    loader = threading.Thread(target=_load, args=(api.url, stack.admin_key, stop), daemon=True)
    with stack.http() as c:
        workflow = c.post("/api/v1/workflows", json=layered_workflow()).json()
        url = f"/api/v1/workflows/{workflow['id']}"
        loader.start()
        wait_until(lambda: c.get(url).json()["counts"].get("succeeded", 0) >= 12, 60, "a few layers done")
    api.kill9()
    time.sleep(0.5)
    api = stack.start_api(**FAST_OUTBOX)  # a new process on a new port: the load follows it
    stop.set()
    loader.join(10)
    stop.clear()
    loader = threading.Thread(target=_load, args=(api.url, stack.admin_key, stop), daemon=True)
    loader.start()
    try:
        with stack.http() as c:
            wait_until(lambda: c.get(url).json()["status"] == "succeeded", 120, "the workflow to end")
            assert c.get(url).json()["counts"] == {"succeeded": 50}
    finally:
        stop.set()
        loader.join(10)

    def starts() -> list:
        return query(
            stack.db_url,
            "SELECT j.node, COUNT(e.id) FROM jobs j LEFT JOIN job_events e ON e.job_id = j.id "
            f"AND e.type = 'started' WHERE j.workflow_id = '{workflow['id']}' GROUP BY j.node",
        )

    # Events the killed api had fetched but not acked come back after the projector's ack_wait
    # (60 s): the timeline completes then; a node that ran twice would show two starts.
    wait_until(lambda: all(n >= 1 for _, n in starts()), 90, "every node's start on its timeline")
    assert len(starts()) == 50 and {n for _, n in starts()} == {1}, [s for s in starts() if s[1] != 1]


def _scrape(url: str, name: str) -> float:
    lines = [x for x in httpx.get(f"{url}/metrics").text.splitlines() if x.startswith(name)]
    return sum(float(x.rsplit(" ", 1)[1]) for x in lines)


@pytest.mark.one_database("postgresql", why="several api processes share PostgreSQL only")
def test_two_apis_open_every_gate_once_and_call_back_once(stack, db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("several api processes share PostgreSQL (SQLite is the one-process default)")
    apis = [stack.start_api(), stack.start_api()]
    stack.start_executor(slots=32)

    def work(i: int) -> tuple[str, str]:
        url = apis[i % 2].url
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {stack.admin_key}"}, timeout=30
        ) as c:
            batch = c.post(
                "/api/v1/batches",
                json={"jobs": [{"type": "noop"}] * 20, "on_complete": {"type": "noop"}},
            ).json()
            flow = c.post("/api/v1/workflows", json=layered_workflow(layers=3, width=6, seconds=0)).json()
            return batch["batch_id"], flow["id"]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        made = list(pool.map(work, range(12)))
    with stack.http() as c:
        for batch_id, flow_id in made:
            wait_until(lambda b=batch_id: c.get(f"/api/v1/batches/{b}").json()["done"] == 20, 60, "batch")
            wait_until(
                lambda f=flow_id: c.get(f"/api/v1/workflows/{f}").json()["status"] == "succeeded", 60, "flow"
            )
    callbacks = query(stack.db_url, "SELECT COUNT(*) FROM jobs WHERE node = 'on_complete'")[0][0]
    assert callbacks == 12
    # 12 workflows × 12 gated nodes (layers 2 and 3): each released exactly once, by one of the two.
    wait_until(
        lambda: sum(_scrape(a.url, 'taskyard_api_gate_moves_total{move="released"}') for a in apis) >= 144,
        10,
        "the release counts",
    )
    released = sum(_scrape(a.url, 'taskyard_api_gate_moves_total{move="released"}') for a in apis)
    assert released == 144
    # Every job's message went into JOBS once: stored messages = jobs (nothing was retried).
    jobs = query(stack.db_url, "SELECT COUNT(*) FROM jobs")[0][0]

    async def stored() -> int:
        import nats

        from taskyard_common.settings import NatsSettings
        from taskyard_common.topology import Topology

        nc = await nats.connect(stack.nats.url)
        try:
            info = await nc.jetstream().stream_info(Topology(NatsSettings(prefix=stack.prefix)).jobs_stream)
            return info.state.last_seq
        finally:
            await nc.close()

    assert run_async(stored()) == jobs == 12 * (20 + 1 + 18)
    started = query(
        stack.db_url,
        "SELECT job_id FROM job_events WHERE type = 'started' GROUP BY job_id HAVING COUNT(*) > 1",
    )
    assert started == []
