"""The REST contract (docs/api.md) as request descriptions, shared by the sync and async clients."""

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from ._sse import SSEEvent

FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "dead", "skipped"})
JOBS = "/api/v1/jobs"
BATCHES = "/api/v1/batches"
WORKFLOWS = "/api/v1/workflows"
# A workflow's own status (derived from its nodes) once none of them may run any more.
WORKFLOW_FINAL = frozenset({"succeeded", "failed", "cancelled", "completed"})
QUEUES = "/api/v1/queues"
CHECKPOINTS = "/api/v1/checkpoints"
INPUTS = "/api/v1/inputs"
CHECKPOINT_STATUSES = ("pending", "approved", "rejected", "answered", "expired")
# Values are always str; the union is httpx's own (its `params` takes this list type, and list is
# invariant, so list[tuple[str, str]] would not do).
Params = list[tuple[str, str | int | float | bool | None]]


def _same(data: Any) -> Any:
    return data


@dataclass(frozen=True)
class Call:
    """One HTTP request and how to turn its JSON answer into the SDK's return value."""

    method: str
    path: str
    params: Params | None = None
    body: Any = None
    unwrap: Callable[[Any], Any] = _same
    # Statuses besides 2xx whose body is an answer, not an error (readyz's 503 "unready").
    accept: frozenset[int] = field(default_factory=frozenset)


def job_path(job_id: str, suffix: str = "") -> str:
    # Quote so an id with "/" or "?" can't address another route.
    return f"{JOBS}/{quote(str(job_id), safe='')}{suffix}"


def job_spec(type: str, payload: Any = None, **options: Any) -> dict[str, Any]:
    """A JobCreate body; options left as None are omitted so the server's defaults apply."""
    spec: dict[str, Any] = {"type": type, "payload": payload}
    spec.update({k: v for k, v in options.items() if v is not None})
    return spec


GATES = ("run_at", "delay_s", "concurrency", "rate", "approval")


def gate_fields(**gates: Any) -> dict[str, Any]:
    """The gate fields of a submit (docs/gates.md); a datetime `run_at` becomes RFC 3339 text."""
    unknown = set(gates) - set(GATES)
    if unknown:
        raise TypeError(f"unknown submit option(s): {', '.join(sorted(unknown))}")
    if isinstance(gates.get("run_at"), datetime):
        gates["run_at"] = gates["run_at"].isoformat()
    return {k: dict(v) if isinstance(v, Mapping) else v for k, v in gates.items() if v is not None}


def submit(spec: dict[str, Any]) -> Call:
    return Call("POST", JOBS, body=spec)


def submit_batch(specs: Iterable[Mapping[str, Any]]) -> Call:
    return Call("POST", f"{JOBS}:batch", body={"jobs": [dict(s) for s in specs]}, unwrap=lambda d: d["jobs"])


def get(job_id: str) -> Call:
    return Call("GET", job_path(job_id))


