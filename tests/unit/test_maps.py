"""Map nodes, pure: the list they run over, their item jobs with the `parallel` cap, the join."""

from dataclasses import replace

import pytest

from taskyard_api.failures import Invalid, Refused
from taskyard_api.gates import InputMissing
from taskyard_api.lifecycle import Expanded, Joined, Retry, new_job, transition
from taskyard_api.maps import MAX_ITEMS, fan_out, item_name, items_of, join
from taskyard_api.plan import check_graph, workflow_items
from taskyard_api.schemas import WorkflowNode

T0 = 1_000.0
SPEC = {
    "type": "noop",
    "queue": "default",
    "priority": "normal",
    "payload": {"mode": "fast"},
    "labels": {"team": "a"},
    "timeout_s": 60.0,
    "max_attempts": 2,
    "backoff": {},
    "idempotency_key": None,
}


def map_node(parallel: int | None = None, over: str = "scan/files") -> object:
    return new_job(
        id="M" * 26,
        owner_id="k1",
        now=T0,
        traceparent=None,
        blocked=True,
        workflow_id="W" * 26,
        node="each",
        map={"over": over, "parallel": parallel},
        **SPEC,
    )


def test_the_list_comes_from_the_needed_nodes_result_by_json_pointer():
    node = map_node()
    assert items_of(node, {"scan": {"files": ["a", "b"]}}) == ["a", "b"]
    assert items_of(map_node(over="scan"), {"scan": [1, 2, 3]}) == [1, 2, 3]


@pytest.mark.parametrize(
    ("results", "message"),
    [
        ({"scan": {"files": "a,b"}}, "map.over 'scan/files' is str, not a list"),
        ({"scan": {"other": []}}, "map.over: no '/files' in the result of 'scan'"),
        ({}, "map.over 'scan/files': no result from 'scan'"),
        ({"scan": {"files": [0] * (MAX_ITEMS + 1)}}, f"items exceeds the limit of {MAX_ITEMS}"),
    ],
)
def test_a_value_that_is_not_a_list_is_a_clear_input_error(results, message):
    with pytest.raises(InputMissing, match=message.replace("(", r"\(").replace(")", r"\)")):
        items_of(map_node(), results)


def test_fan_out_gives_each_item_its_job_and_queues_only_parallel_of_them():
    node = transition(map_node(parallel=2), Expanded(T0 + 1, 5))
    assert (node.status, node.map["total"], node.started_at) == ("running", 5, T0 + 1)
    jobs, edges = fan_out(node, {"mode": "fast"}, ["a", "b", "c", "d", "e"], T0 + 1)
    assert [j.status for j in jobs] == ["queued", "queued", "blocked", "blocked", "blocked"]
    assert [j.outbox_at for j in jobs[:2]] == [T0 + 1, T0 + 1]
    assert [j.payload for j in jobs][2] == {"mode": "fast", "item": "c", "index": 2}
    assert [j.node for j in jobs] == ["each[0]", "each[1]", "each[2]", "each[3]", "each[4]"]
    assert all(j.map == {"of": node.id, "index": i} for i, j in enumerate(jobs))
    assert all(
        (j.workflow_id, j.type, j.labels, j.max_attempts) == (node.workflow_id, "noop", {"team": "a"}, 2)
        for j in jobs
    )
    ids = [j.id for j in jobs]
    assert len(set(ids)) == 5
    pairs = {(e["parent_id"], e["child_id"]) for e in edges}
    # Every item is a parent of the map node; item i + 2 waits for item i to end, whatever the outcome.
    assert pairs == {(i, node.id) for i in ids} | {(ids[0], ids[2]), (ids[1], ids[3]), (ids[2], ids[4])}
    assert {(e["on"], e["state"]) for e in edges} == {("finished", "open")}


