"""The dashboard's cost view: GET /api/v1/costs over the chart window, as table rows."""

import time
from collections.abc import Awaitable, Callable
from typing import Any

# What the view can group by (the API's `by`), and the column heading of each.
COST_BY = {"label:team": "Team", "queue": "Queue", "type": "Type", "batch": "Batch", "workflow": "Workflow"}
DEFAULT_BY = "label:team"
CACHE_S = 30.0
"""How long the dashboard reuses a cost answer: the API reads every attempt of the window for it
(200,000 attempts over 7 days took ~1 s on SQLite, docs/costs.md), and the live dashboard
refreshes every few seconds. Keyed by (window, by): at most 15 entries."""
_cache: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}


async def cached(
    window: str, by: str, fetch: Callable[[str, str], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """The cost totals for (window, by), fetched at most once per CACHE_S in this process."""
    now = time.monotonic()
    hit = _cache.get((window, by))
    if hit is not None and now - hit[0] < CACHE_S:
        return hit[1]
    answer = await fetch(window, by)
    _cache[(window, by)] = (now, answer)
    return answer


def cost_by(value: str | None) -> str:
    return value if value in COST_BY else DEFAULT_BY


def seconds(value: Any) -> str:
    if not isinstance(value, int | float):
        return "—"
    if value < 1:
        return f"{value * 1000:.3g} ms"
    if value < 60:
        return f"{value:.3g} s"
    minutes = value / 60
    return f"{minutes:.1f} min" if minutes < 60 else f"{int(minutes // 60)} h {int(minutes % 60)} min"


def size(value: Any) -> str:
    if not isinstance(value, int | float):
        return "—"
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def spent(costs: list[dict[str, Any]]) -> list[str]:
    """["$0.4200 llm_tokens", "4,200 tokens llm_tokens"]: usd first."""
    ordered = sorted(costs, key=lambda c: (c["unit"] != "usd", c["unit"], c["kind"]))
    out = []
    for c in ordered:
        amount = f"${c['amount']:,.4f}" if c["unit"] == "usd" else f"{c['amount']:,.6g} {c['unit']}"
        out.append(f"{amount} {c['kind']}")
    return out


def _usd(group: dict[str, Any]) -> float:
    return sum(c["amount"] for c in group.get("costs") or [] if c["unit"] == "usd")


def cost_view(answer: dict[str, Any], by: str) -> dict[str, Any]:
    """Rows with their text, and each group's share of the largest (usd when any was reported,
    else CPU seconds) for the bar beside it."""
    groups = answer.get("groups") or []
    measure = "usd" if any(_usd(g) for g in groups) else "cpu"
    value = _usd if measure == "usd" else (lambda g: g.get("cpu_s") or 0.0)
    top = max((value(g) for g in groups), default=0.0) or 1.0

    def row(group: dict[str, Any]) -> dict[str, Any]:
        return {
            "key": group.get("key"),
            "jobs": group.get("jobs", 0),
            "attempts": group.get("attempts", 0),
            "cpu": seconds(group.get("cpu_s")),
            "wall": seconds(group.get("wall_s")),
            "rss": size(group.get("peak_rss_bytes")),
            "spent": spent(group.get("costs") or []),
            "share": round(100 * value(group) / top, 1),
        }

    return {
        "by": by,
        "heading": COST_BY[by],
        "measure": measure,
        "rows": [row(g) for g in groups[:12]],
        "more": max(0, len(groups) - 12),
        "total": row(answer.get("total") or {}),
    }
