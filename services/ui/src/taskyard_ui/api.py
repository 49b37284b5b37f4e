"""The UI's only way to the data: the REST API over HTTP, with the signed-in user's key."""

from typing import Any
from urllib.parse import quote

import httpx

from .telemetry import API_ERRORS


class ApiUnavailable(Exception):
    """The API could not be reached (or answered with something that is not the API)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ApiUnauthorized(Exception):
    """The API rejected the key (401): the user must sign in again."""


class ApiError(Exception):
    """Any other 4xx/5xx answer, with the API's one-line detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


def detail_of(resp: httpx.Response) -> str:
    """The API's `{"detail": ...}` as one line; falls back to the status text for non-JSON bodies."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:300] or resp.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):  # FastAPI's default validation shape, in case a route bypasses the API's
        return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg', '')}" for d in detail)
    return resp.reason_phrase


def job_path(job_id: str, suffix: str = "") -> str:
    """API path of one job; the id is percent-encoded so it cannot step into another route."""
    return f"/api/v1/jobs/{quote(job_id, safe='')}{suffix}"


def work_path(kind: str, item_id: str, suffix: str = "") -> str:
    """API path of a batch or a workflow (`kind`: batches or workflows), the id percent-encoded."""
    return f"/api/v1/{kind}/{quote(item_id, safe='')}{suffix}"


def checkpoint_path(ck_id: str, suffix: str = "") -> str:
    return f"/api/v1/checkpoints/{quote(ck_id, safe='')}{suffix}"


def schedule_path(schedule_id: str, suffix: str = "") -> str:
    return f"/api/v1/schedules/{quote(schedule_id, safe='')}{suffix}"


def api_headers(key: str, browser: str | None) -> dict[str, str]:
    """Headers of every API call: the user's key, and the user's address.

    X-Forwarded-For names the browser, so the API counts failed keys per person rather than once
    for the whole UI; the API believes it only from peers in its TASKYARD_API_FORWARDED_ALLOW_IPS.
    """
    headers = {"Authorization": f"Bearer {key}"}
    if browser:
        headers["X-Forwarded-For"] = browser
    return headers


class ApiClient:
    """Thin, typed-enough wrapper: every call raises ApiUnavailable, ApiUnauthorized or ApiError."""

    def __init__(self, http: httpx.AsyncClient, key: str, browser: str | None = None) -> None:
        self.http = http
        self.key = key
        self.browser = browser

    @property
    def auth(self) -> dict[str, str]:
        return api_headers(self.key, self.browser)

    async def call(self, method: str, path: str, *, params: Any = None, json: Any = None) -> Any:
        """One request; returns the decoded JSON body (None for an empty body)."""
        try:
            resp = await self.http.request(method, path, params=params, json=json, headers=self.auth)
        except httpx.TransportError as err:
            API_ERRORS.labels("unreachable").inc()
            raise ApiUnavailable(f"{type(err).__name__}: {err}" if str(err) else type(err).__name__) from err
        if resp.status_code == 401:
            API_ERRORS.labels("unauthorized").inc()
            raise ApiUnauthorized()
        if resp.status_code >= 400:
            API_ERRORS.labels("error").inc()
            raise ApiError(resp.status_code, detail_of(resp))
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as err:
            # Something answers on the API's address, but it is not the API.
            API_ERRORS.labels("unreachable").inc()
            raise ApiUnavailable(f"the answer to {method} {path} was not JSON") from err

    async def whoami(self) -> dict:
        return await self.call("GET", "/api/v1/whoami")

    async def list_jobs(self, params: list[tuple[str, str]]) -> dict:
        return await self.call("GET", "/api/v1/jobs", params=params)

    async def get_job(self, job_id: str) -> dict:
        return await self.call("GET", job_path(job_id))

    async def cancel(self, job_id: str) -> dict:
        return await self.call("POST", job_path(job_id, "/cancel"))

    async def retry(self, job_id: str) -> dict:
        return await self.call("POST", job_path(job_id, "/retry"))

    async def submit(self, body: dict) -> dict:
        return await self.call("POST", "/api/v1/jobs", json=body)

    async def queues(self) -> list[dict]:
        return (await self.call("GET", "/api/v1/queues"))["queues"]

    async def set_paused(self, queue: str, paused: bool) -> dict:
        action = "pause" if paused else "resume"
        return await self.call("POST", f"/api/v1/queues/{quote(queue, safe='')}/{action}")

    async def queue(self, queue: str, minutes: int = 60) -> dict:
        return await self.call(
            "GET", f"/api/v1/queues/{quote(queue, safe='')}", params={"minutes": str(minutes)}
        )

    async def stats(self, window: str, queue: str | None = None) -> dict:
        params = {"window": window, **({"queue": queue} if queue else {})}
        return await self.call("GET", "/api/v1/stats", params=params)

    async def costs(self, since: str, by: str) -> dict:
        """Totals over the attempts that ended within `since`, grouped `by` (docs/costs.md)."""
        return await self.call("GET", "/api/v1/costs", params={"since": since, "by": by})

    async def bulk(self, action: str, filter: dict, dry_run: bool) -> dict:
        """Retry / cancel / discard every job `filter` matches (admin); dry_run only counts."""
        return await self.call(
            "POST", "/api/v1/jobs:bulk", json={"action": action, "filter": filter, "dry_run": dry_run}
        )

    async def keys(self) -> list[dict]:
        return (await self.call("GET", "/api/v1/keys"))["keys"]

    async def create_key(self, name: str, role: str) -> dict:
        return await self.call("POST", "/api/v1/keys", json={"name": name, "role": role})

    async def revoke_key(self, key_id: str) -> None:
        await self.call("DELETE", f"/api/v1/keys/{quote(key_id, safe='')}")

    async def workers(self) -> list[dict]:
        return (await self.call("GET", "/api/v1/workers"))["workers"]

    async def control_worker(self, worker_id: str, action: str) -> dict:
        """drain / stop one worker (admin)."""
        return await self.call("POST", f"/api/v1/workers/{quote(worker_id, safe='')}/{action}")

    async def pause_all(self, paused: bool) -> dict:
        return await self.call("POST", f"/api/v1/queues:{'pause' if paused else 'resume'}")

    async def audit(self, params: list[tuple[str, str]]) -> dict:
        return await self.call("GET", "/api/v1/audit", params=params)

    async def notifications(self, job_id: str) -> dict:
        return await self.call("GET", job_path(job_id, "/notifications"))

    async def messages(self, job_id: str) -> dict:
        """The job's thread: {"job_status", "messages", "open_question"}."""
        return await self.call("GET", job_path(job_id, "/messages"), params=[("limit", "1000")])

    async def post_message(self, job_id: str, text: str) -> dict:
        return await self.call("POST", job_path(job_id, "/messages"), json={"text": text})

    async def checkpoints(self, params: list[tuple[str, str]]) -> list[dict]:
        """Checkpoints matching `params`."""
        return (await self.call("GET", "/api/v1/checkpoints", params=params))["checkpoints"]

    async def checkpoint(self, ck_id: str) -> dict:
        return await self.call("GET", checkpoint_path(ck_id))

    async def decide(self, ck_id: str, action: str, body: dict) -> dict:
        """approve / reject / answer one checkpoint."""
        return await self.call("POST", checkpoint_path(ck_id, f"/{action}"), json=body)

    async def workflow(self, workflow_id: str) -> dict:
        return await self.call("GET", work_path("workflows", workflow_id))

    async def cancel_workflow(self, workflow_id: str) -> dict:
        return await self.call("POST", work_path("workflows", workflow_id, "/cancel"))

    async def retry_node(self, workflow_id: str, node: str) -> dict:
        """Run a failed node again (and what depends on it)."""
        return await self.call("POST", work_path("workflows", workflow_id, "/retry"), json={"node": node})

    async def batch(self, batch_id: str) -> dict:
        return await self.call("GET", work_path("batches", batch_id))

    async def retry_batch(self, batch_id: str) -> dict:
        """Run the batch's failed, dead and cancelled members again."""
        return await self.call("POST", work_path("batches", batch_id, "/retry"))

    async def schedules(self) -> list[dict]:
        return (await self.call("GET", "/api/v1/schedules"))["schedules"]

    async def schedule(self, schedule_id: str, history: int = 50) -> dict:
        return await self.call("GET", schedule_path(schedule_id), params={"history": history})

    async def schedule_action(self, schedule_id: str, action: str) -> dict:
        """pause, resume or trigger."""
        return await self.call("POST", schedule_path(schedule_id, f"/{action}"))
