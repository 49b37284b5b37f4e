"""Pure text helpers for the operations views: why a job waits, workers, queues, doctor checks."""

from typing import Any

# Statuses `taskyard status` explains with the waiting reason (position, ETA, why).
WAITING_STATUSES = frozenset(
    {"blocked", "scheduled", "needs_approval", "throttled", "queued", "retrying", "waiting"}
)
PRIORITIES = ("high", "normal", "low")
# RUNNING column: at most this many job ids per worker, then "+N".
RUNNING_SHOWN = 3


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _mapping(value: Any) -> dict[str, Any]:
    """`value` if the API sent an object there, else {} (a missing or malformed field)."""
    return value if isinstance(value, dict) else {}


def duration(seconds: float) -> str:
    """0.42 -> "0.4s", 60.2 -> "60s", 125 -> "2m05s", 3900 -> "1h05m", 97200 -> "1d03h"."""
    s = max(0.0, seconds)
    if s < 9.95:
        return f"{s:.1f}s"
    if s < 99.5:
        return f"{s:.0f}s"
    if s < 3600:
        m, sec = divmod(int(s), 60)
        return f"{m}m{sec:02d}s"
    if s < 86400:
        h, rest = divmod(int(s), 3600)
        return f"{h}h{rest // 60:02d}m"
    d, rest = divmod(int(s), 86400)
    return f"{d}d{rest // 3600:02d}h"


def _plain_seconds(text: str) -> bool:
    return text.endswith("s") and text[:-1].replace(".", "", 1).isdigit()


def span(lo: float, hi: float) -> str:
    """(25, 60) -> "25–60s"; mixed units keep both: (50, 130) -> "50s–2m10s"."""
    low, high = duration(lo), duration(hi)
    if _plain_seconds(low) and _plain_seconds(high):
        low = low[:-1]
    return f"{low}–{high}"


def _eta(job: dict[str, Any]) -> str | None:
    eta = _number(job.get("eta_seconds"))
    if eta is None:
        return None
    text = f"ETA ~{duration(eta)}"
    bounds = job.get("eta_range")
    if isinstance(bounds, list | tuple) and len(bounds) == 2:
        lo, hi = _number(bounds[0]), _number(bounds[1])
        if lo is not None and hi is not None and duration(lo) != duration(hi):
            text += f" ({span(lo, hi)})"
    return text


def _capacity(reason: dict[str, Any]) -> str | None:
    code = reason.get("code")
    evidence = _mapping(reason.get("evidence"))
    if code == "no_workers":
        return "no live workers"
    if code == "queue_paused":
        return "queue paused"
    if code in ("all_busy", "behind_others"):
        busy, slots = evidence.get("busy"), evidence.get("slots")
        if isinstance(busy, int) and isinstance(slots, int):
            return f"{busy}/{slots} slots busy"
    return None


def checkpoint_hint(job: dict[str, Any], reason: dict[str, Any]) -> str | None:
    """For a job waiting on a person, `  checkpoint: <id> · <name> · approve with: taskyard approve
    <id>` (a question: `answer with: taskyard answer <id> ANSWER (one of …)`); None otherwise."""
    code = reason.get("code")
    if code not in ("waiting_approval", "waiting_answer", "needs_approval"):
        return None
    ck = _mapping(job.get("checkpoint"))
    evidence = _mapping(reason.get("evidence"))
    ck_id = ck.get("id") or evidence.get("checkpoint_id")
    if not ck_id:
        return None
    name = " ".join(str(ck.get("name") or evidence.get("name") or "").split())
    if code == "waiting_answer":
        choices = ck.get("choices") or []
        how = f"answer with: taskyard answer {ck_id} ANSWER"
        if choices:
            how += f" (one of {', '.join(str(c) for c in choices)})"
    else:
        how = f"approve with: taskyard approve {ck_id}"
    return " · ".join(p for p in (f"  checkpoint: {ck_id}", name, how) if p)


def waiting_lines(job: dict[str, Any]) -> list[str] | None:
    """For a job that waits with a known reason, `<id> · queued · position 37 · ETA ~40s (25–60s)
    · 3/3 slots busy` and `  why: <reason>` (and for one waiting on a person, the checkpoint_hint
    line); None for any other job (it gets the usual status line)."""
    reason = job.get("waiting_reason")
    if job.get("status") not in WAITING_STATUSES or not isinstance(reason, dict):
        return None
    parts = [str(job.get("id")), str(job.get("status"))]
    position = job.get("queue_position")
    if isinstance(position, int) and not isinstance(position, bool):
        parts.append(f"position {position}")
    parts += [p for p in (_eta(job), _capacity(reason)) if p]
    lines = [" · ".join(parts)]
    message = " ".join(str(reason.get("message") or "").split())
    if message:
        lines.append(f"  why: {message}")
    hint = checkpoint_hint(job, reason)
    if hint:
        lines.append(hint)
    return lines


