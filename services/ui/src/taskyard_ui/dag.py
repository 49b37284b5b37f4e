"""A workflow's DAG laid out for a server-rendered SVG: layers by depth, left to right.

Pure geometry from the API's workflow answer (nodes and edges); the template draws it. A node's
depth is the longest chain of `needs` above it, so every edge points right. Within a layer nodes
are ordered by the mean position of their parents (one barycenter pass), which keeps most edges
from crossing in the shapes workflows usually have (fan-out, fan-in, diamonds).
"""

import json
from dataclasses import dataclass, field
from typing import Any

NODE_W, NODE_H = 190, 52
GAP_X, GAP_Y, PAD = 70, 22, 16
LABEL_CHARS = 24


@dataclass
class Box:
    """One node as drawn: its corner, its words, and where its link goes."""

    id: str
    job_id: str | None
    status: str
    x: int
    y: int
    label: str
    detail: str
    reason: str
    attempt: int
    title: str
    w: int = NODE_W
    h: int = NODE_H


@dataclass
class Edge:
    path: str
    state: str
    title: str


@dataclass
class Layout:
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)


def depths(node_ids: list[str], parents: dict[str, list[str]]) -> dict[str, int]:
    """Longest path from a root; bounded by the node count, so a malformed answer cannot loop."""
    depth = dict.fromkeys(node_ids, 0)
    for _ in range(len(node_ids)):
        changed = False
        for node in node_ids:
            best = max((depth[p] + 1 for p in parents.get(node, []) if p in depth), default=0)
            if best != depth[node]:
                depth[node], changed = best, True
        if not changed:
            break
    return depth


def _short(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def node_reason(node: dict[str, Any], open_parents: list[tuple[str, str]]) -> str:
    """What a person hovering the node wants to know: why it waits, or how it ended."""
    status = node.get("status")
    if status == "blocked":
        if not open_parents:
            return "Its parents have ended; it is being released."
        names = ", ".join(f"{name} ({state})" for name, state in open_parents)
        return f"Waiting for {len(open_parents)} parent(s): {names}."
    error = node.get("error")
    result = node.get("result")
    if isinstance(error, dict) and error:
        return ": ".join(str(error[k]) for k in ("type", "message") if error.get(k)) or "error"
    if status == "succeeded" and result is not None:
        text = json.dumps(result, separators=(", ", ": "), ensure_ascii=False)
        return "Result " + (text if len(text) <= 120 else text[:119] + "…")
    if status == "running":
        return f"Running, attempt {node.get('attempt', 1)}."
    if status == "queued":
        return "Queued: open the job for its position and ETA."
    return str(status)


def _curve(x1: float, y1: float, x2: float, y2: float) -> str:
    bend = (x2 - x1) / 2
    return f"C{x1 + bend:g},{y1:g} {x2 - bend:g},{y2:g} {x2:g},{y2:g}"


def _route(
    start: tuple[int, int],
    end: tuple[int, int],
    layers: dict[int, list[str]],
    corner: dict[str, tuple[int, int]],
    level: int,
) -> str:
    """A parent's right side to a child's left side. An edge that skips layers crosses each one
    beside its boxes, in the gap nearest to its straight line, not through a node."""
    x, y = start[0] + NODE_W, start[1] + NODE_H / 2
    x2, y2 = end[0], end[1] + NODE_H / 2
    path = [f"M{x:g},{y:g}"]
    between = [lvl for lvl in sorted(layers) if level < lvl and corner[layers[lvl][0]][0] < x2]
    for lvl in between:
        left = corner[layers[lvl][0]][0]
        share = (left + NODE_W / 2 - x) / max(1.0, x2 - x)
        want = y + (y2 - y) * share
        tops = sorted(corner[n][1] for n in layers[lvl])
        if any(top - GAP_Y / 2 < want < top + NODE_H + GAP_Y / 2 for top in tops):
            gaps = [tops[0] - GAP_Y / 2] + [top + NODE_H + GAP_Y / 2 for top in tops]
            want = min(gaps, key=lambda g: abs(g - want))
        path += [_curve(x, y, left, want), f"L{left + NODE_W:g},{want:g}"]
        x, y = left + NODE_W, want
    path.append(_curve(x, y, x2, y2))
    return " ".join(path)


def layout(workflow: dict[str, Any]) -> Layout:
    nodes = {str(n["id"]): n for n in workflow.get("nodes") or []}
    ids = sorted(nodes)
    parents: dict[str, list[str]] = {i: [] for i in ids}
    edge_rows = [e for e in workflow.get("edges") or [] if e.get("from") in nodes and e.get("to") in nodes]
    for edge in edge_rows:
        parents[edge["to"]].append(edge["from"])
    depth = depths(ids, parents)
    layers: dict[int, list[str]] = {}
    for node_id in ids:
        layers.setdefault(depth[node_id], []).append(node_id)
    row: dict[str, float] = {}
    for level in sorted(layers):
        members = layers[level]
        if level:  # order by the mean row of the parents, ties by id (already sorted)
            members.sort(key=lambda n: sum(row[p] for p in parents[n]) / max(1, len(parents[n])))
        for index, node_id in enumerate(members):
            row[node_id] = index
    tallest = max((len(m) for m in layers.values()), default=0)
    height = PAD * 2 + tallest * NODE_H + max(0, tallest - 1) * GAP_Y
    width = PAD * 2 + len(layers) * NODE_W + max(0, len(layers) - 1) * GAP_X
    out = Layout(width=width, height=height)
    corner: dict[str, tuple[int, int]] = {}
    for level, members in layers.items():
        span = len(members) * NODE_H + (len(members) - 1) * GAP_Y
        top = (height - span) // 2
        for index, node_id in enumerate(members):
            corner[node_id] = (PAD + level * (NODE_W + GAP_X), top + index * (NODE_H + GAP_Y))
    for node_id in ids:
        node = nodes[node_id]
        status = str(node.get("status"))
        open_parents = [
            (e["from"], str(nodes[e["from"]].get("status")))
            for e in edge_rows
            if e["to"] == node_id and e.get("state") == "open"
        ]
        reason = node_reason(node, open_parents)
        attempt = node.get("attempt") or 0
        x, y = corner[node_id]
        out.boxes.append(
            Box(
                id=node_id,
                job_id=node.get("job_id"),
                status=status,
                x=x,
                y=y,
                label=_short(node_id),
                detail=status + (f" · attempt {attempt}" if attempt > 1 else ""),
                reason=reason,
                attempt=attempt,
                title=f"{node_id} ({node.get('type')}): {status}. {reason}",
            )
        )
    for edge in edge_rows:
        route = _route(corner[edge["from"]], corner[edge["to"]], layers, corner, depth[edge["from"]])
        state = str(edge.get("state"))
        out.edges.append(Edge(path=route, state=state, title=f"{edge['from']} → {edge['to']}: {state}"))
    return out
