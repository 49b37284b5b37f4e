"""The workers page: every worker from its heartbeats, refreshed live."""

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response

from .api import ApiClient
from .live import live_client, live_response
from .web import api_for, digest, render, render_fragment, whoami

router = APIRouter()

STATE_WORDS = {
    "healthy": "Heartbeating on time.",
    "stale": "Heartbeats are late: the worker may be overloaded, paused or cut off.",
    "stuck": "Heartbeating, but holds a job far longer than jobs of its type usually take.",
    "draining": "Finishing its running jobs before it stops; takes no new ones.",
    "gone": "No heartbeat any more: stopped or lost. Kept listed with its last state for a while.",
}


def workers_fragments(workers: list[dict], admin: bool = False) -> dict[str, str]:
    counts: dict[str, int] = {}
    for w in workers:
        counts[w["state"]] = counts.get(w["state"], 0) + 1
    return {
        "workers-table": render_fragment(
            "_workers_table.html", workers=workers, counts=counts, state_words=STATE_WORDS, admin=admin
        )
    }


@router.get("/workers", response_class=HTMLResponse)
async def workers_page(request: Request, api: ApiClient = Depends(api_for)):
    who = await whoami(request, api)
    fragments = workers_fragments(await api.workers(), admin=who.get("role") == "admin")
    return render(
        request,
        "workers.html",
        active="workers",
        fragments=fragments,
        live_hash=digest(fragments),
        state_words=STATE_WORDS,
    )


@router.get("/live/workers")
async def workers_live(request: Request) -> Response:
    api = live_client(request)
    if isinstance(api, Response):
        return api

    async def produce() -> dict[str, Any]:
        admin = (await whoami(request, api)).get("role") == "admin"
        return {"fragments": workers_fragments(await api.workers(), admin=admin)}

    return live_response(request, produce)
