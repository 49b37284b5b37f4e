"""Work made of many jobs, checked before anything is stored: names, references, cycles, inputs."""

from dataclasses import replace

import pytest

from taskyard_api.failures import Invalid
from taskyard_api.gates import InputMissing, resolve_pointer, skip_reason, split_ref, with_inputs
from taskyard_api.lifecycle import new_job
from taskyard_api.plan import as_items, check_graph, workflow_items
from taskyard_api.schemas import JobCreate, WorkflowNode

ID = "01M93AAAAAAAAAAAAAAAAAAAAA"


def jobs(*specs: dict) -> list:
    return as_items([JobCreate(type="noop", **s) for s in specs], many=True)


def nodes(*specs: dict) -> list:
    return workflow_items([WorkflowNode(type="noop", **s) for s in specs])


def test_names_and_stored_ids_are_parents():
    assert check_graph(jobs({"name": "a"}, {"name": "b", "depends_on": ["a", ID]})) == [ID]


def test_a_name_used_twice_is_refused():
    with pytest.raises(Invalid, match=r"^jobs\[1\]\.name: 'a' is used twice$"):
        check_graph(jobs({"name": "a"}, {"name": "a"}))


def test_an_unknown_parent_is_refused_naming_the_job():
    with pytest.raises(Invalid, match=r"^jobs\[1\]\.depends_on: unknown 'nope'"):
        check_graph(jobs({"name": "a"}, {"depends_on": ["nope"]}))


def test_a_parent_named_twice_is_refused():
    with pytest.raises(Invalid, match=r"^jobs\[1\]\.depends_on: 'a' is named twice$"):
        check_graph(jobs({"name": "a"}, {"depends_on": ["a", {"job": "a", "on": "finished"}]}))


def test_a_cycle_is_refused_and_shown():
    with pytest.raises(Invalid, match=r"^nodes\[0\]\.needs: a cycle \(a → c → b → a\)$"):
        check_graph(
            nodes({"id": "a", "needs": ["c"]}, {"id": "b", "needs": ["a"]}, {"id": "c", "needs": ["b"]})
        )
    with pytest.raises(Invalid, match=r"a cycle \(x → x\)"):
        check_graph(nodes({"id": "x", "needs": ["x"]}))


def test_a_node_downstream_of_a_cycle_does_not_hide_it():
    with pytest.raises(Invalid, match=r"a cycle \(a → b → a\)"):
        check_graph(
            nodes({"id": "a", "needs": ["b"]}, {"id": "b", "needs": ["a"]}, {"id": "z", "needs": ["a"]})
        )


def test_a_diamond_is_fine():
    diamond = nodes(
        {"id": "scan"},
        {"id": "compliance", "needs": ["scan"]},
        {"id": "review", "needs": ["scan"]},
        {"id": "notify", "needs": ["compliance", "review"], "inputs": {"c": "compliance/ok", "r": "review"}},
    )
    assert check_graph(diamond) == []


def test_an_input_from_a_node_that_is_not_needed_is_refused():
    with pytest.raises(Invalid, match=r"^nodes\[1\]\.inputs\.x: 'a' is not among its needs$"):
        check_graph(nodes({"id": "a"}, {"id": "b", "inputs": {"x": "a/y"}}))


def test_json_pointers():
    doc = {"a": [{"b": 1}, {"c/d": 2, "e~f": 3}]}
    assert resolve_pointer(doc, "") == doc
    assert resolve_pointer(doc, "/a/0/b") == 1
    assert resolve_pointer(doc, "/a/1/c~1d") == 2
    assert resolve_pointer(doc, "/a/1/e~0f") == 3
    for missing in ("/a/2", "/b", "/a/x", "/a/0/b/c"):
        with pytest.raises(InputMissing):
            resolve_pointer(doc, missing)
    assert split_ref("scan/findings/0") == ("scan", "/findings/0")
    assert split_ref("scan") == ("scan", "")


def test_inputs_fill_the_payload_from_parents_results():
    job = new_job(
        id="J", owner_id="k", now=0, traceparent=None, type="noop", queue="q", priority="normal",
        payload={"keep": 1}, labels={}, timeout_s=1, max_attempts=1, backoff={}, idempotency_key=None,
        inputs={"c": "compliance/ok", "r": "review"},
    )  # fmt: skip
    payload = with_inputs(job, {"compliance": {"ok": True}, "review": ["fine"]})
    assert payload == {"keep": 1, "c": True, "r": ["fine"]}
    with pytest.raises(InputMissing, match=r"input 'c': no '/ok' in the result of 'compliance'"):
        with_inputs(job, {"compliance": {}, "review": 1})


def test_a_skipped_child_names_its_parent_by_node_name_beside_its_id():
    parent = new_job(id=ID, owner_id="k1", now=0.0, traceparent=None, type="noop", queue="default",
                     priority="normal", payload=None, labels={}, timeout_s=1.0, max_attempts=1,
                     backoff={}, idempotency_key=None, node="scan")  # fmt: skip
    failed = replace(parent, status="failed")
    assert skip_reason(ID, failed) == f"parent 'scan' ({ID}) failed: the edge asks for success"
    assert skip_reason(ID, replace(failed, node=None)) == f"parent {ID} failed: the edge asks for success"
    assert skip_reason(ID, None) == f"parent {ID} ended: the edge asks for success"
