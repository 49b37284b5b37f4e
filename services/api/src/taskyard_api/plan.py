"""Checking work made of many jobs before anything is stored: names, references, cycles.

Pure: the API turns a batch request's `name`/`depends_on` or a workflow's `id`/`needs` into
`Item`s, and `check_graph` refuses what can never run, naming the item, with nothing written.
"""

from dataclasses import dataclass, field, replace
from typing import Any

from .failures import Invalid
from .ids import JOB_ID
from .schemas import Dependency, JobFields


@dataclass(frozen=True)
class Item:
    """One job of a request: its spec, where it is in the request (the field prefix: "",
    "jobs[3].", "nodes[2]."), its name there, its parents (names in the request or ids of stored
    jobs; the field that lists them) and its workflow inputs."""

    spec: JobFields
    where: str = ""
    name: str | None = None
    parents: list[Dependency] = field(default_factory=list)
    inputs: dict[str, str] | None = None
    # A workflow's map node: {"over": "<node>/<pointer>", "parallel": N | None}.
    map: dict[str, Any] | None = None
    parents_field: str = "depends_on"
    name_field: str = "name"
    # A preset job id: a schedule's fire row names its job in the transaction that inserts both.
    id: str | None = None

    def field(self, name: str) -> str:
        return f"{self.where}{name}"


def check_graph(items: list[Item]) -> list[str]:
    """Refuse duplicate names, parents that are neither a name here nor a job id, and cycles.
    Returns the ids of stored jobs named as parents (the caller checks they exist)."""
    names: dict[str, Item] = {}
    for item in items:
        if item.name is None:
            continue
        if item.name in names:
            raise Invalid(f"{item.field(item.name_field)}: {item.name!r} is used twice")
        names[item.name] = item
    stored: list[str] = []
    for item in items:
        seen: set[str] = set()
        for dep in item.parents:
            if dep.job in seen:
                raise Invalid(f"{item.field(item.parents_field)}: {dep.job!r} is named twice")
            seen.add(dep.job)
            if dep.job in names:
                continue
            if not JOB_ID.fullmatch(dep.job):
                raise Invalid(
                    f"{item.field(item.parents_field)}: unknown {dep.job!r} (neither a job id nor a name in this request)"
                )
            stored.append(dep.job)
        for key, ref in (item.inputs or {}).items():
            node = ref.partition("/")[0]
            if node not in seen:
                raise Invalid(f"{item.field('inputs')}.{key}: {node!r} is not among its {item.parents_field}")
        if item.map is not None and (node := item.map["over"].partition("/")[0]) not in seen:
            raise Invalid(f"{item.field('map')}.over: {node!r} is not among its {item.parents_field}")
    _refuse_cycles(items, names)
    return stored


def _refuse_cycles(items: list[Item], names: dict[str, Item]) -> None:
    """Kahn's algorithm over the in-request edges; what is left over lies on a cycle."""
    children: dict[str, list[str]] = {}
    waiting: dict[str, int] = {}
    for item in items:
        if item.name is None:
            continue
        inside = [d.job for d in item.parents if d.job in names]
        waiting[item.name] = len(inside)
        for parent in inside:
            children.setdefault(parent, []).append(item.name)
    ready = [name for name, n in waiting.items() if n == 0]
    while ready:
        for child in children.get(ready.pop(), []):
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    stuck = {name for name, n in waiting.items() if n > 0}
    if stuck:
        cycle = _cycle(names, stuck)
        first = names[cycle[0]]
        raise Invalid(f"{first.field(first.parents_field)}: a cycle ({' → '.join(cycle)})")


def _cycle(names: dict[str, Item], stuck: set[str]) -> list[str]:
    """One cycle through the stuck nodes, for the message: each stuck node has a stuck parent,
    so following those from any of them repeats a node."""
    node = min(stuck)
    path = [node]
    while True:
        node = min(d.job for d in names[node].parents if d.job in stuck)
        if node in path:
            return [*path[path.index(node) :], node]
        path.append(node)


def with_notify(items: list[Item], notify: Any) -> list[Item]:
    """A batch's or workflow's `notify` is each member's webhook, unless the member has its own."""
    if notify is None:
        return items
    return [replace(i, spec=i.spec.model_copy(update={"notify": i.spec.notify or notify})) for i in items]


def as_items(jobs: list[Any], many: bool) -> list[Item]:
    """Items of POST /jobs (`many` False) or a batch request (JobCreate members)."""
    return [
        Item(spec=j, where=f"jobs[{i}]." if many else "", name=j.name, parents=j.parents())
        for i, j in enumerate(jobs)
    ]


def workflow_items(nodes: list[Any]) -> list[Item]:
    """Items of a workflow's nodes: `id` is the name, `needs` the parents (on success)."""
    return [
        Item(
            spec=n,
            where=f"nodes[{i}].",
            name=n.id,
            parents=[Dependency(job=p) for p in n.needs],
            inputs=n.inputs or None,
            map=n.map.model_dump() if n.map else None,
            parents_field="needs",
            name_field="id",
        )
        for i, n in enumerate(nodes)
    ]