def _timestamp(value: str | datetime) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def list_params(
    status: str | Iterable[str] | None = None,
    queue: str | None = None,
    type: str | None = None,
    label: str | None = None,
    created_after: str | datetime | None = None,
    created_before: str | datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Params:
    """Query parameters of GET /api/v1/jobs; `status` may be several (the API ORs them)."""
    params: Params = []
    statuses = [status] if isinstance(status, str) else list(status or [])
    params += [("status", s) for s in statuses]
    for name, value in (("queue", queue), ("type", type), ("label", label), ("cursor", cursor)):
        if value is not None:
            params.append((name, str(value)))
    if created_after is not None:
        params.append(("created_after", _timestamp(created_after)))
    if created_before is not None:
        params.append(("created_before", _timestamp(created_before)))
    params.append(("limit", str(limit)))
    return params


def list_jobs(params: Params) -> Call:
    return Call("GET", JOBS, params=params)


def cancel(job_id: str) -> Call:
    return Call("POST", job_path(job_id, "/cancel"))


def retry(job_id: str, delay_s: float | None = None) -> Call:
    params: Params = [("delay_s", str(delay_s))] if delay_s is not None else []
    return Call("POST", job_path(job_id, "/retry"), params=params or None)


def logs(job_id: str, after: int = 0, limit: int = 1000) -> Call:
    return Call("GET", job_path(job_id, "/logs"), params=[("after", str(after)), ("limit", str(limit))])


def _at(base: str, item_id: str, suffix: str = "") -> str:
    return f"{base}/{quote(str(item_id), safe='')}{suffix}"


def create_batch(
    specs: Iterable[Mapping[str, Any]],
    name: str | None = None,
    callbacks: Mapping[str, Any] | None = None,
    parallel: int | None = None,
) -> Call:
    """POST /api/v1/batches; `callbacks` maps on_success/on_failure/on_complete to a job spec;
    `parallel`: at most this many members queued or running at once."""
    body: dict[str, Any] = {"jobs": [dict(s) for s in specs]}
    if name is not None:
        body["name"] = name
    if parallel is not None:
        body["parallel"] = parallel
    body.update({k: dict(v) for k, v in (callbacks or {}).items() if v is not None})
    return Call("POST", BATCHES, body=body)


def batch(batch_id: str) -> Call:
    return Call("GET", _at(BATCHES, batch_id))


def batch_artifacts(batch_id: str) -> Call:
    return Call("GET", _at(BATCHES, batch_id, "/artifacts"))


def retry_batch(batch_id: str) -> Call:
    return Call("POST", _at(BATCHES, batch_id, "/retry"))


def cancel_batch(batch_id: str) -> Call:
    return Call("POST", _at(BATCHES, batch_id, "/cancel"))


def submit_workflow(spec: Mapping[str, Any]) -> Call:
    return Call("POST", WORKFLOWS, body=dict(spec))


def workflow(workflow_id: str) -> Call:
    return Call("GET", _at(WORKFLOWS, workflow_id))


def cancel_workflow(workflow_id: str) -> Call:
    return Call("POST", _at(WORKFLOWS, workflow_id, "/cancel"))


def retry_workflow_node(workflow_id: str, node: str) -> Call:
    return Call("POST", _at(WORKFLOWS, workflow_id, "/retry"), body={"node": node})


def batch_done(progress: Mapping[str, Any]) -> bool:
    """Every member of the batch has ended (its progress as GET /api/v1/batches/{id} answers it)."""
    return bool(progress.get("done", 0) >= progress.get("total", 0))


def workflow_done(workflow: Mapping[str, Any]) -> bool:
    """No node of the workflow may run any more."""
    return workflow.get("status") in WORKFLOW_FINAL


def whoami() -> Call:
    return Call("GET", "/api/v1/whoami")


def keys_create(name: str, role: str) -> Call:
    return Call("POST", "/api/v1/keys", body={"name": name, "role": role})


def keys_list() -> Call:
    return Call("GET", "/api/v1/keys", unwrap=lambda d: d["keys"])


def keys_revoke(key_id: str) -> Call:
    return Call("DELETE", f"/api/v1/keys/{quote(str(key_id), safe='')}", unwrap=lambda d: None)


def readyz() -> Call:
    return Call("GET", "/readyz", accept=frozenset({503}))


def queues() -> Call:
    return Call("GET", QUEUES, unwrap=lambda d: d["queues"])


def pause_queue(queue: str) -> Call:
    return Call("POST", f"{QUEUES}/{quote(str(queue), safe='')}/pause")


def resume_queue(queue: str) -> Call:
    return Call("POST", f"{QUEUES}/{quote(str(queue), safe='')}/resume")


def workers() -> Call:
    return Call("GET", "/api/v1/workers", unwrap=lambda d: d["workers"])


def doctor() -> Call:
    return Call("GET", "/api/v1/doctor")


def control_worker(worker_id: str, action: str) -> Call:
    return Call("POST", f"/api/v1/workers/{quote(str(worker_id), safe='')}/{action}")


def pause_all(paused: bool) -> Call:
    return Call("POST", f"{QUEUES}:{'pause' if paused else 'resume'}")


def audit(
    actor: str | None = None,
    action: str | None = None,
    since: str | None = None,
    outcome: str | None = None,
    cursor: int | None = None,
    limit: int = 100,
) -> Call:
    given = {"actor": actor, "action": action, "since": since, "outcome": outcome, "cursor": cursor}
    params: Params = [(k, str(v)) for k, v in given.items() if v is not None]
    params.append(("limit", limit))
    return Call("GET", "/api/v1/audit", params=params)


def notifications(job_id: str) -> Call:
    return Call("GET", job_path(job_id, "/notifications"))


def checkpoint_path(ck_id: str, suffix: str = "") -> str:
    return f"{CHECKPOINTS}/{quote(str(ck_id), safe='')}{suffix}"


def checkpoints(status: str | None = "pending", job_id: str | None = None, limit: int = 100) -> Call:
    """GET /api/v1/checkpoints, newest first; `status` None (or "all") lists every status."""
    params: Params = [("limit", str(limit))]
    if status is not None and status != "all":
        params.append(("status", status))
    if job_id is not None:
        params.append(("job_id", str(job_id)))
    return Call("GET", CHECKPOINTS, params=params, unwrap=lambda d: d["checkpoints"])


def checkpoint(ck_id: str) -> Call:
    return Call("GET", checkpoint_path(ck_id))


def approve(ck_id: str, reason: str | None = None) -> Call:
    return Call("POST", checkpoint_path(ck_id, "/approve"), body={} if reason is None else {"reason": reason})


def reject(ck_id: str, reason: str) -> Call:
    return Call("POST", checkpoint_path(ck_id, "/reject"), body={"reason": reason})


def answer(ck_id: str, answer: Any, reason: str | None = None) -> Call:
    body: dict[str, Any] = {"answer": answer}
    if reason is not None:
        body["reason"] = reason
    return Call("POST", checkpoint_path(ck_id, "/answer"), body=body)


def messages(job_id: str, after: int = 0, limit: int = 500) -> Call:
    """GET /api/v1/jobs/{id}/messages: the thread after message id `after`, oldest first."""
    return Call("GET", job_path(job_id, "/messages"), params=[("after", str(after)), ("limit", str(limit))])


def post_message(job_id: str, text: str, reply_to: str | None = None) -> Call:
    body: dict[str, Any] = {"text": text}
    if reply_to is not None:
        body["reply_to"] = reply_to
    return Call("POST", job_path(job_id, "/messages"), body=body)


class LogFollow:
    """State of one follow_logs(): the last seq seen (to resume after a drop) and the retry budget."""

    # Consecutive failed (re)connections before giving up; any received line resets the count.
    MAX_FAILURES = 8

    def __init__(self, job_id: str, after: int) -> None:
        self.path = job_path(job_id, "/logs/stream")
        self.after = after
        self.failures = 0
        self.end: dict[str, Any] | None = None

    @property
    def params(self) -> Params:
        return [("after", str(self.after))]

    def on_event(self, event: SSEEvent) -> dict[str, Any] | None:
        """The log line carried by `event`, or None (end marker, duplicate, unknown event)."""
        if event.event == "end":
            try:
                end = json.loads(event.data) if event.data else {}
            except ValueError:
                end = {}
            self.end = end if isinstance(end, dict) else {}
            return None
        if event.event != "log":
            return None
        try:
            line = json.loads(event.data)
        except ValueError:
            line = None
        if not isinstance(line, dict):
            # Not the documented shape; still show it rather than lose output.
            line = {"seq": None, "stream": "log", "line": event.data}
        seq = line.get("seq")
        if isinstance(seq, int):
            if seq <= self.after:
                return None  # already delivered before a reconnect
            self.after = seq
            self.failures = 0  # progress: a later drop gets a fresh retry budget
        return line

    def backoff(self) -> float | None:
        """Delay before the next reconnect, or None when the budget is spent."""
        self.failures += 1
        if self.failures > self.MAX_FAILURES:
            return None
        return min(0.2 * 2 ** (self.failures - 1), 5.0)


SCHEDULES = "/api/v1/schedules"


def schedule_path(schedule_id: str, suffix: str = "") -> str:
    return f"{SCHEDULES}/{quote(str(schedule_id), safe='')}{suffix}"


def schedule_create(body: dict[str, Any]) -> Call:
    return Call("POST", SCHEDULES, body=body)


def schedules(limit: int = 200) -> Call:
    return Call("GET", SCHEDULES, params=[("limit", str(limit))], unwrap=lambda d: d["schedules"])


def schedule(schedule_id: str, history: int = 20) -> Call:
    return Call("GET", schedule_path(schedule_id), params=[("history", str(history))])


def schedule_action(schedule_id: str, action: str) -> Call:
    """POST /schedules/{id}/pause|resume|trigger."""
    return Call("POST", schedule_path(schedule_id, f"/{action}"))


def schedule_update(schedule_id: str, changes: dict[str, Any]) -> Call:
    return Call("PATCH", schedule_path(schedule_id), body=changes)


def schedule_delete(schedule_id: str) -> Call:
    return Call("DELETE", schedule_path(schedule_id))


COSTS = "/api/v1/costs"


def costs(since: str = "7d", by: str = "queue") -> Call:
    return Call("GET", COSTS, params=[("since", since), ("by", by)])


def cost_estimate(job_type: str, count: int, queue: str | None = None) -> Call:
    params: Params = [("type", job_type), ("count", count)]
    if queue:
        params.append(("queue", queue))
    return Call("GET", f"{COSTS}/estimate", params=params)


def job_costs(job_id: str) -> Call:
    return Call("GET", _at(JOBS, job_id, "/costs"))
