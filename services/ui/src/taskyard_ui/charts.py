"""Small server-rendered bar charts (inline SVG drawn by a template; no JavaScript, no library)."""

from dataclasses import dataclass
from datetime import UTC, datetime

from .web import parse_ts

WIDTH = 600
HEIGHT = 110
PLOT_TOP = 8
PLOT_BOTTOM = 90  # below: the time axis labels


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    count: int
    label: str  # "11:32 UTC: 5 jobs"


@dataclass
class Chart:
    title: str
    unit: str
    bars: list[Bar]
    total: int
    peak: int
    bucket_s: int
    span_s: int
    start_label: str
    end_label: str
    css: str
    summary: str
    width: int = WIDTH
    height: int = HEIGHT
    plot_bottom: int = PLOT_BOTTOM


def _hhmm(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M")


def bucket_counts(timestamps: list[float], start: float, end: float, bucket_s: int) -> list[int]:
    """How many timestamps fall in each [start + i·bucket_s, start + (i+1)·bucket_s) up to `end`."""
    n = max(1, int((end - start + bucket_s - 1) // bucket_s))
    counts = [0] * n
    for ts in timestamps:
        if start <= ts < end:
            counts[min(n - 1, int((ts - start) // bucket_s))] += 1
    return counts


def bar_chart(
    title: str,
    units: tuple[str, str],
    timestamps: list[float],
    start: float,
    end: float,
    bucket_s: int,
    css: str,
) -> Chart:
    """`units`: (singular, plural), e.g. ("job finished", "jobs finished")."""

    def unit_for(n: int) -> str:
        return units[0] if n == 1 else units[1]

    counts = bucket_counts(timestamps, start, end, bucket_s)
    peak = max(counts) if counts else 0
    slot = WIDTH / len(counts)
    gap = 1 if slot > 4 else 0
    plot_h = PLOT_BOTTOM - PLOT_TOP
    bars = []
    for i, count in enumerate(counts):
        h = (count / peak) * plot_h if peak else 0
        if count and h < 2:
            h = 2  # a single job stays visible next to a busy minute
        at = start + i * bucket_s
        bars.append(
            Bar(
                x=round(i * slot + gap / 2, 2),
                y=round(PLOT_BOTTOM - h, 2),
                width=round(slot - gap, 2),
                height=round(h, 2),
                count=count,
                label=f"{_hhmm(at)}–{_hhmm(at + bucket_s)} UTC: {count} {unit_for(count)}",
            )
        )
    total = sum(counts)
    minutes = round((end - start) / 60)
    if total:
        busiest = max(range(len(counts)), key=counts.__getitem__)
        summary = (
            f"{total} {unit_for(total)} in the last {minutes} min; at most {peak} per {bucket_s // 60} min "
            f"(around {_hhmm(start + busiest * bucket_s)} UTC)."
        )
    else:
        summary = f"No {units[1]} in the last {minutes} min."
    return Chart(
        title=title,
        unit=units[1],
        bars=bars,
        total=total,
        peak=peak,
        bucket_s=bucket_s,
        span_s=int(end - start),
        start_label=f"{_hhmm(start)} UTC",
        end_label="now",
        css=css,
        summary=summary,
    )


def hour_charts(jobs: list[dict], start: float, end: float, bucket_s: int = 60) -> tuple[Chart, Chart]:
    """Jobs finished per minute, and failures (failed or dead) per minute, by their finish time."""
    finished, failed = [], []
    for job in jobs:
        ts = parse_ts(job.get("finished_at"))
        if ts is None:
            continue
        finished.append(ts)
        if job.get("status") in ("failed", "dead"):
            failed.append(ts)
    return (
        bar_chart(
            "Jobs finished", ("job finished", "jobs finished"), finished, start, end, bucket_s, "bar-ok"
        ),
        bar_chart("Failures", ("failure", "failures"), failed, start, end, bucket_s, "bar-fail"),
    )
