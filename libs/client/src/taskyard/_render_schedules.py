"""Pure text helpers for `taskyard schedules`: the list table, the `show` page, trigger lines."""

from typing import Any

from ._render import one_line, short_time

SCHEDULE_HEADERS = ["ID", "NAME", "WHEN", "TZ", "TYPE", "OVERLAP", "STATE", "NEXT FIRE"]
FIRE_HEADERS = ["FIRE TIME (UTC)", "KIND", "OUTCOME", "JOB", "STATUS", "REASON"]


def when(s: dict[str, Any]) -> str:
    """ "cron 30 2 * * *" or "every 60s"."""
    if s.get("cron"):
        return f"cron {s['cron']}"
    every = s.get("every_s")
    return f"every {every:g}s" if isinstance(every, int | float) else "-"


def schedule_row(s: dict[str, Any]) -> list[str]:
    fires = s.get("next_fires") or []
    return [
        str(s.get("id")),
        one_line(s.get("name") or "-", 24),
        one_line(when(s), 28),
        str(s.get("timezone")),
        str((s.get("template") or {}).get("type", "-")),
        str(s.get("overlap")),
        "paused" if s.get("paused") else "active",
        fires[0] if fires else "-",
    ]


def _millis(iso: str) -> str:
    """ ".250" of "…T01:00:00.250Z" (interval schedules fire at fractions of a second), else ""."""
    return iso[19:23] if iso[19:20] == "." else ""


def fire_row(f: dict[str, Any]) -> list[str]:
    return [
        short_time(f.get("fire_at")) + _millis(f.get("fire_at") or ""),
        str(f.get("kind")),
        str(f.get("outcome")),
        str(f.get("job_id") or "-"),
        str(f.get("job_status") or "-"),
        one_line(f.get("reason") or "", 60),
    ]


def show_lines(s: dict[str, Any]) -> list[str]:
    """The head of `taskyard schedules show`: what it is and its next fire times."""
    template = s.get("template") or {}
    lines = [
        f"schedule {s.get('id')}" + (f" ({s['name']})" if s.get("name") else ""),
        f"  when:      {when(s)} in {s.get('timezone')}",
        f"  job:       {template.get('type')} on queue {template.get('queue', 'default')}",
        f"  overlap:   {s.get('overlap')} · catch-up: {s.get('catch_up')} (at most {s.get('catch_up_max')})",
        f"  state:     {'paused' if s.get('paused') else 'active'}",
        "  next fires:" if s.get("next_fires") else "  next fires: none (paused)",
    ]
    lines += [f"    {at}" for at in s.get("next_fires") or []]
    return lines


def trigger_line(fired: dict[str, Any]) -> str:
    job = fired.get("job") or {}
    if fired.get("outcome") == "created":
        return f"fired: job {job.get('id')} ({job.get('status')})"
    return f"{fired.get('outcome')}: {fired.get('reason') or '-'}"
