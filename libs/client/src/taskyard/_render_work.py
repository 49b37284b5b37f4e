"""Pure helpers of the workflow and batch commands: reading a workflow spec (YAML or JSON), turning
a glob and a command into batch members, and the text shown for progress and workflow nodes."""

import json
from collections.abc import Iterable, Sequence
from pathlib import PurePath
from typing import Any

import yaml

from ._render import one_line, outcome, table

PLACEHOLDER = "{}"
# Members whose status means "did not succeed" (the API groups these under `failures`).
NOT_SUCCEEDED = ("failed", "dead", "cancelled", "skipped")
NODE_HEADERS = ["NODE", "STATUS", "ATTEMPT", "JOB", "NOTE"]


def load_spec(text: str, filename: str) -> dict[str, Any]:
    """A workflow spec from a file's text: JSON for *.json, else YAML (JSON is YAML too).

    `nodes` may be a list of nodes with `id`, or a mapping id → node (the way YAML reads best).
    ValueError with a one-line reason when the text is not such a spec."""
    suffix = PurePath(filename).suffix.lower()
    try:
        spec = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ValueError(f"invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(spec, dict):
        raise ValueError("expected a mapping with `nodes` at the top level")
    nodes = spec.get("nodes")
    if isinstance(nodes, dict):
        listed = []
        for node_id, node in nodes.items():
            if not isinstance(node, dict):
                raise ValueError(f"nodes.{node_id}: expected a mapping (type, payload, needs, …)")
            if "id" in node and node["id"] != node_id:
                raise ValueError(f"nodes.{node_id}: its id {node['id']!r} differs from its key")
            listed.append({"id": str(node_id), **node})
        spec = {**spec, "nodes": listed}
    elif not isinstance(nodes, list):
        raise ValueError("nodes: expected a list of nodes or a mapping of node id to node")
    return spec


def expand(command: Sequence[str], path: str) -> list[str]:
    """The command for one path: each `{}` in an argument replaced by it; appended when none has one."""
    if not any(PLACEHOLDER in word for word in command):
        return [*command, path]
    return [word.replace(PLACEHOLDER, path) for word in command]


def batch_members(
    paths: Iterable[str], command: Sequence[str], options: dict[str, Any], cwd: str | None = None
) -> list[dict]:
    """One `shell` job per path (argv form: a path with spaces stays one argument), run in `cwd`
    (None: wherever the worker runs)."""
    shared = {k: v for k, v in options.items() if v is not None}
    where = {"cwd": cwd} if cwd else {}
    return [{"type": "shell", "payload": {"command": expand(command, p), **where}, **shared} for p in paths]


def not_succeeded(progress: dict[str, Any]) -> int:
    counts = progress.get("counts") or {}
    return sum(int(counts.get(status, 0)) for status in NOT_SUCCEEDED)


def eta_text(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "ETA unknown"
    if seconds < 60:
        return f"ETA {seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    return f"ETA {minutes} min {secs} s" if minutes < 60 else f"ETA {minutes // 60} h {minutes % 60} min"


def counts_text(progress: dict[str, Any]) -> str:
    """ "195 succeeded · 5 failed · 3 running · 10 queued" (statuses with members, final ones first)."""
    counts = dict(progress.get("counts") or {})
    order = ["succeeded", *NOT_SUCCEEDED, "running", "retrying", "waiting", "queued", "blocked"]
    parts = [f"{counts.pop(s)} {s}" for s in order if counts.get(s)]
    parts += [f"{n} {s}" for s, n in sorted(counts.items()) if n]
    return " · ".join(parts) or "no members"


def batch_line(progress: dict[str, Any]) -> str:
    """batch <id> [name] · 120/200 done (60.0%) · 118 succeeded · 2 failed · ETA 4 s."""
    name = f" {progress['name']}" if progress.get("name") else ""
    head = f"batch {progress.get('id')}{name}"
    done = f"{progress.get('done', 0)}/{progress.get('total', 0)} done ({progress.get('percent', 0)}%)"
    tail = (
        "complete"
        if progress.get("done", 0) >= progress.get("total", 0)
        else eta_text(progress.get("eta_seconds"))
    )
    return " · ".join([head, done, counts_text(progress), tail])


def failure_lines(progress: dict[str, Any], examples: int = 3) -> list[str]:
    """Failures grouped by error: a line per group, then a few examples (job id and message)."""
    lines = []
    for group in progress.get("failures") or []:
        lines.append(f"  {group.get('count')} × {group.get('error')}")
        for example in (group.get("examples") or [])[:examples]:
            message = one_line(example.get("message") or example.get("status") or "", 100)
            lines.append(f"      {example.get('id')}  {message}".rstrip())
    return lines


def node_note(node: dict[str, Any]) -> str:
    if node.get("status") == "blocked":
        return "waits for its parents"
    return outcome(node)


def node_rows(workflow: dict[str, Any]) -> list[list[str]]:
    """The nodes in dependency order (parents before children, then by id), as table rows."""
    return [
        [
            str(node.get("id")),
            str(node.get("status")),
            str(node.get("attempt", 0)),
            str(node.get("job_id")),
            one_line(node_note(node), 80),
        ]
        for node in in_order(workflow)
    ]


def in_order(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    """Nodes sorted by depth (longest chain of `needs` above them), then id."""
    depth = depths(workflow)
    return sorted(workflow.get("nodes") or [], key=lambda n: (depth.get(n.get("id"), 0), str(n.get("id"))))


def depths(workflow: dict[str, Any]) -> dict[Any, int]:
    """Each node's depth: 0 without parents, else 1 + its deepest parent's (cycles cannot occur:
    the API refuses them; a bound keeps a malformed answer from looping)."""
    parents: dict[Any, list[Any]] = {n.get("id"): [] for n in workflow.get("nodes") or []}
    for edge in workflow.get("edges") or []:
        if edge.get("to") in parents and edge.get("from") in parents:
            parents[edge["to"]].append(edge["from"])
    depth = dict.fromkeys(parents, 0)
    for _ in range(len(parents)):
        changed = False
        for node, above in parents.items():
            best = max((depth[p] + 1 for p in above), default=0)
            if best != depth[node]:
                depth[node], changed = best, True
        if not changed:
            break
    return depth


def workflow_line(workflow: dict[str, Any]) -> str:
    """workflow <id> [name] · running · 2 succeeded · 1 running · 1 blocked."""
    name = f" {workflow['name']}" if workflow.get("name") else ""
    counts = counts_text({"counts": workflow.get("counts") or {}})
    return f"workflow {workflow.get('id')}{name} · {workflow.get('status')} · {counts}"


def workflow_text(workflow: dict[str, Any]) -> str:
    return workflow_line(workflow) + "\n" + table(NODE_HEADERS, node_rows(workflow))


def node_changes(before: dict[str, str], workflow: dict[str, Any]) -> list[str]:
    """Lines for nodes whose status differs from `before` (id → status); updates `before`."""
    lines = []
    for node in in_order(workflow):
        node_id, status = str(node.get("id")), str(node.get("status"))
        if before.get(node_id) != status:
            note = node_note(node) if status not in ("queued", "running", "succeeded") else ""
            lines.append(f"{node_id}: {status}" + (f" · {one_line(note, 100)}" if note else ""))
            before[node_id] = status
    return lines
