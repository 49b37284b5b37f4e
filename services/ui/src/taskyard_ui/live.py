"""Live views over Server-Sent Events: the UI asks the API, the browser gets re-rendered fragments.

A live page (job detail, workers, dashboard) renders its changing parts with the same partial
templates the stream uses, and passes a digest of them in the stream URL. The stream then polls
the API every `live_interval_s` and sends an `update` event only when the fragments changed:

    event: update
    data: {"fragments": {"<element id>": "<html>", ...}, "announce": "Job is now running", "done": false}

static/live.js swaps each element's content. Fragments are rendered by Jinja with autoescaping,
so API data can never become markup. The browser never polls the API itself (it cannot: the key
is in an http-only cookie), and a closed tab stops the polling within one interval.
"""

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .api import ApiClient, ApiError, ApiUnauthorized, ApiUnavailable
from .web import COOKIE, digest, user_api

log = logging.getLogger("taskyard.ui.live")

RETRY_MS = 3000
KEEPALIVE_S = 15.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# Produces the current state: {"fragments": {...}, "announce"?: str, "done"?: bool}.
Producer = Callable[[], Awaitable[dict[str, Any]]]


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def live_client(request: Request) -> ApiClient | Response:
    """The API client for a stream, or a plain 401 (EventSource cannot follow a login redirect)."""
    key = request.cookies.get(COOKIE)
    if not key:
        return JSONResponse({"detail": "not signed in"}, status_code=401)
    return user_api(request, key)


async def _events(request: Request, produce: Producer, seen: str) -> AsyncIterator[str]:
    settings = request.app.state.settings
    interval, deadline = settings.live_interval_s, time.monotonic() + settings.live_max_s
    last, last_sent = seen, time.monotonic()
    yield f"retry: {RETRY_MS}\n\n"
    while True:
        try:
            update = await produce()
        except ApiUnauthorized:
            yield sse("signed-out", {"detail": "Your API key is no longer accepted; sign in again."})
            return
        except ApiUnavailable as err:
            yield sse("unavailable", {"detail": f"The API is not reachable ({err.reason}); retrying."})
            last = ""  # send everything again once it is back
        except ApiError as err:
            yield sse("unavailable", {"detail": f"The API answered {err.status}: {err.detail}"})
            if err.status in (403, 404):
                return
            last = ""
        else:
            fingerprint = digest(update.get("fragments"))
            if fingerprint != last or update.get("done"):
                yield sse("update", update)
                last, last_sent = fingerprint, time.monotonic()
            elif time.monotonic() - last_sent > KEEPALIVE_S:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
            if update.get("done"):
                return
        if time.monotonic() > deadline or await request.is_disconnected():
            return  # the browser reconnects after RETRY_MS and gets a fresh stream
        await asyncio.sleep(interval)


def live_response(request: Request, produce: Producer) -> Response:
    """Stream `produce()` as SSE; `?h=` is the digest of what the page already shows."""
    seen = request.query_params.get("h", "")
    return StreamingResponse(
        _events(request, produce, seen), media_type="text/event-stream", headers=SSE_HEADERS
    )
