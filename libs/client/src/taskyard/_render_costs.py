"""Pure text for `taskyard cost` and the batch estimate."""

from collections.abc import Sequence
from typing import Any

COST_HEADERS = ("GROUP", "JOBS", "ATTEMPTS", "CPU", "WALL", "PEAK RSS", "SPENT")


def seconds_text(value: Any) -> str:
    """0.0123 -> "12.3 ms"; 12.3456 -> "12.3 s"; 4000 -> "1 h 6 min"."""
    if not isinstance(value, int | float):
        return "-"
    if value < 1:
        return f"{value * 1000:.3g} ms"
    if value < 60:
        return f"{value:.3g} s" if value < 10 else f"{value:.1f} s"
    minutes = value / 60
    return f"{minutes:.1f} min" if minutes < 60 else f"{int(minutes // 60)} h {int(minutes % 60)} min"


def bytes_text(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "-"


def amount_text(amount: float, unit: str) -> str:
    if unit == "usd":
        return f"${amount:,.4f}" if amount < 1 else f"${amount:,.2f}"
    return f"{amount:,.6g} {unit}"


def spent_text(costs: Sequence[dict[str, Any]]) -> str:
    """[{unit, kind, amount}] -> "$0.4200 llm_tokens · 4,200 tokens llm_tokens" (usd first)."""
    ordered = sorted(costs, key=lambda c: (c["unit"] != "usd", c["unit"], c["kind"]))
    return " · ".join(f"{amount_text(c['amount'], c['unit'])} {c['kind']}" for c in ordered) or "-"


def cost_row(group: dict[str, Any]) -> list[str]:
    key = group.get("key")
    return [
        "(none)" if key is None else str(key),
        str(group.get("jobs", 0)),
        str(group.get("attempts", 0)),
        seconds_text(group.get("cpu_s")),
        seconds_text(group.get("wall_s")),
        bytes_text(group.get("peak_rss_bytes")),
        spent_text(group.get("costs") or []),
    ]


def estimate_line(estimate: dict[str, Any]) -> str:
    """One line for `taskyard batch run`: what the batch will likely use, and from what."""
    count, basis, total = estimate.get("count"), estimate.get("basis") or {}, estimate.get("total")
    what = f"{count} {estimate.get('type')} job(s)"
    if not total:
        return f"estimate for {what}: no history of this type yet"
    spent = spent_text(total.get("costs") or [])
    return (
        f"estimate for {what}: ~{total['attempts']:g} attempts, {seconds_text(total['cpu_s'])} CPU, "
        f"{seconds_text(total['wall_s'])} of run time, spent {spent} "
        f"(from its last {basis.get('jobs')} job(s))"
    )
