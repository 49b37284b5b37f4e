"""The workflow page's DAG geometry (taskyard_ui.dag): layers by depth, no edge through a node,
and the words shown on hover."""

import re

from taskyard_ui.dag import NODE_H, NODE_W, layout, node_reason


def wf(nodes: dict[str, str], edges: list[tuple[str, str, str]]) -> dict:
    return {
        "nodes": [
            {"id": n, "job_id": f"J-{n}", "type": "echo", "status": s, "attempt": 1} for n, s in nodes.items()
        ],
        "edges": [{"from": a, "to": b, "state": st} for a, b, st in edges],
    }


def boxes(graph: dict) -> dict:
    return {b.id: b for b in layout(graph).boxes}


def test_nodes_sit_in_layers_by_their_longest_chain_of_parents():
    graph = wf(
        {"a": "succeeded", "b": "succeeded", "c": "running", "d": "blocked"},
        [("a", "b", "accepted"), ("b", "c", "accepted"), ("a", "d", "accepted"), ("c", "d", "open")],
    )
    placed = boxes(graph)
    assert placed["a"].x < placed["b"].x < placed["c"].x < placed["d"].x
    drawn = layout(graph)
    assert (
        drawn.width >= placed["d"].x + NODE_W and drawn.height >= max(b.y for b in placed.values()) + NODE_H
    )


def test_children_follow_their_parents_order_within_a_layer():
    graph = wf(
        {"p1": "succeeded", "p2": "succeeded", "z-child-of-p1": "queued", "a-child-of-p2": "queued"},
        [("p1", "z-child-of-p1", "accepted"), ("p2", "a-child-of-p2", "accepted")],
    )
    placed = boxes(graph)
    assert placed["p1"].y < placed["p2"].y
    assert placed["z-child-of-p1"].y < placed["a-child-of-p2"].y  # not alphabetical: no crossing


def points(path: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r"(-?[\d.]+),(-?[\d.]+)", path)]


def test_an_edge_that_skips_a_layer_passes_beside_the_boxes_there():
    # parse → publish skips report's layer, and report sits on the straight line between them.
    graph = wf(
        {"fetch": "succeeded", "parse": "succeeded", "report": "queued", "publish": "blocked"},
        [("fetch", "parse", "accepted"), ("parse", "report", "accepted"), ("report", "publish", "open"),
         ("parse", "publish", "accepted")],
    )  # fmt: skip
    drawn = layout(graph)
    report = next(b for b in drawn.boxes if b.id == "report")
    long_edge = next(e for e in drawn.edges if e.title.startswith("parse → publish"))
    crossing = [(x, y) for x, y in points(long_edge.path) if report.x <= x <= report.x + NODE_W]
    assert crossing, long_edge.path
    assert all(not report.y <= y <= report.y + NODE_H for _, y in crossing), (long_edge.path, report)
    assert long_edge.state == "accepted"


def test_hover_words_say_why_a_node_waits_or_how_it_ended():
    assert node_reason({"status": "blocked"}, [("report", "queued"), ("scan", "running")]) == (
        "Waiting for 2 parent(s): report (queued), scan (running)."
    )
    dead = {"status": "dead", "error": {"type": "JobError", "message": "boom"}}
    assert node_reason(dead, []) == "JobError: boom"
    assert node_reason({"status": "succeeded", "result": {"rows": 3}}, []) == 'Result {"rows": 3}'
    title = boxes(wf({"x": "skipped"}, []))["x"].title
    assert title.startswith("x (echo): skipped.")
