"""Small server-rendered bar charts (inline SVG drawn by a template; no JavaScript, no library)."""

from dataclasses import dataclass, field
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
class Layer:
    """A second series drawn over a chart's own bars, on the same scale, from the bottom."""

    name: str
    css: str
    bars: list[Bar]


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
    name: str = ""  # the legend's word for the chart's own bars, when it has layers
    layers: list[Layer] = field(default_factory=list)


def add_layer(chart: Chart, name: str, values: list[float], css: str, unit: str = "", says: str = "") -> None:
    """Draw `values` over the chart's bars on its scale: a p50 inside its p95, or the lower
    priorities inside the total depth, which so reads as depth stacked by priority."""
    plot_h = PLOT_BOTTOM - PLOT_TOP
    bars = []
    for base, value in zip(chart.bars, values, strict=True):
        h = (value / chart.peak) * plot_h if chart.peak else 0
        if value and h < 2:
            h = 2
        when = base.label.split(": ", 1)[0]
        bars.append(
            Bar(
                x=base.x,
                y=round(PLOT_BOTTOM - h, 2),
                width=base.width,
                height=round(h, 2),
                count=value,  # type: ignore[arg-type]
                label=f"{when}: {says or name} {value:g}{unit}",
            )
        )
    chart.layers.append(Layer(name, css, bars))


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


def counts_chart(
    title: str, units: tuple[str, str], counts: list[float], start: float, bucket_s: int, css: str
) -> Chart:
    """A bar chart of ready-made per-bucket values (the API's rollup series)."""
    peak = max(counts) if counts else 0
    slot = WIDTH / max(1, len(counts))
    gap = 1 if slot > 4 else 0
    plot_h = PLOT_BOTTOM - PLOT_TOP
    bars = []
    for i, value in enumerate(counts):
        h = (value / peak) * plot_h if peak else 0
        if value and h < 2:
            h = 2
        at = start + i * bucket_s
        shown = f"{value:g}"
        bars.append(
            Bar(
                x=round(i * slot + gap / 2, 2),
                y=round(PLOT_BOTTOM - h, 2),
                width=round(slot - gap, 2),
                height=round(h, 2),
                count=int(value) if float(value).is_integer() else value,  # type: ignore[arg-type]
                label=f"{_when(at, bucket_s)}: {shown} {units[0] if value == 1 else units[1]}",
            )
        )
    total = sum(counts)
    span = len(counts) * bucket_s
    summary = (
        f"{total:g} {units[0] if total == 1 else units[1]} in the last {_span(span)}; "
        f"at most {peak:g} per {_span(bucket_s)}."
        if total
        else f"No {units[1]} in the last {_span(span)}."
    )
    return Chart(
        title=title,
        unit=units[1],
        bars=bars,
        total=int(total) if float(total).is_integer() else total,  # type: ignore[arg-type]
        peak=int(peak) if float(peak).is_integer() else peak,  # type: ignore[arg-type]
        bucket_s=bucket_s,
        span_s=span,
        start_label=_when(start, bucket_s),
        end_label="now",
        css=css,
        summary=summary,
    )


def _span(seconds: int) -> str:
    if seconds >= 86400 and seconds % 86400 == 0:
        return f"{seconds // 86400} d"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min"


def _when(ts: float, bucket_s: int) -> str:
    fmt = "%H:%M" if bucket_s < 3600 else "%a %H:%M"
    return datetime.fromtimestamp(ts, UTC).strftime(fmt) + " UTC"


def stats_charts(stats: dict) -> list[Chart]:
    """The charts of one /api/v1/stats answer: succeeded, failed/dead, queue wait p95 (and p50)."""
    buckets = stats["buckets"]
    step = stats["bucket_s"]
    start = parse_ts(buckets[0]["at"]) if buckets else 0.0
    start = start or 0.0
    ok = [b["succeeded"] for b in buckets]
    failed = [b["failed"] + b["dead"] for b in buckets]
    p95 = [round((b["wait_p95_s"] or 0) * 1000) for b in buckets]
    charts = [
        counts_chart("Succeeded", ("job", "jobs"), ok, start, step, "bar-ok"),
        counts_chart("Failed or dead", ("failure", "failures"), failed, start, step, "bar-fail"),
        counts_chart("Queue wait p95", ("ms", "ms"), p95, start, step, "bar-wait"),
    ]
    waits = [b["wait_p50_s"] for b in buckets if b["wait_p50_s"] is not None]
    p95s = [b["wait_p95_s"] for b in buckets if b["wait_p95_s"] is not None]
    charts[2].summary = (
        f"Queue wait, from queued to started: p50 ≤ {max(waits) * 1000:g} ms, p95 ≤ {max(p95s) * 1000:g} ms "
        "at worst in this window (per bucket, as bucket upper bounds)."
        if p95s
        else "No job started in this window."
    )
    charts[2].total = int(max(p95s) * 1000) if p95s else 0
    charts[2].name = "p95"
    p50 = [round((b["wait_p50_s"] or 0) * 1000) for b in buckets]
    add_layer(charts[2], "p50", p50, "bar-wait-p50", " ms")
    return charts
