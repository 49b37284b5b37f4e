"""Client (sync) and AsyncClient for the Taskyard REST API (docs/api.md).

    from taskyard import Client
    with Client() as ty:                      # URL and key from args, env, or data/credentials.json
        job = ty.submit("shell", {"command": ["echo", "hi"]})
        for line in ty.follow_logs(job["id"]):
            print(line["line"])
        print(ty.wait(job["id"])["status"])

Every method raises TaskyardError on a non-2xx answer (status_code, detail) or when the API
cannot be reached (status_code 0).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from . import _calls, _files
from ._calls import FINAL_STATUSES, Call, LogFollow
from ._config import resolve
from ._spread import AsyncSpread, Spread, parse_urls
from ._sse import SSEDecoder
from .errors import JobFailed, TaskyardError, error_from_response, unreachable

__all__ = ["AsyncClient", "Client", "FINAL_STATUSES", "JobFailed", "TaskyardError"]

Job = dict[str, Any]
# The classes below define a `list` method, which shadows the builtin in their annotations.
Records = list[dict[str, Any]]
Paths = list[Path]  # `list` is also a Client method: annotations below it name this alias
# A log stream may be silent for long stretches (a quiet job); past this we reconnect rather than
# trust a connection that might be half-open. Resuming from the last seq loses nothing.
STREAM_IDLE_S = 60.0

try:
    _VERSION = version("taskyard")
except PackageNotFoundError:  # running from a source tree without installing
    _VERSION = "0"


class _Base:
    """Configuration and response handling shared by Client and AsyncClient."""

    def __init__(self, url: str | None, api_key: str | None, timeout: float) -> None:
        url, self.api_key = resolve(url, api_key)
        # Several api processes may be named, comma-separated (_spread); `url` is the first.
        self.urls = parse_urls(url)
        self.url = str(self.urls[0])
        self.timeout = timeout
        self._headers = {"User-Agent": f"taskyard-python/{_VERSION}", "Accept": "application/json"}
        if self.api_key:
            self._headers["Authorization"] = f"Bearer {self.api_key}"

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}(url={self.url!r})"

    def _stream_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, read=max(self.timeout, STREAM_IDLE_S))

    def _finish(self, call: Call, response: httpx.Response) -> Any:
        if not (response.is_success or response.status_code in call.accept):
            raise error_from_response(response)
        if response.status_code == 204 or not response.content:
            return call.unwrap(None)
        try:
            data = response.json()
        except ValueError:
            raise TaskyardError(
                0, f"{self.url} answered HTTP {response.status_code} without JSON: is it a Taskyard API?"
            ) from None
        return call.unwrap(data)

    @staticmethod
    def _final(job: Job, raise_on_failure: bool) -> Job:
        if raise_on_failure and job.get("status") != "succeeded":
            raise JobFailed(job)
        return job


class Client(_Base):
    """Synchronous client. `url`/`api_key` default to TASKYARD_URL / TASKYARD_API_KEY, then the
    credentials file ($TASKYARD_CREDENTIALS or ./data/credentials.json), then http://127.0.0.1:8740.
    `timeout` is the per-request timeout in seconds. Use as a context manager or call close().
    """

    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 30) -> None:
        super().__init__(url, api_key, timeout)
        spread = Spread(self.urls) if len(self.urls) > 1 else None
        self._http = httpx.Client(base_url=self.url, headers=self._headers, timeout=timeout, transport=spread)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _call(self, call: Call) -> Any:
        try:
            response = self._http.request(call.method, call.path, params=call.params, json=call.body)
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        return self._finish(call, response)

    # Jobs

    def submit(
        self,
        type: str,
        payload: Any = None,
        *,
        queue: str | None = None,
        priority: str | None = None,
        timeout_s: float | None = None,
        max_attempts: int | None = None,
        backoff: Mapping[str, float] | None = None,
        idempotency_key: str | None = None,
        labels: Mapping[str, str] | None = None,
        inputs: list[dict[str, Any]] | None = None,
        outputs: list[str] | None = None,
        **gates: Any,
    ) -> Job:
        """Submit one job; returns it (the existing job when `idempotency_key` matched one).
        Options left as None take the server's defaults. `inputs` are refs from upload_inputs();
        `outputs` are globs relative to the job's working directory, collected after the run.
        `gates` (docs/gates.md): run_at (an aware datetime or RFC 3339 text), delay_s,
        concurrency={"key", "limit", "strategy"}, rate={"key", "per_s", "burst"},
        approval={"approvers": [...]}."""
        spec = _calls.job_spec(
            type, payload, queue=queue, priority=priority, timeout_s=timeout_s, max_attempts=max_attempts,
            backoff=dict(backoff) if backoff else None, idempotency_key=idempotency_key,
            labels=dict(labels) if labels else None, inputs=inputs or None, outputs=outputs or None,
            **_calls.gate_fields(**gates),
        )  # fmt: skip
        return self._call(_calls.submit(spec))

    # Files

    def upload_input(self, path: str | Path, name: str | None = None) -> dict[str, Any]:
        """Upload one file (streamed; skipped when the server has its sha256 already); returns the
        input ref {"path", "sha256", "size"} for submit(inputs=[...]). `name` defaults to the
        file's base name: where the job finds it in its working directory."""
        path = Path(path)
        sha = _files.sha256_of(path)
        size = path.stat().st_size
        at = f"{_calls.INPUTS}/{sha}"
        try:
            known = self._http.get(at)
            if known.status_code == 404:
                headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
                known = self._http.put(
                    at, content=_files.file_chunks(path), headers=headers, timeout=self._stream_timeout()
                )
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        if not known.is_success:
            raise error_from_response(known)
        return {"path": name or path.name, "sha256": sha, "size": size}

    def upload_inputs(self, paths: list[str]) -> list[dict[str, Any]]:
        """Upload files and directories (as `--input` names them: see _files.expand_inputs)."""
        return [self.upload_input(local, name) for name, local in _files.expand_inputs(paths)]

    def artifacts(self, job_id: str) -> dict[str, Any]:
        """The job's inputs and outputs: {"inputs": [...], "outputs": [{name, size, sha256, url}]}."""
        return self._call(_calls.Call("GET", _calls.job_path(job_id, "/artifacts")))

    def download(self, job_id: str, name: str, to: str | Path = ".") -> Path:
        """Stream output `name` to `to`/`name`; checks size and sha256 before the file appears."""
        target = _files.safe_target(Path(to), name)
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}.part")
        digest, size = hashlib.sha256(), 0
        url = _calls.job_path(job_id, "/artifacts/" + quote(name))
        try:
            with self._http.stream("GET", url, timeout=self._stream_timeout()) as response:
                if not response.is_success:
                    response.read()
                    raise error_from_response(response)
                expected = response.headers.get("x-taskyard-sha256")
                with open(part, "wb") as out:
                    for chunk in response.iter_bytes(_files.CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
        except httpx.TransportError as exc:
            part.unlink(missing_ok=True)
            raise unreachable(self.url, exc) from exc
        if expected and digest.hexdigest() != expected:
            part.unlink(missing_ok=True)
            raise TaskyardError(0, f"download of {name!r}: sha256 {digest.hexdigest()} is not {expected}")
        part.replace(target)
        return target

    def download_all(self, job_id: str, to: str | Path = ".") -> list[Path]:
        """Every output of the job under `to` (kept relative paths)."""
        return [self.download(job_id, item["name"], to) for item in self.artifacts(job_id)["outputs"]]

    def submit_batch(self, specs: Iterable[Mapping[str, Any]]) -> list[Job]:
        """Submit many jobs atomically (JobCreate dicts, e.g. {"type": "noop", "queue": "q"}); jobs in order."""
        return self._call(_calls.submit_batch(specs))

    def get(self, job_id: str) -> Job:
        """One job, with its `timeline`."""
        return self._call(_calls.get(job_id))

    def list(
        self,
        status: str | Iterable[str] | None = None,
        queue: str | None = None,
        type: str | None = None,
        label: str | None = None,
        created_after: str | datetime | None = None,
        created_before: str | datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page of jobs, newest first: {"jobs": [...], "next_cursor": str | None}.
        `label` is "key=value"; `status` may be a list (any of them)."""
        params = _calls.list_params(status, queue, type, label, created_after, created_before, limit, cursor)
        return self._call(_calls.list_jobs(params))

    def iter_jobs(
        self,
        status: str | Iterable[str] | None = None,
        queue: str | None = None,
        type: str | None = None,
        label: str | None = None,
        created_after: str | datetime | None = None,
        created_before: str | datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Iterator[Job]:
        """Every matching job, newest first, fetching pages of `limit` as it goes."""
        # A generator of statuses would be used up by the first page.
        statuses = [status] if isinstance(status, str) else None if status is None else [*status]
        while True:
            page = self.list(statuses, queue, type, label, created_after, created_before, limit, cursor)
            yield from page["jobs"]
            cursor = page.get("next_cursor")
            if not cursor or not page["jobs"]:
                return

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued, retrying or running job (409 if already final)."""
        return self._call(_calls.cancel(job_id))

    def retry(self, job_id: str, delay_s: float | None = None) -> Job:
        """Queue a failed, dead or cancelled job again with a fresh attempt count (`scheduled`
        for `delay_s` seconds first, if given)."""
        return self._call(_calls.retry(job_id, delay_s))

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll: float = 0.25,
        *,
        raise_on_failure: bool = False,
        on_change: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll until the job is final (succeeded, failed, cancelled, dead, skipped) and return it.

        Raises TimeoutError after `timeout` seconds, and JobFailed for a final status other than
        succeeded when `raise_on_failure` is set. `on_change(job)` is called with every poll's job
        (the CLI prints the ones that differ).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if on_change is not None:
                on_change(job)
            if job.get("status") in FINAL_STATUSES:
                return self._final(job, raise_on_failure)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.get('status')} after {timeout}s")
            pause = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
            time.sleep(pause)

    # Logs

    def logs(self, job_id: str, after: int = 0, limit: int = 1000) -> dict[str, Any]:
        """Stored log lines with seq > `after`: {"lines": [{"seq", "stream", "line", "at", "attempt"}], "next"}."""
        return self._call(_calls.logs(job_id, after, limit))

    def follow_logs(self, job_id: str, after: int = 0) -> Iterator[dict[str, Any]]:
        """Log lines as they are written, until the job is final and every line was sent.

        Reconnects from the last seq seen if the stream drops early; raises TaskyardError when
        reconnecting keeps failing, or at once for a 4xx (unknown job, bad key).
        """
        state = LogFollow(job_id, after)
        while True:
            opened = False
            try:
                with self._http.stream(
                    "GET", state.path, params=state.params, timeout=self._stream_timeout(),
                    headers={"Accept": "text/event-stream"},
                ) as response:  # fmt: skip
                    if response.is_client_error:
                        response.read()
                        raise error_from_response(response)
                    if response.is_success:
                        opened = True
                        decoder = SSEDecoder()
                        for raw in response.iter_lines():
                            event = decoder.feed(raw)
                            line = state.on_event(event) if event else None
                            if line is not None:
                                yield line
                            if state.end is not None:
                                return
                        problem: Exception = TaskyardError(0, "log stream closed before its end event")
                    else:  # 5xx: the API or one of its dependencies is restarting
                        response.read()
                        problem = error_from_response(response)
            except httpx.TransportError as exc:
                if opened and isinstance(exc, httpx.ReadTimeout):
                    continue  # idle, not broken: reconnect without spending the budget
                problem = unreachable(self.url, exc)
            delay = state.backoff()
            if delay is None:
                raise problem
            time.sleep(delay)

    # Work made of many jobs: batches and workflows

    def create_batch(
        self,
        specs: Iterable[Mapping[str, Any]],
        *,
        name: str | None = None,
        on_success: Mapping[str, Any] | None = None,
        on_failure: Mapping[str, Any] | None = None,
        on_complete: Mapping[str, Any] | None = None,
        parallel: int | None = None,
    ) -> dict[str, Any]:
        """Submit jobs as one batch: {"batch_id", "jobs"}. The callbacks (job specs) run once when
        the last member has ended: on_success if all succeeded, on_failure if not, on_complete always.
        `parallel`: at most this many members queued or running at once."""
        callbacks = {"on_success": on_success, "on_failure": on_failure, "on_complete": on_complete}
        return self._call(_calls.create_batch(specs, name, callbacks, parallel))

    def batch(self, batch_id: str) -> dict[str, Any]:
        """A batch's progress: {"id", "name", "total", "done", "succeeded", "percent", "counts" (by
        status), "failures" (grouped by error, with examples), "eta_seconds", "created_at", "completed_at"}."""
        return self._call(_calls.batch(batch_id))

    def batch_artifacts(self, batch_id: str) -> dict[str, Any]:
        """Every member's files: {"batch_id", "members": [{"job_id", "status", "inputs", "outputs"}]}."""
        return self._call(_calls.batch_artifacts(batch_id))

    def download_batch(self, batch_id: str, to: str | Path = ".") -> Paths:
        """Every member's outputs, each member's under `to`/<its job id>/ (sha256 checked, streamed)."""
        return [
            self.download(member["job_id"], item["name"], Path(to) / member["job_id"])
            for member in self.batch_artifacts(batch_id)["members"]
            for item in member["outputs"]
        ]

    def retry_batch(self, batch_id: str) -> dict[str, Any]:
        """Run the members that failed, died or were cancelled again: {"retried": n, "refused": [...]}."""
        return self._call(_calls.retry_batch(batch_id))

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """Cancel the members not yet finished: {"cancelled": n, "refused": [...]}."""
        return self._call(_calls.cancel_batch(batch_id))

    def wait_batch(self, batch_id: str, timeout: float | None = None, poll: float = 0.5) -> dict[str, Any]:
        """Poll until every member has ended; returns the progress. TimeoutError after `timeout` s."""
        return self._poll(lambda: self.batch(batch_id), _calls.batch_done, f"batch {batch_id}", timeout, poll)

    def submit_workflow(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Store a workflow ({"name"?, "on_failure"?: stop|continue, "nodes": [{"id", "type",
        "payload", "needs", "inputs", ...}]}); returns it as workflow() does."""
        return self._call(_calls.submit_workflow(spec))

    def workflow(self, workflow_id: str) -> dict[str, Any]:
        """{"id", "name", "status", "on_failure", "counts", "created_at", "nodes": [{"id", "job_id",
        "type", "status", "attempt", "error", "result", "started_at", "finished_at"}], "edges":
        [{"from", "to", "state"}]}; status is running, succeeded, failed, cancelled or completed."""
        return self._call(_calls.workflow(workflow_id))

    def cancel_workflow(self, workflow_id: str) -> dict[str, Any]:
        """Cancel every node not yet finished: {"cancelled": n, "refused": [...]}."""
        return self._call(_calls.cancel_workflow(workflow_id))

    def retry_workflow_node(self, workflow_id: str, node: str) -> Job:
        """Run a failed node again, and the nodes that depend on it; returns the node's job."""
        return self._call(_calls.retry_workflow_node(workflow_id, node))

    def wait_workflow(
        self, workflow_id: str, timeout: float | None = None, poll: float = 0.5
    ) -> dict[str, Any]:
        """Poll until the workflow is no longer running; returns it. TimeoutError after `timeout` s."""
        return self._poll(
            lambda: self.workflow(workflow_id), _calls.workflow_done, f"workflow {workflow_id}", timeout, poll
        )

    @staticmethod
    def _poll(
        read: Callable[[], dict[str, Any]],
        done: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float | None,
        poll: float,
    ) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            seen = read()
            if done(seen):
                return seen
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{what} is not finished after {timeout}s")
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))

    # Keys and identity

    def whoami(self) -> dict[str, Any]:
        """{"name", "role"} of the key in use."""
        return self._call(_calls.whoami())

    def keys_create(self, name: str, role: str) -> dict[str, Any]:
        """Create an API key (admin); the returned "key" is shown only this once."""
        return self._call(_calls.keys_create(name, role))

    def keys_list(self) -> Records:
        """All keys (admin): [{"id", "name", "role", "created_at", "revoked_at"}]."""
        return self._call(_calls.keys_list())

    def keys_revoke(self, key_id: str) -> None:
        """Revoke a key (admin)."""
        self._call(_calls.keys_revoke(key_id))

    def readyz(self) -> dict[str, Any]:
        """{"status": "ready"|"unready", "checks": {...}}; an unready API is an answer, not an error."""
        return self._call(_calls.readyz())

    # Costs (docs/costs.md)

    def costs(self, since: str = "7d", by: str = "queue") -> dict[str, Any]:
        """Totals over the attempts that ended within `since` (30m, 24h, 7d), grouped `by`
        label:<name>, queue, type, batch or workflow: {"by", "since", "until", "groups": [{"key",
        "jobs", "attempts", "cpu_s", "wall_s", "peak_rss_bytes", "costs": [{"unit", "kind",
        "amount"}]}], "total": {...}}."""
        return self._call(_calls.costs(since, by))

    def cost_estimate(self, job_type: str, count: int = 1, queue: str | None = None) -> dict[str, Any]:
        """What `count` jobs of `job_type` will likely use and cost, from its recent jobs:
        {"basis": {"jobs", "attempts", ...}, "per_job": {...} | None, "total": {...} | None}."""
        return self._call(_calls.cost_estimate(job_type, count, queue))

    def job_costs(self, job_id: str) -> dict[str, Any]:
        """Each recorded attempt of a job with its usage and costs: {"job_id", "attempts": [...]}."""
        return self._call(_calls.job_costs(job_id))

    # Operations

    def queues(self) -> Records:
        """Every queue: [{"queue", "paused", "depth", "running", "jobs_per_s_in", "jobs_per_s_out",
        "workers", "slots", "slots_used", "priorities": {"high"|"normal"|"low": {"depth", "running",
        "oldest_waiting_s", "live_pulls", "redelivered"}}}]."""
        return self._call(_calls.queues())

    def pause_queue(self, queue: str) -> dict[str, Any]:
        """Stop starting jobs from `queue` (admin); running jobs finish. {"queue", "paused": True}."""
        return self._call(_calls.pause_queue(queue))

    def resume_queue(self, queue: str) -> dict[str, Any]:
        """Start jobs from a paused `queue` again (admin). {"queue", "paused": False}."""
        return self._call(_calls.resume_queue(queue))

    def workers(self) -> Records:
        """Executors from their heartbeats: [{"id", "host", "pid", "queues", "slots", "slots_used",
        "running", "jobs_done", "jobs_failed", "state", "last_heartbeat_age_s", ...}]; `state` is
        healthy, stale, gone, draining or stuck."""
        return self._call(_calls.workers())

    def doctor(self) -> dict[str, Any]:
        """Health checks (admin): {"ok": bool, "checks": [{"name", "ok", "detail", "fix"}]}."""
        return self._call(_calls.doctor())

    def drain_worker(self, worker_id: str) -> dict[str, Any]:
        """Drain a worker (admin): running jobs finish within its grace or are handed back (no
        attempt spent), then it exits. {"worker", "action", "state_before"}."""
        return self._call(_calls.control_worker(worker_id, "drain"))

    def stop_worker(self, worker_id: str) -> dict[str, Any]:
        """Stop a worker (admin): running jobs are handed back at once, then it exits."""
        return self._call(_calls.control_worker(worker_id, "stop"))

    def pause_all(self, paused: bool = True) -> dict[str, Any]:
        """Pause (or resume) every queue (admin). {"queues": [...], "paused"}."""
        return self._call(_calls.pause_all(paused))

    def audit(self, **filters: Any) -> dict[str, Any]:
        """Audit log page (admin), newest first: {"events": [...], "next_cursor"}; filters: actor,
        action (or a prefix ending in "."), since, outcome ("ok"|"refused"), cursor, limit."""
        return self._call(_calls.audit(**filters))

    def notifications(self, job_id: str) -> dict[str, Any]:
        """A job's webhook and its deliveries: {"notify", "notifications": [{"status", "attempts",
        "deliveries": [{"at", "status_code", "error", "ms"}]}]}."""
        return self._call(_calls.notifications(job_id))

    # Conversations (a job's thread)

    def messages(self, job_id: str, after: int = 0, limit: int = 500) -> dict[str, Any]:
        """The job's thread after message id `after`: {"job_id", "job_status", "messages": [{"id",
        "author_kind" (job|person|taskyard), "author", "text", "created_at", "checkpoint_id"}],
        "open_question": {"id", "name", "message", "choices", ...} or None}."""
        return self._call(_calls.messages(job_id, after, limit))

    def post_message(self, job_id: str, text: str, reply_to: str | None = None) -> dict[str, Any]:
        """Write to the job's thread. While it waits on a question, `text` answers it (`reply_to`
        names the question; default the open one). 403 if this key may not, 409 once the job ended,
        413 over the API's message size limit."""
        return self._call(_calls.post_message(job_id, text, reply_to))

    # Checkpoints (the approvals inbox)

    def checkpoints(
        self, status: str | None = "pending", job_id: str | None = None, limit: int = 100
    ) -> Records:
        """Checkpoints, newest first: [{"id", "job_id", "kind" (approval|question), "name", "message",
        "data", "choices", "approvers", "on_reject", "status", "created_at", "expires_at",
        "decided_at", "decided_by", "reason", "answer"}]. `status` is pending, approved, rejected,
        answered, expired, or None/"all" for every one; `job_id` keeps one job's."""
        return self._call(_calls.checkpoints(status, job_id, limit))

    def checkpoint(self, id: str) -> dict[str, Any]:
        """One checkpoint (404 if unknown)."""
        return self._call(_calls.checkpoint(id))

    # Schedules

    def create_schedule(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a schedule (POST /api/v1/schedules: `cron` or `every_s`, `timezone`, `template`,
        `overlap`, `catch_up`, `catch_up_max`); the answer has its `next_fires`."""
        return self._call(_calls.schedule_create(dict(body)))

    def schedules(self, limit: int = 200) -> Records:
        """Schedules, newest first, each with its next fire times."""
        return self._call(_calls.schedules(limit))

    def schedule(self, id: str, history: int = 20) -> dict[str, Any]:
        """One schedule with its `next_fires` and its `history` most recent fires (`recent_jobs`)."""
        return self._call(_calls.schedule(id, history))

    def update_schedule(self, id: str, **changes: Any) -> dict[str, Any]:
        """Change a schedule's fields (PATCH)."""
        return self._call(_calls.schedule_update(id, changes))

    def pause_schedule(self, id: str) -> dict[str, Any]:
        return self._call(_calls.schedule_action(id, "pause"))

    def resume_schedule(self, id: str) -> dict[str, Any]:
        """Resume from the next fire time (what passed while paused is not caught up)."""
        return self._call(_calls.schedule_action(id, "resume"))

    def trigger_schedule(self, id: str) -> dict[str, Any]:
        """Fire now: {"fire_at", "kind", "outcome" (created|skipped|failed), "reason", "job"}."""
        return self._call(_calls.schedule_action(id, "trigger"))

    def delete_schedule(self, id: str) -> None:
        """Delete a schedule and its fire history; its jobs stay."""
        self._call(_calls.schedule_delete(id))

    def approve(self, id: str, reason: str | None = None) -> dict[str, Any]:
        """Approve a pending approval; the job resumes. Returns the decided checkpoint.
        403 if this key may not decide it, 409 if already decided, expired, or a question."""
        return self._call(_calls.approve(id, reason))

    def reject(self, id: str, reason: str) -> dict[str, Any]:
        """Reject a pending checkpoint with a (required) reason; the job fails with it, or resumes
        with approved=False when the handler asked for on_reject="return"."""
        return self._call(_calls.reject(id, reason))

    def answer(self, id: str, answer: Any, reason: str | None = None) -> dict[str, Any]:
        """Answer a pending question (any JSON value; one of its `choices` if it has them, else 422);
        the job resumes with the answer."""
        return self._call(_calls.answer(id, answer, reason))


class AsyncClient(_Base):
    """The asyncio twin of Client: same constructor and methods, as coroutines (follow_logs and
    iter_jobs are async iterators). Use `async with` or `await aclose()`."""

    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 30) -> None:
        super().__init__(url, api_key, timeout)
        spread = AsyncSpread(self.urls) if len(self.urls) > 1 else None
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._headers, timeout=timeout, transport=spread
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _call(self, call: Call) -> Any:
        try:
            response = await self._http.request(call.method, call.path, params=call.params, json=call.body)
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        return self._finish(call, response)

    async def submit(
        self,
        type: str,
        payload: Any = None,
        *,
        queue: str | None = None,
        priority: str | None = None,
        timeout_s: float | None = None,
        max_attempts: int | None = None,
        backoff: Mapping[str, float] | None = None,
        idempotency_key: str | None = None,
        labels: Mapping[str, str] | None = None,
        **gates: Any,
    ) -> Job:
        """See Client.submit."""
        spec = _calls.job_spec(
            type, payload, queue=queue, priority=priority, timeout_s=timeout_s, max_attempts=max_attempts,
            backoff=dict(backoff) if backoff else None, idempotency_key=idempotency_key,
            labels=dict(labels) if labels else None, **_calls.gate_fields(**gates),
        )  # fmt: skip
        return await self._call(_calls.submit(spec))

    async def submit_batch(self, specs: Iterable[Mapping[str, Any]]) -> list[Job]:
        """See Client.submit_batch."""
        return await self._call(_calls.submit_batch(specs))

    async def get(self, job_id: str) -> Job:
        """See Client.get."""
        return await self._call(_calls.get(job_id))

    async def list(
        self,
        status: str | Iterable[str] | None = None,
        queue: str | None = None,
        type: str | None = None,
        label: str | None = None,
        created_after: str | datetime | None = None,
        created_before: str | datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """See Client.list."""
        params = _calls.list_params(status, queue, type, label, created_after, created_before, limit, cursor)
        return await self._call(_calls.list_jobs(params))

    async def iter_jobs(
        self,
        status: str | Iterable[str] | None = None,
        queue: str | None = None,
        type: str | None = None,
        label: str | None = None,
        created_after: str | datetime | None = None,
        created_before: str | datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> AsyncIterator[Job]:
        """See Client.iter_jobs."""
        statuses = [status] if isinstance(status, str) else None if status is None else [*status]
        while True:
            page = await self.list(statuses, queue, type, label, created_after, created_before, limit, cursor)
            for job in page["jobs"]:
                yield job
            cursor = page.get("next_cursor")
            if not cursor or not page["jobs"]:
                return

    async def cancel(self, job_id: str) -> Job:
        """See Client.cancel."""
        return await self._call(_calls.cancel(job_id))

    async def retry(self, job_id: str, delay_s: float | None = None) -> Job:
        """See Client.retry."""
        return await self._call(_calls.retry(job_id, delay_s))

    async def wait(
        self, job_id: str, timeout: float | None = None, poll: float = 0.25, *, raise_on_failure: bool = False
    ) -> Job:
        """See Client.wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = await self.get(job_id)
            if job.get("status") in FINAL_STATUSES:
                return self._final(job, raise_on_failure)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.get('status')} after {timeout}s")
            pause = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
            await asyncio.sleep(pause)

    async def logs(self, job_id: str, after: int = 0, limit: int = 1000) -> dict[str, Any]:
        """See Client.logs."""
        return await self._call(_calls.logs(job_id, after, limit))

    async def follow_logs(self, job_id: str, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """See Client.follow_logs. To stop early, close it: `async with contextlib.aclosing(...)`."""
        state = LogFollow(job_id, after)
        while True:
            opened = False
            try:
                async with self._http.stream(
                    "GET", state.path, params=state.params, timeout=self._stream_timeout(),
                    headers={"Accept": "text/event-stream"},
                ) as response:  # fmt: skip
                    if response.is_client_error:
                        await response.aread()
                        raise error_from_response(response)
                    if response.is_success:
                        opened = True
                        decoder = SSEDecoder()
                        async for raw in response.aiter_lines():
                            event = decoder.feed(raw)
                            line = state.on_event(event) if event else None
                            if line is not None:
                                yield line
                            if state.end is not None:
                                return
                        problem: Exception = TaskyardError(0, "log stream closed before its end event")
                    else:
                        await response.aread()
                        problem = error_from_response(response)
            except httpx.TransportError as exc:
                if opened and isinstance(exc, httpx.ReadTimeout):
                    continue
                problem = unreachable(self.url, exc)
            delay = state.backoff()
            if delay is None:
                raise problem
            await asyncio.sleep(delay)

    async def create_batch(
        self,
        specs: Iterable[Mapping[str, Any]],
        *,
        name: str | None = None,
        on_success: Mapping[str, Any] | None = None,
        on_failure: Mapping[str, Any] | None = None,
        on_complete: Mapping[str, Any] | None = None,
        parallel: int | None = None,
    ) -> dict[str, Any]:
        """See Client.create_batch."""
        callbacks = {"on_success": on_success, "on_failure": on_failure, "on_complete": on_complete}
        return await self._call(_calls.create_batch(specs, name, callbacks, parallel))

    async def batch(self, batch_id: str) -> dict[str, Any]:
        """See Client.batch."""
        return await self._call(_calls.batch(batch_id))

    async def retry_batch(self, batch_id: str) -> dict[str, Any]:
        """See Client.retry_batch."""
        return await self._call(_calls.retry_batch(batch_id))

    async def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """See Client.cancel_batch."""
        return await self._call(_calls.cancel_batch(batch_id))

    async def submit_workflow(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """See Client.submit_workflow."""
        return await self._call(_calls.submit_workflow(spec))

    async def workflow(self, workflow_id: str) -> dict[str, Any]:
        """See Client.workflow."""
        return await self._call(_calls.workflow(workflow_id))

    async def cancel_workflow(self, workflow_id: str) -> dict[str, Any]:
        """See Client.cancel_workflow."""
        return await self._call(_calls.cancel_workflow(workflow_id))

    async def retry_workflow_node(self, workflow_id: str, node: str) -> Job:
        """See Client.retry_workflow_node."""
        return await self._call(_calls.retry_workflow_node(workflow_id, node))

    async def whoami(self) -> dict[str, Any]:
        """See Client.whoami."""
        return await self._call(_calls.whoami())

    async def keys_create(self, name: str, role: str) -> dict[str, Any]:
        """See Client.keys_create."""
        return await self._call(_calls.keys_create(name, role))

    async def keys_list(self) -> Records:
        """See Client.keys_list."""
        return await self._call(_calls.keys_list())

    async def keys_revoke(self, key_id: str) -> None:
        """See Client.keys_revoke."""
        await self._call(_calls.keys_revoke(key_id))

    async def readyz(self) -> dict[str, Any]:
        """See Client.readyz."""
        return await self._call(_calls.readyz())

    async def costs(self, since: str = "7d", by: str = "queue") -> dict[str, Any]:
        """See Client.costs."""
        return await self._call(_calls.costs(since, by))

    async def cost_estimate(self, job_type: str, count: int = 1, queue: str | None = None) -> dict[str, Any]:
        """See Client.cost_estimate."""
        return await self._call(_calls.cost_estimate(job_type, count, queue))

    async def job_costs(self, job_id: str) -> dict[str, Any]:
        """See Client.job_costs."""
        return await self._call(_calls.job_costs(job_id))

    async def queues(self) -> Records:
        """See Client.queues."""
        return await self._call(_calls.queues())

    async def pause_queue(self, queue: str) -> dict[str, Any]:
        """See Client.pause_queue."""
        return await self._call(_calls.pause_queue(queue))

    async def resume_queue(self, queue: str) -> dict[str, Any]:
        """See Client.resume_queue."""
        return await self._call(_calls.resume_queue(queue))

    async def workers(self) -> Records:
        """See Client.workers."""
        return await self._call(_calls.workers())

    async def doctor(self) -> dict[str, Any]:
        """See Client.doctor."""
        return await self._call(_calls.doctor())

    async def drain_worker(self, worker_id: str) -> dict[str, Any]:
        """See Client.drain_worker."""
        return await self._call(_calls.control_worker(worker_id, "drain"))

    async def stop_worker(self, worker_id: str) -> dict[str, Any]:
        """See Client.stop_worker."""
        return await self._call(_calls.control_worker(worker_id, "stop"))

    async def pause_all(self, paused: bool = True) -> dict[str, Any]:
        """See Client.pause_all."""
        return await self._call(_calls.pause_all(paused))

    async def audit(self, **filters: Any) -> dict[str, Any]:
        """See Client.audit."""
        return await self._call(_calls.audit(**filters))

    async def notifications(self, job_id: str) -> dict[str, Any]:
        """See Client.notifications."""
        return await self._call(_calls.notifications(job_id))

    async def messages(self, job_id: str, after: int = 0, limit: int = 500) -> dict[str, Any]:
        """See Client.messages."""
        return await self._call(_calls.messages(job_id, after, limit))

    async def post_message(self, job_id: str, text: str, reply_to: str | None = None) -> dict[str, Any]:
        """See Client.post_message."""
        return await self._call(_calls.post_message(job_id, text, reply_to))

    async def checkpoints(
        self, status: str | None = "pending", job_id: str | None = None, limit: int = 100
    ) -> Records:
        """See Client.checkpoints."""
        return await self._call(_calls.checkpoints(status, job_id, limit))

    async def checkpoint(self, id: str) -> dict[str, Any]:
        """See Client.checkpoint."""
        return await self._call(_calls.checkpoint(id))

    async def create_schedule(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """See Client.create_schedule."""
        return await self._call(_calls.schedule_create(dict(body)))

    async def schedules(self, limit: int = 200) -> Records:
        """See Client.schedules."""
        return await self._call(_calls.schedules(limit))

    async def schedule(self, id: str, history: int = 20) -> dict[str, Any]:
        """See Client.schedule."""
        return await self._call(_calls.schedule(id, history))

    async def update_schedule(self, id: str, **changes: Any) -> dict[str, Any]:
        """See Client.update_schedule."""
        return await self._call(_calls.schedule_update(id, changes))

    async def pause_schedule(self, id: str) -> dict[str, Any]:
        return await self._call(_calls.schedule_action(id, "pause"))

    async def resume_schedule(self, id: str) -> dict[str, Any]:
        return await self._call(_calls.schedule_action(id, "resume"))

    async def trigger_schedule(self, id: str) -> dict[str, Any]:
        """See Client.trigger_schedule."""
        return await self._call(_calls.schedule_action(id, "trigger"))

    async def delete_schedule(self, id: str) -> None:
        await self._call(_calls.schedule_delete(id))

    async def approve(self, id: str, reason: str | None = None) -> dict[str, Any]:
        """See Client.approve."""
        return await self._call(_calls.approve(id, reason))

    async def reject(self, id: str, reason: str) -> dict[str, Any]:
        """See Client.reject."""
        return await self._call(_calls.reject(id, reason))

    async def answer(self, id: str, answer: Any, reason: str | None = None) -> dict[str, Any]:
        """See Client.answer."""
        return await self._call(_calls.answer(id, answer, reason))
