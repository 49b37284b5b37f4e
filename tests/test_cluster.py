"""Node faults on a 3-node JetStream cluster under a steady submit load (≥ 500 jobs/s, executors
busy): the node leading JOBS killed -9 and restarted, the node leading EVENTS killed -9, a
non-leader stopped (SIGSTOP) for 20 s. Each ends with the invariants of tests/invariants.py (every
accepted job ends exactly once, counts match, no duplicate outcome) and services that recovered
without a restart; each prints its counts and its recovery time (docs/scaling.md)."""

import time

import pytest

from .cluster import Finished, Load, stream_leader
from .invariants import assert_invariants, query, wait_all_final

pytestmark = pytest.mark.cluster

RATE = 600  # offered jobs/s
# A lost ack (its consumer leader died) redelivers after ack_wait: short, so the run stays short.
ENV = {"TASKYARD_NATS_ACK_WAIT_S": "5"}


def start_services(stack) -> list:
    stack.extra_env.update(ENV)
    api = stack.start_api(wait=False)
    executors = [stack.start_executor(handlers="handlers_for_tests", slots=16, wait=False) for _ in range(2)]
    for svc in [api, *executors]:
        stack.wait_ready(svc)
    return [api, *executors]


def replicas(cluster) -> dict[str, int]:
    """Each of the test's streams (the workers bucket is KV_<prefix>_workers) → its replicas."""
    found = {}
    for account in cluster.jsz().get("account_details", []):
        for stream in account.get("stream_detail", []):
            found[stream["name"]] = 1 + len((stream.get("cluster") or {}).get("replicas") or [])
    return found


def settle(
    stack, load: Load, finished: Finished, services: list, what: str, recovery: float, steady: float
) -> dict:
    """Stop the load, wait for every job to end, check the invariants and print the figures."""
    load.stop()
    finished.stop()
    counts = wait_all_final(stack.db_url, len(load.accepted), timeout=60)
    assert set(counts) == {"succeeded"}, counts
    assert_invariants(stack.db_url, load.accepted)
    assert all(svc.alive() for svc in services), "a service died: it did not recover by itself"
    rerun = query(stack.db_url, "SELECT COUNT(*) FROM jobs WHERE attempt > 1")[0][0]
    print(
        f"\n{what}: {len(load.accepted)} jobs accepted, {steady:.0f} jobs/s before the fault, "
        f"{load.jobs_per_s:.0f} jobs/s overall ({len(load.refused)} batches refused), final {counts}, "
        f"{rerun} ran again (a lost ack or report); recovery {recovery:.2f} s (fault → first job "
        f"created after it done), longest stall {finished.longest_stall():.2f} s"
    )
    assert steady >= 500, f"the load before the fault was {steady:.0f} jobs/s"
    return counts


def test_kill_9_the_jobs_leader_then_restart_it(cluster_stack, nats_cluster):
    stack = cluster_stack
    services = start_services(stack)
    jobs = f"{stack.prefix.upper()}_JOBS"
    assert all(n == 3 for n in replicas(nats_cluster).values()), replicas(nats_cluster)
    load = Load(stack, rate=RATE).start()
    finished = Finished(stack.db_url).start()
    time.sleep(4)
    leader = stream_leader(nats_cluster, jobs)
    node = nats_cluster.node(leader)
    fault_at = finished.fault()
    node.kill()
    recovery = finished.recovered_after()
    new_leader = stream_leader(nats_cluster, jobs)
    assert new_leader != leader
    time.sleep(3)
    node.start()
    nats_cluster.wait_healthy(nodes=[node])
    time.sleep(3)
    what = f"JOBS leader {leader} killed -9 (then {new_leader}), restarted"
    settle(stack, load, finished, services, what, recovery, load.steady_rate(fault_at))


def test_kill_9_the_events_leader(cluster_stack, nats_cluster):
    stack = cluster_stack
    services = start_services(stack)
    events = f"{stack.prefix.upper()}_EVENTS"
    load = Load(stack, rate=RATE).start()
    finished = Finished(stack.db_url).start()
    time.sleep(4)
    leader = stream_leader(nats_cluster, events)
    fault_at = finished.fault()
    nats_cluster.node(leader).kill()  # and it stays down: two nodes carry on
    recovery = finished.recovered_after()
    new_leader = stream_leader(nats_cluster, events)
    assert new_leader != leader
    time.sleep(4)
    what = f"EVENTS leader {leader} killed -9 (then {new_leader}), left down"
    settle(stack, load, finished, services, what, recovery, load.steady_rate(fault_at))


def test_stop_a_non_leader_for_20_s(cluster_stack, nats_cluster):
    stack = cluster_stack
    services = start_services(stack)
    prefix = stack.prefix.upper()
    load = Load(stack, rate=RATE).start()
    finished = Finished(stack.db_url).start()
    time.sleep(4)
    leading = {stream_leader(nats_cluster, f"{prefix}_JOBS"), stream_leader(nats_cluster, f"{prefix}_EVENTS")}
    node = next(n for n in nats_cluster.nodes if n.server_name not in leading)
    led = sorted(k for k, v in nats_cluster.leaders().items() if v == node.server_name)
    fault_at = finished.fault()
    node.pause()
    try:
        recovery = finished.recovered_after()
        time.sleep(max(0.0, fault_at + 20 - time.monotonic()))
    finally:
        node.resume()
    nats_cluster.wait_healthy(nodes=[node])
    time.sleep(3)
    what = f"non-leader {node.server_name} (leading {led or 'nothing'}) stopped 20 s, resumed"
    settle(stack, load, finished, services, what, recovery, load.steady_rate(fault_at))
