"""Proxying a job's log stream (Server-Sent Events) from the API to the browser.

The browser cannot send the key itself (the cookie is http-only and EventSource sets no headers),
so the UI opens the API stream with the key from the cookie and relays it. Each `log` event is
re-emitted with `id: <seq>`: when the connection drops, EventSource reconnects with Last-Event-ID
and the relay resumes the API stream after that line instead of replaying the whole log.
"""

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .api import api_headers, detail_of, job_path
from .telemetry import API_ERRORS
from .web import COOKIE, JOB_ID, browser_address

log = logging.getLogger("taskyard.ui.logs")
router = APIRouter()

# How long EventSource waits before reconnecting after the stream ends without `end`.
RETRY_MS = 3000
# Between re-opening the API's stream when it ended without `end` (doubling up to the max).
RECONNECT_MIN_S = 0.2
RECONNECT_MAX_S = 5.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: str | None, data: str, event_id: str | None = None) -> str:
    """Format one SSE event (data must be a single line: JSON always is)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    head += f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n"


class Relay:
    """Relays the API's log stream; when it ends without `end` (the API restarted, a proxy cut it),
    it opens it again after the last line seen, so the browser's stream does not break."""

    def __init__(self, request: Request, job_id: str, key: str, after: int) -> None:
        self.request, self.job_id, self.key, self.after = request, job_id, key, after
        self.ended = False

    async def open(self) -> httpx.Response:
        http: httpx.AsyncClient = self.request.app.state.http
        req = http.build_request(
            "GET",
            job_path(self.job_id, "/logs/stream"),
            params={"after": str(self.after)},
            headers={**api_headers(self.key, browser_address(self.request)), "Accept": "text/event-stream"},
            # No read timeout: a job may print nothing for minutes (the API sends keep-alives anyway).
            timeout=httpx.Timeout(self.request.app.state.settings.api_timeout_s, read=None),
        )
        return await http.send(req, stream=True)

    async def _pass_on(self, upstream: httpx.Response) -> AsyncIterator[str]:
        """Parse one API stream event by event and pass it on, adding ids to log lines."""
        event, data = None, []
        try:
            async for line in upstream.aiter_lines():
                if line.startswith(":"):
                    yield ": keep-alive\n\n"  # keeps proxies and the browser from timing out
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                elif line == "" and data:
                    payload = "\n".join(data)
                    event_id = None
                    if event == "log":
                        try:
                            seq = int(json.loads(payload)["seq"])
                        except (ValueError, KeyError, TypeError):
                            seq = None  # still relayed; only resuming after it is lost
                        if seq is not None:
                            self.after, event_id = max(self.after, seq), str(seq)
                    elif event == "end":
                        self.ended = True
                    yield sse(event, payload.replace("\n", " "), event_id)
                    event, data = None, []
        finally:
            await upstream.aclose()

    async def events(self, first: httpx.Response) -> AsyncIterator[str]:
        yield f"retry: {RETRY_MS}\n\n"
        upstream: httpx.Response | None = first
        delay = RECONNECT_MIN_S
        while True:
            if upstream is not None:
                try:
                    async for chunk in self._pass_on(upstream):
                        yield chunk
                        delay = RECONNECT_MIN_S
                except httpx.TransportError as err:
                    API_ERRORS.labels("unreachable").inc()
                    detail = f"log stream interrupted: {type(err).__name__}; reconnecting"
                    yield sse("unavailable", json.dumps({"detail": detail}))
            if self.ended or await self.request.is_disconnected():
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)
            try:
                upstream = await self.open()
            except httpx.TransportError as err:
                API_ERRORS.labels("unreachable").inc()
                detail = f"the API is not reachable: {type(err).__name__}; retrying"
                yield sse("unavailable", json.dumps({"detail": detail}))
                upstream = None
                continue
            if upstream.status_code != 200:
                await upstream.aread()
                await upstream.aclose()
                API_ERRORS.labels("unauthorized" if upstream.status_code == 401 else "error").inc()
                yield sse("unavailable", json.dumps({"detail": detail_of(upstream)}))
                return  # EventSource reconnects and gets the status as an answer


@router.get("/jobs/{job_id}/logs/stream")
async def log_stream(request: Request, job_id: str) -> Response:
    """SSE for the job page. Errors are plain statuses: EventSource cannot follow a login redirect."""
    key = request.cookies.get(COOKIE)
    if not key:
        return JSONResponse({"detail": "not signed in"}, status_code=401)
    if not JOB_ID.match(job_id):
        return JSONResponse({"detail": "unknown job"}, status_code=404)
    after = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    if not after.isdigit():
        after = "0"
    relay = Relay(request, job_id, key, int(after))
    try:
        upstream = await relay.open()
    except httpx.TransportError as err:
        API_ERRORS.labels("unreachable").inc()
        body = sse("unavailable", json.dumps({"detail": f"the API is not reachable: {type(err).__name__}"}))
        return Response(f"retry: {RETRY_MS}\n\n{body}", media_type="text/event-stream", headers=SSE_HEADERS)
    if upstream.status_code != 200:
        await upstream.aread()
        await upstream.aclose()
        API_ERRORS.labels("unauthorized" if upstream.status_code == 401 else "error").inc()
        # 401/403/404 are the user's to fix; anything else is the API's problem, hence 502.
        status = upstream.status_code if upstream.status_code in (401, 403, 404) else 502
        return JSONResponse({"detail": detail_of(upstream)}, status_code=status)
    return StreamingResponse(relay.events(upstream), media_type="text/event-stream", headers=SSE_HEADERS)


LOG_DOWNLOAD_MAX = 100_000  # lines; a runaway job's log is cut there and says so


@router.get("/jobs/{job_id}/log.txt")
async def log_download(request: Request, job_id: str) -> Response:
    """The job's whole log as text (`<time> <stream> <line>` per line), read page by page."""
    from .web import api_for  # the download follows the same sign-in rules as the pages

    if not JOB_ID.match(job_id):
        return JSONResponse({"detail": "unknown job"}, status_code=404)
    api = await api_for(request)
    out: list[str] = []
    after = 0
    while len(out) < LOG_DOWNLOAD_MAX:
        page = await api.call(
            "GET", job_path(job_id, "/logs"), params={"after": str(after), "limit": "10000"}
        )
        for line in page["lines"]:
            out.append(f"{line.get('at', '')} {line.get('stream', 'log')} {line.get('line', '')}")
        if not page["lines"]:
            break
        after = page["next"]
    if len(out) >= LOG_DOWNLOAD_MAX:
        out.append(f"… cut at {LOG_DOWNLOAD_MAX} lines")
    headers = {"Content-Disposition": f'attachment; filename="{job_id}.log"'}
    return Response("\n".join(out) + "\n", media_type="text/plain; charset=utf-8", headers=headers)