def short_id(job_id: str) -> str:
    """The random tail of a job id ("…" + last 8): ids minted close together share their prefix."""
    return job_id if len(job_id) <= 9 else "…" + job_id[-8:]


def _running(running: Any) -> str:
    ids = [short_id(str(r.get("id"))) for r in running or [] if isinstance(r, dict)]
    if not ids:
        return "-"
    extra = len(ids) - RUNNING_SHOWN
    return ",".join(ids[:RUNNING_SHOWN]) + (f",+{extra}" if extra > 0 else "")


WORKER_HEADERS = ["ID", "STATE", "HOST", "PID", "QUEUES", "SLOTS", "RUNNING", "DONE", "FAILED", "LAST SEEN"]


def worker_row(worker: dict[str, Any]) -> list[str]:
    """The `workers` table's columns for one worker."""
    age = _number(worker.get("last_heartbeat_age_s"))
    return [
        str(worker.get("id")),
        str(worker.get("state")),
        # A REST worker: the api process serving it (its lease ids carry the same id).
        f"{worker.get('host')} (api {worker['via']})" if worker.get("via") else str(worker.get("host")),
        str(worker.get("pid")),
        ",".join(worker.get("queues") or []) or "-",
        f"{worker.get('slots_used', 0)}/{worker.get('slots', '?')}",
        _running(worker.get("running")),
        str(worker.get("jobs_done", 0)),
        str(worker.get("jobs_failed", 0)),
        "-" if age is None else f"{duration(age)} ago",
    ]


QUEUE_HEADERS = [
    "QUEUE",
    "PAUSED",
    "DEPTH",
    "RUNNING",
    "OLDEST",
    "IN/s",
    "OUT/s",
    "WORKERS",
    "SLOTS",
    "OK/FAIL/DEAD 1h",
    "24h",
]


def _rate(value: Any) -> str:
    rate = _number(value) or 0.0
    return f"{rate:.0f}" if rate >= 100 else f"{rate:.2f}"


def queue_row(queue: dict[str, Any]) -> list[str]:
    """The `queues` table's columns for one queue; DEPTH is split by priority: `12 (h1 n8 l3)`."""
    priorities = queue.get("priorities") or {}
    split = " ".join(f"{p[0]}{(priorities.get(p) or {}).get('depth', 0)}" for p in PRIORITIES)
    ages = [_number((v or {}).get("oldest_waiting_s")) for v in priorities.values()]
    oldest = max((a for a in ages if a is not None), default=0.0)
    return [
        str(queue.get("queue")),
        "yes" if queue.get("paused") else "no",
        f"{queue.get('depth', 0)} ({split})",
        str(queue.get("running", 0)),
        duration(oldest) if oldest > 0 else "-",
        _rate(queue.get("jobs_per_s_in")),
        _rate(queue.get("jobs_per_s_out")),
        str(len(queue.get("workers") or [])),
        f"{queue.get('slots_used', 0)}/{queue.get('slots', 0)}",
        *(_counts(queue, window) for window in ("1h", "24h")),
    ]


def _counts(queue: dict[str, Any], window: str) -> str:
    """`succeeded/failed/dead` over the window (APIs before the rollups: `-`)."""
    counts = (queue.get("counts") or {}).get(window)
    if not counts:
        return "-"
    return "/".join(str(counts.get(k, 0)) for k in ("succeeded", "failed", "dead"))


def check_lines(checks: list[dict[str, Any]]) -> list[str]:
    """`✓ name  detail` or `✗ name  detail  → fix: <fix>`, names padded to one column."""
    width = max((len(str(c.get("name"))) for c in checks), default=0)
    lines = []
    for check in checks:
        ok = bool(check.get("ok"))
        name = str(check.get("name")).ljust(width)
        line = f"{'✓' if ok else '✗'} {name}  {check.get('detail', '')}".rstrip()
        if not ok and check.get("fix"):
            line += f"  → fix: {check['fix']}"
        lines.append(line)
    return lines
