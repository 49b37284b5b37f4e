"""Map nodes: a workflow node that runs one job per item of a list in an upstream node's result.

A map node is stored like any node (`blocked` until its `needs` succeeded). When the gate keeper
would release it, it fans out instead, in the same transaction: the node moves to `running` (its
guarded save decides, so it fans out once) and one item job per list element is stored, each
with the element in `payload.item` and its position in `payload.index`. Every item has an edge to
the map node (`on: finished`), so the map node's edges say which items are still open, and when
the last one closes the gate keeper joins them: the node succeeds with their results in item
order, or fails naming the items that did not succeed. With `parallel: N`, item i + N waits for
item i (`on: finished`): at most N items are queued or running at once, and each that ends lets
the next one go, through the same gate keeper.

Pure: the gate keeper (gates.settle) does the reads and writes.
"""

from typing import Any

from .gates import InputMissing, as_dict, resolve_pointer, split_ref
from .ids import new_id
from .lifecycle import JobRecord, Joined, new_job

# Most items one map node fans out into (like a batch's members).
MAX_ITEMS = 10_000
# Items a failed map node's error lists.
FAILED_SHOWN = 20
_NODE_MAX = 128  # jobs.node's width


def items_of(node: JobRecord, results: dict[str, Any]) -> list[Any]:
    """The list the map node runs over, from its parents' results (by node name); InputMissing
    when the reference does not lead to a list (or to one over MAX_ITEMS long)."""
    over = (node.map or {})["over"]
    name, pointer = split_ref(over)
    if name not in results:
        raise InputMissing(f"map.over {over!r}: no result from {name!r}")
    try:
        found = resolve_pointer(results[name], pointer)
    except InputMissing as exc:
        raise InputMissing(f"map.over: {exc} of {name!r}") from None
    if not isinstance(found, list):
        raise InputMissing(f"map.over {over!r} is {type(found).__name__}, not a list")
    if len(found) > MAX_ITEMS:
        raise InputMissing(f"map.over {over!r}: {len(found)} items exceeds the limit of {MAX_ITEMS}")
    return found


def item_name(node: str | None, index: int) -> str:
    suffix = f"[{index}]"
    return f"{(node or 'map')[: _NODE_MAX - len(suffix)]}{suffix}"


def fan_out(
    node: JobRecord, payload: Any, items: list[Any], now: float
) -> tuple[list[JobRecord], list[dict[str, Any]]]:
    """The item jobs of a map node (the first `parallel` queued, the rest blocked) and their edges:
    each to the map node, and item i's to item i + parallel."""
    parallel = (node.map or {}).get("parallel") or len(items) or 1
    jobs: list[JobRecord] = []
    edges: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        job = new_job(
            id=new_id(now),
            owner_id=node.owner_id,
            now=now,
            traceparent=node.traceparent,
            blocked=index >= parallel,
            type=node.type,
            queue=node.queue,
            priority=node.priority,
            payload=as_dict(payload) | {"item": item, "index": index},
            labels=node.labels,
            timeout_s=node.timeout_s,
            max_attempts=node.max_attempts,
            backoff=node.backoff,
            idempotency_key=None,
            batch_id=node.batch_id,
            workflow_id=node.workflow_id,
            node=item_name(node.node, index),
            map={"of": node.id, "index": index},
            # The map node's gates hold each item: its time, its approval, its keys.
            run_at=node.run_at,
            approval=None if node.approval is None else {**node.approval, "decision": None},
            concurrency_key=node.concurrency_key,
            concurrency=node.concurrency,
            rate_key=node.rate_key,
            rate=node.rate,
        )
        jobs.append(job)
        edges.append(_edge(job.id, node.id))
        if index >= parallel:
            edges.append(_edge(jobs[index - parallel].id, job.id))
    return jobs, edges


def _edge(parent: str, child: str) -> dict[str, Any]:
    return {"parent_id": parent, "child_id": child, "on": "finished", "state": "open"}


def join(node: JobRecord, items: list[JobRecord], now: float) -> Joined:
    """What a map node whose items have all ended becomes: their results in order, or a failure
    naming the items that did not succeed (the first FAILED_SHOWN of them)."""
    mine = sorted(
        (j for j in items if (j.map or {}).get("of") == node.id), key=lambda j: (j.map or {})["index"]
    )
    failed = [j for j in mine if j.status != "succeeded"]
    if not failed:
        return Joined(now, result=[j.result for j in mine])
    first = failed[0]
    why = (first.error or {}).get("message") or first.status
    message = (
        f"{len(failed)} of {len(mine)} items did not succeed; "
        f"item {(first.map or {})['index']} ({first.id}) {first.status}: {why}"
    )
    shown = [
        {
            "index": (j.map or {})["index"],
            "id": j.id,
            "status": j.status,
            "error": (j.error or {}).get("type"),
        }
        for j in failed[:FAILED_SHOWN]
    ]
    return Joined(now, error={"type": "MapItemFailed", "message": message, "items": shown})