def test_without_parallel_every_item_is_queued_at_once():
    jobs, edges = fan_out(map_node(), None, [1, 2, 3], T0)
    assert [j.status for j in jobs] == ["queued"] * 3
    assert [j.payload for j in jobs] == [{"item": i, "index": n} for n, i in enumerate([1, 2, 3])]
    assert len(edges) == 3


def test_item_names_fit_the_node_column():
    assert item_name("x" * 128, 9999) == "x" * 122 + "[9999]"


def test_the_join_is_the_items_results_in_order_or_a_failure_naming_them():
    node = transition(map_node(), Expanded(T0, 3))
    jobs, _ = fan_out(node, None, ["a", "b", "c"], T0)
    done = [replace(j, status="succeeded", result={"n": j.map["index"]}) for j in jobs]
    joined = join(node, list(reversed(done)), T0 + 5)
    assert joined == Joined(T0 + 5, result=[{"n": 0}, {"n": 1}, {"n": 2}])
    after = transition(node, joined)
    assert (after.status, after.result, after.finished_at) == (
        "succeeded",
        [{"n": 0}, {"n": 1}, {"n": 2}],
        T0 + 5,
    )

    error = {"type": "ProcessFailed", "message": "exit 1"}
    mixed = [
        done[0],
        replace(done[1], status="dead", error=error, result=None),
        replace(done[2], status="skipped"),
    ]
    failed = transition(node, join(node, mixed, T0 + 6))
    assert failed.status == "failed" and failed.error["type"] == "MapItemFailed"
    assert failed.error["message"] == f"2 of 3 items did not succeed; item 1 ({jobs[1].id}) dead: exit 1"
    assert [i["index"] for i in failed.error["items"]] == [1, 2]


def test_an_empty_list_joins_to_an_empty_result():
    node = transition(map_node(), Expanded(T0, 0))
    assert transition(node, join(node, [], T0)).result == []


def test_a_map_node_is_not_retried_itself_but_through_its_items():
    failed = replace(map_node(), status="failed")
    with pytest.raises(Refused, match="map node"):
        transition(failed, Retry(T0))


def test_expanded_and_joined_leave_other_jobs_alone():
    plain = new_job(id="J" * 26, owner_id="k1", now=T0, traceparent=None, blocked=True, **SPEC)
    assert transition(plain, Expanded(T0, 2)) is plain
    assert transition(plain, Joined(T0, result=[])) is plain
    cancelled = replace(map_node(), status="cancelled")
    assert transition(cancelled, Expanded(T0, 2)) is cancelled


def test_map_over_must_name_a_needed_node():
    nodes = [
        WorkflowNode(type="noop", id="scan"),
        WorkflowNode(type="noop", id="each", map={"over": "scan/files"}),
    ]
    with pytest.raises(Invalid, match=r"nodes\[1\]\.map\.over: 'scan' is not among its needs"):
        check_graph(workflow_items(nodes))
    nodes[1] = WorkflowNode(type="noop", id="each", needs=["scan"], map={"over": "scan/files", "parallel": 2})
    items = workflow_items(nodes)
    check_graph(items)
    assert items[1].map == {"over": "scan/files", "parallel": 2}


def test_items_are_held_by_their_map_nodes_gates():
    node = replace(map_node(parallel=1), run_at=T0 + 60, concurrency_key="tenant:a", concurrency={"limit": 2})
    jobs, _ = fan_out(transition(node, Expanded(T0, 2)), None, ["a", "b"], T0)
    assert [j.status for j in jobs] == ["scheduled", "blocked"]
    assert (jobs[0].run_at, jobs[0].concurrency_key, jobs[0].outbox_at) == (T0 + 60, "tenant:a", None)
    asking = replace(map_node(), approval={"approvers": ["admin"], "expires_s": 60, "decision": None})
    jobs, _ = fan_out(transition(asking, Expanded(T0, 1)), None, ["a"], T0 + 5)
    assert jobs[0].status == "needs_approval" and jobs[0].approval["expires_at"] == T0 + 65
