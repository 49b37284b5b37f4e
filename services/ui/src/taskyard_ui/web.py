"""Template rendering, the key cookie, and the small helpers the page routes share."""

import hashlib
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape

from .api import ApiClient

HERE = Path(__file__).parent
COOKIE = "taskyard_key"

STATUSES = (
    "blocked",
    "scheduled",
    "needs_approval",
    "throttled",
    "queued",
    "running",
    "retrying",
    "waiting",
    "succeeded",
    "failed",
    "cancelled",
    "dead",
    "skipped",
)
FINAL = frozenset({"succeeded", "failed", "cancelled", "dead", "skipped"})
RETRYABLE = frozenset({"failed", "dead", "cancelled"})
# API job ids are ULIDs; anything else cannot be a job and is not sent to the API at all.
JOB_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
ROLES = ("viewer", "submitter", "admin")
WHO_CACHE_S = 30.0


class NeedLogin(Exception):
    """No key cookie, or the API rejected the key: send the browser to /login."""

    def __init__(self, next_url: str, expired: bool = False) -> None:
        super().__init__(next_url)
        self.next_url = next_url
        self.expired = expired


def format_ts(value: str | None) -> str:
    """API timestamps (ISO 8601, UTC) shortened to seconds for tables: 2026-11-23 10:00:00Z."""
    if not value:
        return "—"
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return parsed.strftime("%Y-%m-%d %H:%M:%SZ")


def pretty_json(value: Any) -> str:
    """Indented JSON for <pre> blocks; strings are shown as they are (logs, messages)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "), sort_keys=True, ensure_ascii=False)


def parse_ts(value: str | None) -> float | None:
    """An API timestamp as epoch seconds (None when missing or unreadable)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def format_age(seconds: float | None) -> str:
    """A span of time in words a person reads at a glance: 0.8 s, 42 s, 3 min, 2 h 5 min, 3 d."""
    if seconds is None:
        return "—"
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        hours, minutes = divmod(int(seconds) // 60, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{seconds / 86400:.0f} d"


def relative(value: str | None, now: float | None = None) -> str:
    """ "3 min ago" / "in 5 min" for an API timestamp."""
    ts = parse_ts(value)
    if ts is None:
        return ""
    delta = (time.time() if now is None else now) - ts
    return f"{format_age(delta)} ago" if delta >= 0 else f"in {format_age(-delta)}"


_TICKS = re.compile(r"`([^`]+)`")
_START_ONE = re.compile(r"(Start one): (\S.*?)\s*$")


def ticks(message: str | None) -> Markup:
    """An API message in words, `backticked` parts as code; "Start one: <cmd>" shows the command as code."""
    text = str(escape(message or ""))
    text = _TICKS.sub(r"<code>\1</code>", text)
    text = _START_ONE.sub(r'\1 with <code class="cmd">\2</code>', text)
    return Markup(text)


def may_decide(checkpoint: dict, who: dict | None) -> bool:
    """The API's rule, for showing or hiding the buttons: approvers are roles (or higher) or key names."""
    if not who:
        return True  # unknown: let the API decide
    rank = ROLES.index(who["role"]) if who.get("role") in ROLES else -1
    for approver in checkpoint.get("approvers") or []:
        if approver in ROLES and rank >= ROLES.index(approver):
            return True
        if approver == who.get("name"):
            return True
    return False


def choice_label(choice: Any) -> str:
    """How a checkpoint choice reads: strings as they are, anything else as compact JSON."""
    return choice if isinstance(choice, str) else json.dumps(choice, ensure_ascii=False)


def duration(start: str | None, end: str | None) -> str:
    """Human duration between two API timestamps, or an empty string when one is missing."""
    if not start or not end:
        return ""
    try:
        seconds = (
            datetime.fromisoformat(end.replace("Z", "+00:00"))
            - datetime.fromisoformat(start.replace("Z", "+00:00"))
        ).total_seconds()
    except ValueError:
        return ""
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s"


templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters.update(
    ts=format_ts,
    pretty_json=pretty_json,
    compact_json=compact_json,
    age=format_age,
    ticks=ticks,
    num=lambda n: f"{n:,}" if isinstance(n, int) else n,
    age_since=lambda epoch: format_age(time.time() - float(epoch)) if epoch else "—",
)
templates.env.globals.update(
    STATUSES=STATUSES,
    FINAL=FINAL,
    RETRYABLE=RETRYABLE,
    duration=duration,
    urlencode=urlencode,
    relative=relative,
    may_decide=may_decide,
    choice_label=choice_label,
)


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render a page; `signed_in` lets the layout show the sign-out button, `who` the user's name."""
    context.setdefault("signed_in", bool(request.cookies.get(COOKIE)))
    context.setdefault("who", getattr(request.state, "who", None))
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def render_fragment(name: str, **context: Any) -> str:
    """One partial template as a string (the live views send these over SSE)."""
    return templates.env.get_template(name).render(**context)


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


async def whoami(request: Request, api: ApiClient) -> dict:
    """The signed-in key's {name, role}, cached briefly per key (the header and role checks use it)."""
    cache: dict[str, tuple[float, dict]] = request.app.state.who_cache
    slot = hashlib.sha256(api.key.encode()).hexdigest()
    hit = cache.get(slot)
    if hit and hit[0] > time.monotonic():
        who = hit[1]
    else:
        who = await api.whoami()
        if len(cache) > 1000:
            cache.clear()
        cache[slot] = (time.monotonic() + WHO_CACHE_S, who)
    request.state.who = who
    return who


def safe_next(value: str | None) -> str:
    """A local path to return to after sign-in; anything that could leave the site becomes "/"."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def login_redirect(next_url: str, expired: bool = False) -> RedirectResponse:
    query = {"next": safe_next(next_url)}
    if expired:
        query["expired"] = "1"
    resp = RedirectResponse(f"/login?{urlencode(query)}", status_code=303)
    if expired:
        resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return resp


def here(request: Request) -> str:
    """Where to come back to after signing in: this page for GET, the page the form was on for POST."""
    if request.method == "GET":
        query = request.url.query
        return request.url.path + (f"?{query}" if query else "")
    referer = request.headers.get("referer")
    if referer:
        url = httpx.URL(referer)
        if url.host == request.url.hostname and url.port == request.url.port:
            return safe_next(url.raw_path.decode())
    return "/"


def browser_address(request: Request) -> str | None:
    """The user's address (the TCP peer, or what a trusted proxy in front of the UI said it is)."""
    return request.client.host if request.client else None


def user_api(request: Request, key: str) -> ApiClient:
    """An API client acting for this request's user: their key, their address."""
    return ApiClient(request.app.state.http, key, browser_address(request))


async def api_for(request: Request) -> ApiClient:
    """FastAPI dependency: an API client with the signed-in user's key, or a trip to /login.

    It also learns who the key belongs to (cached), for the header and for role-dependent controls.
    """
    key = request.cookies.get(COOKIE)
    if not key:
        raise NeedLogin(here(request))
    api = user_api(request, key)
    await whoami(request, api)
    return api
