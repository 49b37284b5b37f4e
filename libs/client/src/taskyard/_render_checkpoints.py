"""Pure text helpers for the approvals inbox: the `checkpoints` table, decision lines, answers."""

import json
import time
from datetime import datetime
from typing import Any

from ._render import one_line
from ._render_ops import duration

CHECKPOINT_HEADERS = ["ID", "KIND", "NAME", "JOB", "STATUS", "APPROVERS", "EXPIRES", "MESSAGE"]
NAME_WIDTH = 30
MESSAGE_WIDTH = 50


def epoch(iso: Any) -> float | None:
    """ "2026-11-23T10:00:00.5Z" -> seconds since the epoch; None when absent or unreadable."""
    if not isinstance(iso, str) or not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def expires(ck: dict[str, Any], now: float | None = None) -> str:
    """ "in 23h59m" for a pending checkpoint, "due" once its deadline passed (the API expires it
    within seconds), "-" for a decided one."""
    if ck.get("status") != "pending":
        return "-"
    at = epoch(ck.get("expires_at"))
    if at is None:
        return "?"
    left = at - (time.time() if now is None else now)
    return f"in {duration(left)}" if left > 0 else "due"


def checkpoint_row(ck: dict[str, Any], now: float | None = None) -> list[str]:
    """The `checkpoints` table's columns for one checkpoint."""
    return [
        str(ck.get("id")),
        str(ck.get("kind")),
        one_line(ck.get("name") or "-", NAME_WIDTH),
        str(ck.get("job_id")),
        str(ck.get("status")),
        ",".join(str(a) for a in ck.get("approvers") or []) or "-",
        expires(ck, now),
        one_line(ck.get("message") or "-", MESSAGE_WIDTH),
    ]


def parse_answer(text: str) -> Any:
    """The ANSWER argument: a JSON value if it parses (42, true, {"a": 1}, "quoted"), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def decision_line(ck: dict[str, Any]) -> str:
    """`approved ck_… (apply-migration) by admin[: reason]`, `rejected … by admin: reason`,
    `answered … by admin: "us-east"[ (reason)]`."""
    status = str(ck.get("status"))
    line = f"{status} {ck.get('id')} ({one_line(ck.get('name') or '-', 60)}) by {ck.get('decided_by')}"
    reason = one_line(ck.get("reason"), 200) if ck.get("reason") else ""
    if status == "answered":
        line += ": " + one_line(json.dumps(ck.get("answer"), ensure_ascii=False), 200)
        return f"{line} ({reason})" if reason else line
    return f"{line}: {reason}" if reason else line
