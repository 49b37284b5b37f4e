"""Pure text helpers for the CLI: parsing key=value labels, one-line job summaries, tables, exit codes."""

import json
from collections.abc import Iterable, Sequence
from typing import Any

JOB_STATUSES = (
    "blocked", "scheduled", "needs_approval", "throttled", "queued", "running", "retrying", "waiting", "succeeded", "failed", "cancelled", "dead",
    "skipped",
)  # fmt: skip


def parse_label(text: str) -> tuple[str, str]:
    """ "team=data" -> ("team", "data"); the value may contain "=" and may be empty. ValueError if no key."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected key=value, got {text!r}")
    return key.strip(), value


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    """Several key=value labels into a dict (a repeated key keeps its last value)."""
    return dict(parse_label(item) for item in items)


def parse_statuses(items: Iterable[str]) -> list[str]:
    """--status values, each possibly comma-separated, checked against the known statuses."""
    out: list[str] = []
    for item in items:
        for status in filter(None, (s.strip().lower() for s in item.split(","))):
            if status not in JOB_STATUSES:
                raise ValueError(f"unknown status {status!r} (one of {', '.join(JOB_STATUSES)})")
            out.append(status)
    return out


def short_time(iso: str | None) -> str:
    """ "2026-11-23T10:00:00.123456Z" -> "2026-11-23 10:00:00" (the API's times are UTC)."""
    if not iso:
        return "-"
    return iso[:19].replace("T", " ")


def one_line(text: Any, width: int) -> str:
    """`text` with its whitespace runs collapsed, cut to `width` characters with "…"."""
    line = " ".join(str(text).split())
    return line if len(line) <= width else line[: width - 1] + "…"


def outcome(job: dict[str, Any]) -> str:
    """A short description of a job's error or result, "" when it has neither."""
    error = job.get("error")
    if isinstance(error, dict) and error:
        text = ": ".join(str(error[k]) for k in ("type", "message") if error.get(k))
        if error.get("exit_code") is not None:
            text += f" (exit {error['exit_code']})"
        return one_line(text or "error", 160)
    result = job.get("result")
    if result is not None:
        return "result " + one_line(json.dumps(result, separators=(",", ":"), ensure_ascii=False), 100)
    return ""


def status_line(job: dict[str, Any]) -> str:
    """<id> · <status> · queue default/normal · attempt 1/3 [· outcome]."""
    parts = [
        str(job.get("id")),
        str(job.get("status")),
        f"queue {job.get('queue', '?')}/{job.get('priority', '?')}",
        f"attempt {job.get('attempt', 0)}/{job.get('max_attempts', '?')}",
    ]
    summary = outcome(job)
    if summary:
        parts.append(summary)
    return " · ".join(parts)


def job_row(job: dict[str, Any]) -> list[str]:
    """The `list` table's columns for one job."""
    return [
        str(job.get("id")),
        str(job.get("status")),
        str(job.get("type")),
        str(job.get("queue")),
        str(job.get("priority")),
        short_time(job.get("created_at")),
        f"{job.get('attempt', 0)}/{job.get('max_attempts', '?')}",
    ]


JOB_HEADERS = ["ID", "STATUS", "TYPE", "QUEUE", "PRIORITY", "CREATED (UTC)", "ATTEMPT"]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, no trailing blanks."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = []
    for row in [headers, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _shell_code(code: int) -> int:
    if 0 <= code <= 255:
        return code
    if -64 < code < 0:  # killed by signal N: report it the way shells do
        return 128 - code
    return 1


def exit_code(job: dict[str, Any]) -> int:
    """The process exit status mirroring a final job: its exit_code when known, else 0 / 1."""
    succeeded = job.get("status") == "succeeded"
    source = job.get("result") if succeeded else job.get("error")
    code = source.get("exit_code") if isinstance(source, dict) else None
    if isinstance(code, bool) or not isinstance(code, int):
        return 0 if succeeded else 1
    code = _shell_code(code)
    # A failed job must not look like success, whatever its process returned.
    return code if succeeded or code != 0 else 1
