"""One machine of a 3-node JetStream cluster crashes (issue 21: what replicas 3 buy): node n1's
store lives on a LazyFS mount (tests/crash_node.py) that drops every write not fsynced, and n1
leads JOBS and EVENTS when it crashes, with jobs queued, running and finished. nats-server runs
with its default `sync_interval` (2 min), so n1 loses what it had not flushed, its streams' files
included. The other two hold every acknowledged message: the cluster goes on without n1, n1
catches up from them when it comes back, and the reconciler finds nothing to make up for
(docs/operations.md, "Durability")."""

import json
import os
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from taskyard_common.embedded import EmbeddedCluster, EmbeddedNats

from .cluster import stream_leader
from .conftest import create_key
from .invariants import assert_invariants, query, wait_all_final
from .stack import Stack, run_async, wait_until

pytestmark = pytest.mark.cluster

JOBS = int(os.environ.get("TASKYARD_CRASH_JOBS", "2000"))
FAST = {
    "TASKYARD_NATS_REPLICAS": "3",
    "TASKYARD_API_RECONCILE_INTERVAL_S": "0.5",
    "TASKYARD_API_RECONCILE_MIN_AGE_S": "2",
    "TASKYARD_API_OUTBOX_GRACE_S": "0.5",
    "TASKYARD_API_OUTBOX_INTERVAL_S": "0.5",
}


def _bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _streams(node: EmbeddedNats) -> dict[str, tuple[int, int]]:
    """Each stream as `node` holds it: (messages, last sequence)."""
    url = f"http://127.0.0.1:{node.monitor_port}/jsz?accounts=true&streams=true"
    with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - our own loopback port
        jsz = json.loads(answer.read())
    return {
        s["name"]: (s["state"]["messages"], s["state"]["last_seq"])
        for account in jsz.get("account_details", [])
        for s in account.get("stream_detail", [])
    }


def _lead_from(stack: Stack, cluster: EmbeddedCluster, stream: str, node: str) -> None:
    """Step `stream`'s leader down until `node` leads it (a step-down picks another peer)."""
    import nats

    from taskyard_common.nats_util import server_urls

    async def stepdown() -> None:
        nc = await nats.connect(server_urls(stack.nats.url))
        try:
            await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=5)
        finally:
            await nc.close()

    for _ in range(12):
        if stream_leader(cluster, stream) == node:
            return
        run_async(stepdown())
        time.sleep(0.5)
    raise AssertionError(f"{node} never became {stream}'s leader")


def _new_leader(cluster: EmbeddedCluster, stream: str, gone: str) -> str:
    """`stream`'s leader once it is not `gone` (the survivors name the dead leader until they
    have elected another)."""
    deadline = time.monotonic() + 30
    while (leader := stream_leader(cluster, stream)) == gone:
        assert time.monotonic() < deadline, f"{stream} still led by {gone}"
        time.sleep(0.1)
    return leader


@pytest.mark.one_database("postgresql", why="a cluster deployment's database, on another machine")
def test_one_machine_of_three_crashes_and_nothing_is_made_up(lazy_disk, db_url, tmp_path):
    cluster = EmbeddedCluster.local(tmp_path / "nats", log_dir=tmp_path)
    crashed = cluster.nodes[0]
    crashed.store_dir = lazy_disk.mountpoint / "n1"
    cluster.start()
    stack = Stack(nats=cluster, db_url=db_url, tmp=tmp_path, extra_env=dict(FAST))
    stack.admin_key = create_key(db_url, "admin", "admin")
    try:
        stack.start_api()
        stack.start_executor(handlers="handlers_for_tests", slots=16)
        prefix = stack.prefix.upper()
        for stream in (f"{prefix}_JOBS", f"{prefix}_EVENTS"):
            _lead_from(stack, cluster, stream, crashed.server_name)
        runs_log = tmp_path / "runs.log"
        runs_log.touch()
        # As in tests/test_machine_crash.py: one job in ten runs 0.4 s, so some are running.
        quick, slow = (
            {"type": "key_probe", "payload": {"log": str(runs_log), "seconds": s}} for s in (0.02, 0.4)
        )

        def submit(n: int) -> set[str]:
            ids: set[str] = set()
            with stack.http() as c:
                for start in range(0, n, 250):
                    specs = [slow if i % 10 == 0 else quick for i in range(start, min(n, start + 250))]
                    r = c.post("/api/v1/jobs:batch", json={"jobs": specs}, timeout=60)
                    assert r.status_code == 201, r.text
                    ids |= {job["id"] for job in r.json()["jobs"]}
            return ids

        accepted = submit(JOBS)
        wait_until(lambda: runs_log.read_text().count("end ") >= JOBS // 3, timeout=60, what="a third done")

        # n1's machine crashes: its nats-server, then its page cache.
        in_memory = _bytes(lazy_disk.mountpoint)
        crashed_at = time.monotonic()
        crashed.kill()
        lazy_disk.crash()
        on_disk = _bytes(lazy_disk.backing)
        new_leaders = {
            s: _new_leader(cluster, s, crashed.server_name) for s in (f"{prefix}_JOBS", f"{prefix}_EVENTS")
        }
        elected_s = time.monotonic() - crashed_at
        accepted |= submit(250)  # the other two carry on: submits are accepted while n1 is down
        time.sleep(3)
        crashed.start()
        cluster.wait_healthy(nodes=[crashed], timeout=60)
        rejoined_s = time.monotonic() - crashed_at

        counts = wait_all_final(db_url, len(accepted), timeout=120)
        assert counts == {"succeeded": len(accepted)}, counts
        assert_invariants(db_url, accepted)
        # n1 caught up: every node holds the same streams (a WorkQueue JOBS drains to 0 messages
        # on each; its last sequence tells a node that missed publishes).
        wait_until(
            lambda: _streams(crashed) == _streams(cluster.nodes[1]) == _streams(cluster.nodes[2]),
            timeout=30,
            what="n1 holds what the others hold",
        )
        actions = Counter(
            (json.loads(d) if isinstance(d, str) else d)["action"]
            for (d,) in query(db_url, "SELECT data FROM job_events WHERE type = 'reconciled'")
        )
        rerun = query(
            db_url,
            "SELECT COUNT(DISTINCT job_id) FROM job_events WHERE type IN ('duplicate_run', 'worker_lost')",
        )[0][0]
        print(
            f"\none machine of three crashed (sync_interval default, replicas 3): n1 led JOBS and EVENTS "
            f"(then {new_leaders}, {elected_s:.1f} s after the crash); {len(accepted)} accepted ({JOBS} before the crash, 250 while n1 was "
            f"down); n1's store {in_memory} bytes written, {on_disk} bytes on its disk after the crash "
            f"({in_memory - on_disk} lost with its page cache); n1 healthy again {rejoined_s:.1f} s after "
            f"the crash; final {counts}; reconciler: republished {actions['republished']}, requeued "
            f"{actions['requeued']}, re-created {actions['recreated']}; ran twice (duplicate_run or "
            f"worker_lost) {rerun}; ended twice 0"
        )
        assert in_memory > on_disk, "the crash took nothing from n1's disk: not a test"
        # The others held every acknowledged message: nothing to make up for.
        assert sum(actions.values()) == 0, actions
        assert all(svc.alive() for svc in stack.services)
    finally:
        stack.stop_all()
        cluster.stop()
