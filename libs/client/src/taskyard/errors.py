"""Exceptions raised by the SDK, and turning an HTTP error response into one."""

from typing import Any

import httpx


class TaskyardError(Exception):
    """The API refused a request, failed, or could not be reached.

    `status_code` is the HTTP status, or 0 when no HTTP response was received (connection refused,
    DNS failure, timeout). `detail` is the API's one-line reason.
    """

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"{status_code} {detail}" if status_code else detail)
        self.status_code = status_code
        self.detail = detail


class ConfigError(TaskyardError):
    """The client configuration is unusable (e.g. an unreadable credentials file). status_code is 0."""

    def __init__(self, detail: str) -> None:
        super().__init__(0, detail)


class JobFailed(Exception):
    """A job ended in failed, dead or cancelled (raised by `wait(..., raise_on_failure=True)`).

    `job` is the final job dict; `status` and `error` are copied from it for convenience.
    """

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.status: str = job.get("status", "?")
        self.error: dict[str, Any] | None = job.get("error")
        reason = ""
        if self.error:
            reason = "".join(f": {self.error[k]}" for k in ("type", "message") if self.error.get(k))
        super().__init__(f"job {job.get('id')} {self.status}{reason}")


def _loc_path(loc: list[Any]) -> str:
    """["body", "jobs", 0, "type"] -> "jobs[0].type" (FastAPI prefixes where the value came from)."""
    parts = list(loc)
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def flatten_detail(detail: Any) -> str:
    """The `detail` of an error body as one line.

    A string is returned as is; FastAPI's 422 list of `{"loc": [...], "msg": "..."}` becomes
    "field.path: msg; other[0].field: msg".
    """
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if not isinstance(item, dict):
                parts.append(str(item))
                continue
            msg = str(item.get("msg", "invalid"))
            # Pydantic prefixes messages from custom validators; the field path already says enough.
            msg = msg.removeprefix("Value error, ")
            path = _loc_path(item.get("loc") or [])
            parts.append(f"{path}: {msg}" if path else msg)
        return "; ".join(parts)
    if detail is None:
        return ""
    return str(detail)


def error_from_response(response: httpx.Response) -> TaskyardError:
    """A TaskyardError for a non-2xx response; the body must already be read."""
    detail: str = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        detail = flatten_detail(body["detail"])
    elif response.text.strip():
        # Not our JSON (a proxy's HTML page, say): keep the first line so the message stays one line.
        detail = response.text.strip().splitlines()[0][:200]
    if not detail:
        detail = response.reason_phrase or "error"
    return TaskyardError(response.status_code, " ".join(detail.split("\n")))


def unreachable(url: str, exc: Exception) -> TaskyardError:
    """The TaskyardError for a transport failure (no HTTP response)."""
    reason = str(exc) or type(exc).__name__
    return TaskyardError(0, f"cannot reach Taskyard API at {url}: {reason}")
